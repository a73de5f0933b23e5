//! Building a microVM from a `VmConfig`: the ordered boot steps, each a small function.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::arch::acpi::{self, AcpiError};
use crate::arch::kernel::{self, BootProtocol, LoadedInitrd, LoadedKernel};
use crate::arch::layout::{ACPI_PM1A_EVT_PORT, BOOT_TIMER_START, CMDLINE_START, SERIAL_IRQ};
use crate::arch::{self, boot_params, mptable};
use crate::config::{ConfigError, HostLimits, SerialConfig, VmConfig, boot};
use crate::device_manager::{ConsoleInput, DeviceManager, DeviceManagerError, Devices};
use crate::devices::acpi::{ACPI_PM_PORT_LEN, AcpiPm};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::EventFdTrigger;
use crate::devices::legacy::boot_timer::{BOOT_TIMER_LEN, BootTimer};
use crate::devices::legacy::cmos::{CMOS_PORT_BASE, CMOS_PORT_LEN, Cmos};
use crate::devices::legacy::i8042::{I8042, I8042_KBD_IRQ, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::legacy::serial::{COM1_PORT_BASE, SERIAL_PORT_LEN, SerialDevice, SerialOutput};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::rng::{Rng, RngError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::host::{HostKind, HostPolicy};
use crate::vmm::Vmm;
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::prepared::PreparedVm;
use crate::vstate::syscall_repair::{self, RepairCounters};
use crate::vstate::vcpu::{Vcpu, VcpuError, supported_cpuid};
use crate::vstate::vcpu_state::saveable_msrs;
use crate::vstate::vm::{KvmHost, Vm, VmError};

/// Why a microVM could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid (a usage error).
    #[error("Invalid configuration")]
    Config(#[from] ConfigError),
    /// KVM or VM setup failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory could not be allocated.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel or initrd could not be loaded.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// The zero page or PVH info could not be written.
    #[error(transparent)]
    BootParams(#[from] boot_params::BootParamsError),
    /// The MP table could not be written.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// The ACPI tables could not be built or written.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// The command line could not be written.
    #[error("Failed to write the kernel command line into guest memory")]
    Cmdline,
    /// A device could not be placed on its bus.
    #[error("Failed to place a device")]
    Bus(#[from] BusError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A disk could not be set up.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A network interface could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The entropy device could not be set up.
    #[error(transparent)]
    Rng(#[from] RngError),
    /// The vsock device could not be set up.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A virtio device could not be attached or wired.
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    /// An eventfd, file or descriptor could not be created.
    #[error("Failed to create {what}")]
    Io {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// Whether the user's input is at fault (exit code 2) rather than the host.
    pub fn is_usage(&self) -> bool {
        matches!(self, StartError::Config(_))
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// Step 2: every virtio device, disks then NICs, attached to the device manager, which gives
/// each its interrupt line and register window. Everything after this reads them from there.
pub(crate) fn attach_virtio_devices(
    config: &VmConfig,
    devices: &mut DeviceManager,
) -> Result<(), StartError> {
    for (index, drive) in config.drives.iter().enumerate() {
        let mut block =
            Block::with_sharing(&drive.id, &drive.path, (drive.readonly, drive.shared))?;
        block.set_queues(drive.queues_for(config.machine.vcpus), drive.queue_size)?;
        block.set_io_engine(drive.io_engine);
        block.set_cache_type(drive.cache_type);
        if drive.direct {
            block.set_direct()?;
        }
        if let Some(limiter) = &drive.rate_limiter {
            block.update_rate_limiter(limiter);
        }
        devices.attach(block, format!("disk {} ({})", drive.id, disk_name(index)))?;
    }
    for (index, net) in config.nets.iter().enumerate() {
        let mut nic = Net::new(&net.id, &net.tap, net.guest_mac())?;
        nic.update_rate_limiters(net.rx_rate_limiter.as_ref(), net.tx_rate_limiter.as_ref());
        devices.attach(nic, format!("net {} (eth{index})", net.id))?;
    }
    if let Some(entropy) = &config.entropy {
        let mut rng = Rng::new("rng0")?;
        if let Some(limiter) = &entropy.rate_limiter {
            rng.update_rate_limiter(limiter);
        }
        devices.attach(rng, "rng rng0".into())?;
    }
    if let Some(vsock) = &config.vsock {
        let device = Vsock::new("vsock0", vsock.guest_cid, &vsock.uds_path)?;
        devices.attach(device, "vsock vsock0".into())?;
    }
    Ok(())
}

/// The command-line additions for the devices: the root disk and, when `--virtio-discovery`
/// says so (`cmdline`, `both`, or `auto` with `acpi=off`), one `virtio_mmio.device=` per device.
fn device_cmdline(config: &VmConfig, devices: &DeviceManager, cmdline: &mut String) {
    if let Some((i, drive)) = config.drives.iter().enumerate().find(|(_, d)| d.root) {
        if cmdline.split_whitespace().any(|w| w.starts_with("root=")) {
            log::warn!(
                "Disk {} has root=on but the command line already names a root",
                drive.id
            );
        } else {
            let name = disk_name(i);
            let mode = if drive.readonly { "ro" } else { "rw" };
            cmdline.push_str(&format!(" root=/dev/{name} {mode}"));
        }
    }
    if !config.virtio_discovery.cmdline(&config.boot.cmdline) {
        if !devices.virtio().is_empty() && cmdline.split_whitespace().any(|w| w == "acpi=off") {
            log::warn!(
                "Virtio devices are announced only in ACPI, but the command line has acpi=off"
            );
        }
        return;
    }
    for announcement in devices.cmdline_announcements() {
        cmdline.push(' ');
        cmdline.push_str(&announcement);
    }
}

/// The guest's name for disk number `index`: vda, vdb, ..., vdz, vdaa, ...
pub fn disk_name(index: usize) -> String {
    let mut suffix = String::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        suffix.insert(0, (b'a' + (n % 26) as u8) as char);
        n /= 26;
    }
    format!("vd{suffix}")
}

/// Step 3: decide the compatibility policy and build the final command line.
fn decide_policy(
    config: &VmConfig,
    devices: &DeviceManager,
) -> Result<(HostPolicy, String), StartError> {
    let kind = HostKind::detect();
    let policy = HostPolicy::decide(config.pvm_compat, kind);
    if policy.pvm {
        log::info!(
            "Software-nested KVM (kvm_pvm={}, vmx/svm={}): applying the compatibility policy",
            kind.pvm_module,
            kind.hw_virt
        );
    }
    let mut cmdline = config.boot.cmdline.clone();
    device_cmdline(config, devices, &mut cmdline);
    policy.extend_cmdline(&mut cmdline);
    boot::check_cmdline(&cmdline).map_err(ConfigError::from)?;
    Ok((policy, cmdline))
}

/// Step 4: load kernel, initrd and command line into guest memory.
fn load_boot_payload(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    config: &VmConfig,
    cmdline: &str,
) -> Result<(LoadedKernel, Option<LoadedInitrd>), StartError> {
    let kernel = kernel::load_kernel(mem, mem_size, &config.boot.kernel, config.boot.protocol)?;
    log::info!(
        "Kernel loaded: entry {:#x} ({:?}), image ends at {:#x}",
        kernel.entry,
        kernel.protocol,
        kernel.end
    );
    let mut limit = arch::low_ram_end(mem_size);
    if let Some(header) = kernel.setup_header {
        // A bzImage says how high its initrd may sit.
        limit = limit.min(u64::from(header.initrd_addr_max) + 1);
    }
    let initrd = match &config.boot.initrd {
        Some(path) => Some(kernel::load_initrd(mem, path, kernel.end, limit)?),
        None => None,
    };
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|_| StartError::Cmdline)?;
    Ok((kernel, initrd))
}

/// Step 5: the boot information the entry protocol expects, the MP table and the ACPI tables.
fn write_boot_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    config: &VmConfig,
    devices: &DeviceManager,
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    cmdline_len: usize,
) -> Result<(), StartError> {
    let e820 = arch::e820_map(mem_size);
    let announced = if config.virtio_discovery.acpi(&config.boot.cmdline) {
        devices.acpi_devices()
    } else {
        Vec::new()
    };
    let rsdp = Some(acpi::setup_acpi(mem, config.machine.vcpus, &announced)?);
    match kernel.protocol {
        BootProtocol::Pvh => boot_params::write_pvh_info(mem, initrd, &e820, rsdp)?,
        BootProtocol::Linux64 => {
            let header = kernel.setup_header;
            let params = boot_params::build_zero_page(header, cmdline_len, initrd, &e820, rsdp)?;
            boot_params::write_zero_page(mem, &params)?;
        }
    }
    mptable::setup_mptable(mem, config.machine.vcpus)?;
    Ok(())
}

fn serial_output(config: &SerialConfig) -> Result<SerialOutput, StartError> {
    Ok(match config {
        SerialConfig::Stdio => {
            let fd = std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(io_err("a handle on standard output"))?;
            SerialOutput::stdout(File::from(fd))
        }
        SerialConfig::File(path) => SerialOutput::File(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io_err(format!("serial output file {}", path.display())))?,
        ),
        SerialConfig::None => SerialOutput::Sink,
    })
}

/// Legacy ports Linux probes that a microVM does not have (POST diagnostics, COM2-4,
/// and the PCI configuration mechanism at 0xcf8-0xcff, which Linux probes on every boot): reads
/// return all-ones and writes are ignored, which is the "nothing here" answer (for PCI: no
/// configuration mechanism, so no PCI bus), and the accesses are logged only at debug level.
const QUIET_PORTS: [(u64, u64); 5] = [(0x80, 1), (0x2f8, 8), (0x3e8, 8), (0x2e8, 8), (0xcf8, 8)];

/// Step 6: legacy devices on the port bus (UART, i8042, ACPI PM registers, CMOS), their interrupts
/// wired through irqfds; the boot timer and the virtio devices on the MMIO bus.
pub(crate) fn create_devices(
    vm: &Vm,
    config: &VmConfig,
    virtio: DeviceManager,
) -> Result<Devices, StartError> {
    let mut pio = Bus::new("port");
    for (base, len) in QUIET_PORTS {
        pio.add_quiet_range(base, len);
    }

    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("the serial irq eventfd"))?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)?;
    let space = EventFd::new(EFD_NONBLOCK).map_err(io_err("the serial input eventfd"))?;
    let space_listener = space
        .try_clone()
        .map_err(io_err("the serial input eventfd"))?;
    let serial = Arc::new(SerialDevice::new(
        EventFdTrigger(serial_irq),
        space,
        serial_output(&config.serial)?,
    ));
    pio.insert(serial.clone(), COM1_PORT_BASE, SERIAL_PORT_LEN)?;

    let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("the reset eventfd"))?;
    let kbd_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("the keyboard irq eventfd"))?;
    vm.register_irqfd(&kbd_irq, I8042_KBD_IRQ)?;
    let i8042 = Arc::new(I8042::new(
        EventFdTrigger(reset_evt.try_clone().map_err(io_err("the reset eventfd"))?),
        EventFdTrigger(kbd_irq),
    ));
    pio.insert(i8042.clone(), I8042_PORT_BASE, I8042_PORT_LEN)?;

    let poweroff_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("the power-off eventfd"))?;
    let acpi_reset_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("the ACPI reset eventfd"))?;
    let acpi_pm = Arc::new(AcpiPm::new(
        EventFdTrigger(
            poweroff_evt
                .try_clone()
                .map_err(io_err("the power-off eventfd"))?,
        ),
        EventFdTrigger(
            acpi_reset_evt
                .try_clone()
                .map_err(io_err("the ACPI reset eventfd"))?,
        ),
    ));
    pio.insert(
        acpi_pm.clone(),
        u64::from(ACPI_PM1A_EVT_PORT),
        ACPI_PM_PORT_LEN,
    )?;

    let cmos = Arc::new(Cmos::default());
    pio.insert(cmos.clone(), CMOS_PORT_BASE, CMOS_PORT_LEN)?;

    let console = match config.serial {
        SerialConfig::Stdio => Some(ConsoleInput {
            serial: serial.clone(),
            space: space_listener,
        }),
        _ => None,
    };

    let mut mmio = Bus::new("MMIO");
    mmio.insert(
        Arc::new(BootTimer::default()),
        BOOT_TIMER_START,
        BOOT_TIMER_LEN,
    )?;
    virtio.register(vm, &mut mmio)?;
    Ok(Devices {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        reset_evt,
        i8042,
        serial,
        acpi_pm,
        cmos,
        poweroff_evt,
        acpi_reset_evt,
        console,
        virtio: Arc::new(virtio),
    })
}

