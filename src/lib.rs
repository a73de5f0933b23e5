//! Ember: a KVM microVM monitor for Linux/x86_64 on the rust-vmm crates.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

/// The HTTP API on a Unix socket: server thread, HTTP parsing, routing and models.
pub mod api;
/// Architecture-specific boot structures (x86_64: memory map, zero page, GDT, CPUID, MP table).
pub mod arch;
/// The ordered steps that turn a `VmConfig` into a ready microVM.
pub mod builder;
/// `VmConfig`, its resources, validation and the command-line front end.
pub mod config;
/// Every device of the VM: virtio devices with typed handles and slots, lifecycle, counters, state.
pub mod device_manager;
/// Emulated devices and the port/MMIO buses.
pub mod devices;
/// Lifecycle event lines (`--events`).
pub mod events;
/// Bounded waits (poll) on host descriptors that must not block or hang.
pub mod fdwait;
/// Host KVM detection and the software-nested (PVM) compatibility policy.
pub mod host;
/// From a front end's request to a finished VM: API socket, pre-boot wait, build, run.
pub mod launch;
/// Ember's logger: stderr, or a file or FIFO in Firecracker's line format.
pub mod logger;
/// Metrics lines (`--metrics-path`, `PUT /metrics`, `FlushMetrics`).
pub mod metrics;
/// Process-wide settings made before any thread starts (the malloc arena limit).
pub mod process;
/// `ember run -- CMD`: a command in a fresh microVM, its output and exit status back.
pub mod run;
/// seccomp filters per thread kind.
pub mod seccomp;
/// Host stop signals for the event loop.
pub mod signals;
/// Log and metrics destinations: a file or a FIFO, written without blocking.
pub mod sink;
/// Snapshots: the checked state file, the memory file, restore, and their API bodies.
pub mod snapshot;
/// The running microVM: event loop, lifecycle and exit status.
pub mod vmm;
/// KVM state: VM, guest memory and vCPU threads.
pub mod vstate;

/// An error and its chain of causes on one line, `outer: cause: root cause`. Each message says
/// only its own part (an error that wraps another never repeats it), so this prints each once.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_error_chain_prints_each_cause_once() {
        let dup = config::ConfigError::Drive(config::drive::DriveError::DuplicateId("x".into()));
        let err = launch::LaunchError::Config(dup);
        assert_eq!(
            error_chain(&err),
            "Invalid configuration: disk: id x is used twice"
        );
    }
}
