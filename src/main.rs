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
    // `ember run ...`: a command in a throw-away VM (docs/run.md), its own command line.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|first| first == "run") {
        return ember::run::cli::main(args);
    }
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // With a log file, the user may not see stderr at all (Firecracker's clients often send
    // it to /dev/null): errors are said there too.
    let usage = |message: String| {
        eprintln!("ember: {message}");
        if ember::logger::log_path().is_some() {
            log::error!("{message}");
        }
        ExitCode::from(EXIT_USAGE as u8)
    };
    if cli.fc.version {
        println!("{}", ember::config::fc_flags::version_line());
        return ExitCode::SUCCESS;
    }
    use ember::snapshot::format::{FORMAT_VERSION, file_version, version_string};
    if cli.fc.snapshot_version {
        println!("{}", version_string(FORMAT_VERSION));
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &cli.fc.describe_snapshot {
        return match file_version(path) {
            Ok(version) => {
                println!("{}", version_string(version));
                ExitCode::SUCCESS
            }
            Err(e) => usage(ember::error_chain(&e)),
        };
    }
    if let Some(id) = &cli.fc.id {
        ember::logger::set_instance_id(id);
    }
    ember::logger::init(LogLevel::Warn.into());
    let (mut draft, process) = match &cli.config_file {
        Some(path) => match ember::config::file::load(path) {
            Ok(loaded) => loaded,
            Err(e) => return usage(ember::error_chain(&e)),
        },
        None => match cli.to_draft() {
            Ok(draft) => (draft, Default::default()),
            Err(e) => return usage(format!("Invalid configuration: {}", ember::error_chain(&e))),
        },
    };
    // The config file has no field for it: the flag applies to every front end.
    draft.virtio_discovery = cli.virtio_discovery;
    if let Err(e) = ember::logger::configure(&cli.logger_settings(process.logger.as_ref())) {
        return usage(format!("log-path: {}", ember::error_chain(&e)));
    }
    if let Some(refusal) = cli.fc.refusal() {
        return usage(refusal);
    }
    let metrics_path = cli.fc.metrics_path.clone();
    if let Some(path) = metrics_path.or(process.metrics.map(|m| m.metrics_path))
        && let Err(e) = ember::metrics::configure(&path)
    {
        return usage(ember::error_chain(&e));
    }
    log::info!(
        "Running {} as {}",
        ember::config::fc_flags::version_line(),
        ember::logger::instance_id()
    );
    for warning in cli.fc.warnings() {
        log::warn!("{warning}");
    }
    ember::api::http::set_max_body(cli.fc.http_api_max_payload_size);
    ember::metrics::record_startup(
        cli.fc.start_time_us,
        cli.fc.start_time_cpu_us,
        cli.fc.parent_cpu_time_us,
    );
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
            let message = ember::error_chain(&e);
            eprintln!("ember: {message}");
            if ember::logger::log_path().is_some() {
                log::error!("{message}");
            }
            let code = if e.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_VMM_ERROR
            };
            ExitCode::from(code as u8)
        }
    }
}