/// Step 7: one configured vCPU per requested CPU; vCPU 0 gets the entry registers.
fn create_vcpus(
    host: &KvmHost,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    policy: HostPolicy,
    kernel: &LoadedKernel,
) -> Result<Vec<Vcpu>, StartError> {
    let num = config.machine.vcpus;
    let supported = supported_cpuid(&host.kvm)?;
    (0..num)
        .map(|i| {
            let vcpu = Vcpu::new(vm.fd(), i)?;
            let boot = (i == 0).then_some((kernel.entry, kernel.protocol));
            vcpu.configure(&supported, mem, num, policy, boot)?;
            Ok(vcpu)
        })
        .collect()
}

/// Step 8: on software-nested hosts, trap the guest's system-call MSR writes so that the
/// vCPUs arm the SYSCALL repair (`vstate::syscall_repair`). Without the trap guest userspace
/// cannot make system calls there, but the kernel still boots: a failure is a warning.
/// `trapped`: a prepared VM's filter is already set; where the policy wants no repair it is
/// taken off again.
pub(crate) fn arm_syscall_repair(
    vm: &Vm,
    policy: HostPolicy,
    trapped: bool,
) -> Option<Arc<RepairCounters>> {
    if !policy.syscall_repair() {
        if trapped && let Err(e) = syscall_repair::untrap_syscall_msr_writes(vm.fd()) {
            log::warn!("Cannot take the system-call MSR filter off ({e})");
        }
        return None;
    }
    if trapped {
        return Some(Arc::default());
    }
    match syscall_repair::trap_syscall_msr_writes(vm.fd()) {
        Ok(()) => Some(Arc::default()),
        Err(e) => {
            log::warn!(
                "Software-nested KVM: cannot trap the system-call MSRs ({e}); guest userspace will not be able to make system calls"
            );
            None
        }
    }
}

