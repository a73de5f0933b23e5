//! Building a microVM from a snapshot: guest RAM mapped copy-on-write from the memory file,
//! devices built from the saved configuration (with the TAPs of `network_overrides` and the
//! images of `drive_overrides`), then the
//! saved state put back in the order KVM needs (vCPUs created with CPUID, the irqchip, PIT and
//! clock, each vCPU, each device). Nothing of the guest runs here.

use std::sync::Arc;

use super::params::RestoreSpec;
use super::{Snapshot, SnapshotError};
use crate::builder::{self, StartError};
use crate::config::{HostLimits, SerialConfig, VmConfig};
use crate::device_manager::DeviceManager;
use crate::host::{HostKind, HostPolicy};
use crate::vmm::Vmm;
use crate::vstate::memory;
use crate::vstate::prepared::PreparedVm;
use crate::vstate::vcpu::{Vcpu, supported_cpuid};
use crate::vstate::vcpu_state::saveable_msrs;

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The files were refused.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The saved configuration cannot be built on this host.
    #[error("Cannot rebuild the saved microVM")]
    Build(#[from] StartError),
    /// A network override names no saved interface.
    #[error("network_overrides: no network interface {0} in the snapshot")]
    UnknownInterface(String),
    /// A drive override names no saved drive.
    #[error("drive_overrides: no drive {0} in the snapshot")]
    UnknownDrive(String),
    /// A vsock override for a snapshot without a vsock device.
    #[error("vsock_override: the snapshot has no vsock device")]
    NoVsock,
    /// A saved state could not be put back.
    #[error("Cannot restore the {what} state")]
    State {
        /// vCPU n, VM, devices.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl RestoreError {
    /// Whether the input (the files, the request) is at fault rather than the host.
    pub fn is_usage(&self) -> bool {
        !matches!(self, RestoreError::Build(e) if !e.is_usage())
    }
}

fn state_err<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> RestoreError {
    let what = what.into();
    move |e| RestoreError::State {
        what,
        source: Box::new(e),
    }
}

/// The configuration to rebuild: the saved one, with this process's serial console and the
/// overridden TAPs, images and vsock socket.
fn restored_config(
    snapshot: &Snapshot,
    spec: &RestoreSpec,
    serial: &SerialConfig,
) -> Result<VmConfig, RestoreError> {
    let (draft, _) = snapshot.config.to_draft().map_err(StartError::from)?;
    let mut config = draft.build().map_err(StartError::from)?;
    config.serial = serial.clone();
    for o in &spec.network_overrides {
        let nic = config
            .nets
            .iter_mut()
            .find(|n| n.id == o.iface_id)
            .ok_or_else(|| RestoreError::UnknownInterface(o.iface_id.clone()))?;
        nic.tap = o.host_dev_name.clone();
    }
    for o in &spec.drive_overrides {
        let drive = config
            .drives
            .iter_mut()
            .find(|d| d.id == o.drive_id)
            .ok_or_else(|| RestoreError::UnknownDrive(o.drive_id.clone()))?;
        drive.path = o.path_on_host.clone();
    }
    if let Some(uds) = &spec.vsock_uds {
        let vsock = config.vsock.as_mut().ok_or(RestoreError::NoVsock)?;
        vsock.uds_path = uds.clone();
        vsock
            .validate()
            .map_err(|e| StartError::from(crate::config::ConfigError::from(e)))?;
    }
    Ok(config)
}

/// Loads the snapshot of `spec` and builds the microVM it describes, ready to run (its
/// vCPUs where they were), with `serial` as its console. Returns the VMM and its configuration.
/// `prepared`: a VM made ahead (`vstate::prepared`) to restore into.
pub fn restore_microvm(
    spec: &RestoreSpec,
    serial: &SerialConfig,
    prepared: Option<PreparedVm>,
) -> Result<(Vmm, VmConfig), RestoreError> {
    let t0 = std::time::Instant::now();
    let mut steps = Vec::new();
    let mut step = |name: &'static str| steps.push((name, t0.elapsed()));
    let (snapshot, mem_file) = super::load(&spec.paths)?;
    step("load");
    let config = restored_config(&snapshot, spec, serial)?;
    let (host, vm, trapped) = builder::host_and_vm(prepared)?;
    step("kvm and VM");
    config
        .validate_without_boot(&HostLimits::read(host.max_vcpus()))
        .map_err(StartError::from)?;
    let mem = memory::map_guest_memory_file(&mem_file, &snapshot.memory.regions)
        .map_err(StartError::from)?;
    step("memory");
    let mut virtio = DeviceManager::new(mem.clone());
    builder::attach_virtio_devices(&config, &mut virtio)?;
    let policy = HostPolicy::decide(config.pvm_compat, HostKind::detect());
    vm.register_memory(&mem).map_err(StartError::from)?;
    step("memory slots");
    let devices = builder::create_devices(&vm, &config, virtio)?;
    step("devices");

    let supported = supported_cpuid(&host.kvm).map_err(StartError::from)?;
    let msrs: Arc<[u32]> = saveable_msrs(&host.kvm).map_err(state_err("vCPU"))?.into();
    let num = config.machine.vcpus;
    let vcpus = (0..num)
        .map(|i| {
            let vcpu = Vcpu::new(vm.fd(), i)?;
            vcpu.configure(&supported, &mem, num, policy, None)?;
            Ok(vcpu)
        })
        .collect::<Result<Vec<Vcpu>, crate::vstate::vcpu::VcpuError>>()
        .map_err(StartError::from)?;
    step("vcpus");
    snapshot.vm.restore(vm.fd()).map_err(state_err("VM"))?;
    for (vcpu, state) in vcpus.iter().zip(&snapshot.vcpus) {
        vcpu.restore_state(state)
            .map_err(state_err(format!("vCPU {}", vcpu.index())))?;
    }
    devices
        .restore(&snapshot.devices)
        .map_err(state_err("device"))?;
    let repair = builder::arm_syscall_repair(&vm, policy, trapped);
    step("state");
    crate::metrics::record_latency("load_snapshot", t0.elapsed());
    let steps: Vec<String> = steps
        .iter()
        .map(|(name, at)| format!("{name} {:.1}", at.as_secs_f64() * 1000.0))
        .collect();
    log::debug!("Restore steps (ms since the start): {}", steps.join(", "));
    log::info!(
        "Restored a microVM of {} vCPU(s) and {} MiB from {}",
        num,
        snapshot.memory.total() >> 20,
        spec.paths.snapshot.display()
    );
    let mut vmm = Vmm::new(vm, mem, vcpus, devices, policy, repair, msrs);
    // Opened now: the main thread's seccomp filter will not let it open anything later.
    match std::fs::File::open("/proc/self/pagemap") {
        Ok(pagemap) => vmm.set_diff_base(pagemap),
        Err(e) => log::warn!("No diff snapshots for this VM: cannot open /proc/self/pagemap: {e}"),
    }
    Ok((vmm, config))
}
