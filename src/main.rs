//! The `ember` binary: parse the command line (or the `--config-file`) into a configuration,
//! launch it, map the outcome to an exit status.

use std::process::ExitCode;

use clap::Parser;
use ember::config::cli::{Cli, LogLevel};
use ember::launch::{LaunchOptions, launch};
use ember::vmm::{EXIT_USAGE, EXIT_VMM_ERROR};

/// Clap's multi-line usage errors as one line (help and version still print in full).
fn parse_cli() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        let text = e.render().to_string();
        let message: Vec<&str> = text
            .lines()
            .map(str::trim)
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .filter(|l| !l.is_empty())
            .collect();
        let line = message.join(" ");
        eprintln!(
            "ember: {} (see ember --help)",
            line.strip_prefix("error: ").unwrap_or(&line)
        );
        ExitCode::from(EXIT_USAGE as u8)
    })
}

fn main() -> ExitCode {
    ember::devices::legacy::boot_timer::mark_process_start();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let usage = |message: String| {
        eprintln!("ember: {message}");
        ExitCode::from(EXIT_USAGE as u8)
    };
    let (mut draft, file_level) = match &cli.config_file {
        Some(path) => match ember::config::file::load(path) {
            Ok(loaded) => loaded,
            Err(e) => return usage(ember::error_chain(&e)),
        },
        None => match cli.to_draft() {
            Ok(draft) => (draft, None),
            Err(e) => return usage(format!("Invalid configuration: {}", ember::error_chain(&e))),
        },
    };
    // The config file has no field for it: the flag applies to every front end.
    draft.virtio_discovery = cli.virtio_discovery;
    let level = cli.log_level.or(file_level).unwrap_or(LogLevel::Warn);
    ember::logger::init(level.into());
    let options = LaunchOptions {
        start_now: draft.boot.is_some(),
        draft,
        api_sock: cli.api_sock.clone(),
        events: cli.events.clone(),
        seccomp: !cli.no_seccomp,
        restore: cli.restore.clone(),
    };
    match launch(options) {
        Ok(outcome) => ExitCode::from(outcome.exit_code() as u8),
        Err(e) => {
            eprintln!("ember: {}", ember::error_chain(&e));
            let code = if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_VMM_ERROR
            };
            ExitCode::from(code as u8)
        }
    }
}