/// Step 1: the host and VM to build on: `prepared`'s when there is one, else new ones (and
/// whether the system-call MSRs are already trapped).
pub(crate) fn host_and_vm(prepared: Option<PreparedVm>) -> Result<(KvmHost, Vm, bool), StartError> {
    if let Some(p) = prepared {
        return Ok((p.host, p.vm, p.msr_filter));
    }
    let host = KvmHost::open()?;
    let vm = Vm::new(&host)?;
    Ok((host, vm, false))
}

/// Builds a ready-to-run microVM: every resource is created and the guest is loaded, but no
/// vCPU runs yet.
/// `prepared`: a VM made ahead (`vstate::prepared`) to build on.
pub fn build_microvm(config: &VmConfig, prepared: Option<PreparedVm>) -> Result<Vmm, StartError> {
    let (host, vm, trapped) = host_and_vm(prepared)?;
    config.validate(&HostLimits::read(host.max_vcpus()))?;
    let mem_size = config.machine.memory_bytes().map_err(ConfigError::from)?;
    let mem = memory::create_guest_memory(mem_size)?;
    let mut virtio = DeviceManager::new(mem.clone());
    attach_virtio_devices(config, &mut virtio)?;
    let (policy, cmdline) = decide_policy(config, &virtio)?;
    log::info!("Guest command line: {cmdline}");
    vm.register_memory(&mem)?;
    let (kernel, initrd) = load_boot_payload(&mem, mem_size, config, &cmdline)?;
    write_boot_info(
        &mem,
        mem_size,
        config,
        &virtio,
        &kernel,
        initrd,
        cmdline.len(),
    )?;
    let devices = create_devices(&vm, config, virtio)?;
    let vcpus = create_vcpus(&host, &vm, &mem, config, policy, &kernel)?;
    let repair = arm_syscall_repair(&vm, policy, trapped);
    let msrs = saveable_msrs(&host.kvm).map_err(|e| StartError::Io {
        what: "the list of saveable MSRs".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(Vmm::new(
        vm,
        mem,
        vcpus,
        devices,
        policy,
        repair,
        msrs.into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_disk_name_sequence() {
        assert_eq!(disk_name(0), "vda");
        assert_eq!(disk_name(25), "vdz");
        assert_eq!(disk_name(26), "vdaa");
    }
}
