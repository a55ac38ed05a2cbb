//! `shardprep`: parse the command line, set up logging, hand over to the
//! library crates. Everything else lives in `crates/*` and the modules here.

mod cli;
mod commands;
mod local;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // With the live display on, only warnings are logged (the display shows progress).
    let quiet = matches!(&cli.command, cli::Command::Run(a) if progress::active(a.progress));
    init_logging(cli.log_format, if quiet { "warn" } else { "info" });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: cli::LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    if default_level != "info" && std::env::var_os("RUST_LOG").is_none() {
        // Worker processes inherit the quieter default.
        // SAFETY: called once at start-up, before any other thread exists.
        unsafe { std::env::set_var("RUST_LOG", default_level) };
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Human => builder.with_target(false).init(),
        cli::LogFormat::Json => builder.json().init(),
    }
}
