//! `shardprep`: parse the command line, set up logging, hand over to the
//! library crates. Everything else lives in `crates/*` and the modules here.

mod cli;
mod commands;
mod deep;
mod flags;
mod local;
mod progress;
mod signal;
mod summary;
mod workers;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // With the live display on, only warnings are logged (the display shows progress).
    let quiet = matches!(&cli.command, cli::Command::Run(a) if progress::active(a.progress));
    init_logging(cli.log_format, if quiet { "warn" } else { "info" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let log_format = cli.log_format;
    let code = match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            let msg = error_message(&e);
            match log_format {
                cli::LogFormat::Json => tracing::error!(error = %msg, "shardprep failed"),
                cli::LogFormat::Human => eprintln!("error: {msg}"),
            }
            ExitCode::from(2)
        }
    };
    // Do not wait for blocking threads that may still hold a hung shard.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

/// The error and its causes on one line, each cause once (library errors
/// often repeat their source in their own message).
fn error_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}

fn init_logging(format: cli::LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours(format))
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Human => builder.with_target(false).init(),
        cli::LogFormat::Json => builder.json().init(),
    }
}

/// Colour codes in log lines only for people: human format, stderr a
/// terminal, and `NO_COLOR` unset or empty (<https://no-color.org>).
fn colours(format: cli::LogFormat) -> bool {
    use std::io::IsTerminal;
    format == cli::LogFormat::Human
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
