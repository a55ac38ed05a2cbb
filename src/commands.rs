//! One function per subcommand, turning flags into library configs.

use std::process::ExitCode;

use anyhow::{Context, bail};
use shardprep_core::auth;
use shardprep_core::durability::DataSync;

use crate::cli::{Cli, Command, CoordinatorArgs, GenerateArgs, ReportArgs, WorkerArgs};
use crate::flags::{client_tls, coordinator_config, default_worker_id, token_from};
use crate::signal::shutdown_signal;

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => crate::local::run(args, cli.log_format).await,
        Command::Coordinator(args) => coordinator(args).await,
        Command::Worker(args) => worker(args).await,
        Command::Status(args) => crate::local::status(args).await,
        Command::Verify(args) => crate::local::verify(args),
        Command::Generate(args) => generate(args),
        Command::Report(args) => report(args),
    }
}

async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let token = match token_from(&args.token)? {
        Some(t) => t,
        None => {
            let t = auth::generate_token()?;
            let dir = args.job.output.join(".shardprep");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join("token");
            write_private(&path, &t)?;
            tracing::warn!(path = %path.display(), "no token given: generated one; give it to workers with --token-file {}", path.display());
            t
        }
    };
    // Workers may run on other machines, whose restarts this machine's boot
    // id cannot reveal: each shard's files are on disk before it commits.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(shardprep_coordinator::ServerTls {
            cert_pem: std::fs::read(cert)
                .with_context(|| format!("cannot read --tls-cert {}", cert.display()))?,
            key_pem: std::fs::read(key)
                .with_context(|| format!("cannot read --tls-key {}", key.display()))?,
        }),
        _ => None,
    };
    let config = coordinator_config(&args.job, token, DataSync::Shard)?.with_tls(tls);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "coordinator listening");
    let outcome = shardprep_coordinator::serve(config, listener, shutdown_signal()).await?;
    crate::summary::print_summary(&outcome.report);
    Ok(crate::summary::exit_code(outcome.ok))
}

fn write_private(path: &std::path::Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{token}")?;
    Ok(())
}

async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let Some(token) = token_from(&args.token)? else {
        bail!("no token: pass the coordinator's token with --token-file FILE or SHARDPREP_TOKEN");
    };
    let fault = args
        .fault
        .as_deref()
        .map(shardprep_worker::Fault::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let config = shardprep_worker::WorkerConfig {
        coordinator: args.coordinator,
        token,
        worker_id: args.worker_id.unwrap_or_else(default_worker_id),
        connect_timeout: args.connect_timeout,
        fault,
        tls: client_tls(&args.tls)?,
        write_threads: args
            .write_threads
            .unwrap_or_else(|| shardprep_worker::default_write_threads(1)),
    };
    shardprep_worker::run(config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let opts = shardprep_fixtures::GenOptions {
        shards: args.shards,
        samples_per_shard: args.samples,
        image_bytes: args.image_bytes,
        seed: args.seed,
        no_width_every: args.no_width_every,
        lying_dims_every: args.lying_dims_every,
        truncated_every: args.truncated_every,
        wrong_hash_every: args.wrong_hash_every,
    };
    let paths = shardprep_fixtures::generate(&args.output, &opts)
        .with_context(|| format!("cannot write shards into {}", args.output.display()))?;
    println!(
        "wrote {} shards × {} samples into {}",
        paths.len(),
        args.samples,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `shardprep report OUT`: (re)writes `OUT/report.html` from `OUT/report.json`.
fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let opts = shardprep_coordinator::page::PageOptions {
        alignment: args.bucket_alignment,
    };
    let path = shardprep_coordinator::page::regenerate(&args.output, opts)?;
    println!("wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}
