//! The `ember` binary: parse the command line into a `VmConfig`, run it, map the outcome to an
//! exit status.

use std::error::Error;
use std::process::ExitCode;

use clap::Parser;
use ember::config::cli::Cli;
use ember::vmm::{EXIT_USAGE, EXIT_VMM_ERROR};

/// Prints an error and its chain of causes on one line.
fn print_error(err: &dyn Error) {
    let mut line = format!("ember: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("{line}");
}

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
    ember::logger::init(cli.log_level.into());
    let config = match cli.to_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ember: Invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    let vmm = match ember::builder::build_microvm(&config) {
        Ok(vmm) => vmm,
        Err(e) => {
            print_error(&e);
            let code = if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_VMM_ERROR
            };
            return ExitCode::from(code as u8);
        }
    };
    match vmm.run() {
        Ok(outcome) => ExitCode::from(outcome.exit_code() as u8),
        Err(e) => {
            print_error(&e);
            ExitCode::from(EXIT_VMM_ERROR as u8)
        }
    }
}
