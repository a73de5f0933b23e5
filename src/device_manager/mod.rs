//! The device manager: every virtio device of the VM, each kept with a typed handle, its id, kind
//! and slot (interrupt line and register window, from `resources`) from the moment it is attached
//! until the VMM exits. The command-line announcement, the DSDT entries, the irqfds, the
//! ioeventfds, the MMIO bus and the event loop are all derived by iterating the attached devices,
//! and so are quiesce/wake, the counters and the saved state (`persist`); adding a device kind
//! is one constructor and one `attach` call in the builder. `Devices` is the whole set a running
//! VM has: buses, legacy devices, their eventfds, and the manager.

pub mod persist;
mod resources;

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use kvm_ioctls::IoEventAddress;
use serde::Serialize;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub use self::resources::{MAX_VIRTIO_DEVICES, ResourceAllocator, VirtioSlot};
use crate::arch::acpi::VirtioMmioDevice;
use crate::devices::acpi::AcpiPm;
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::cmos::Cmos;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::counters::{CounterValues, DeviceCounters};
use crate::devices::virtio::mmio::{MMIO_WINDOW_SIZE, MmioTransport};
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::vstate::vm::{Vm, VmError};

/// Why a device could not be attached or wired.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// More virtio devices than free interrupt lines.
    #[error(
        "Too many devices: at most {MAX_VIRTIO_DEVICES} virtio devices (disks, network interfaces, entropy and vsock) together"
    )]
    TooManyDevices,
    /// The interrupt eventfd of a device could not be created.
    #[error("Failed to create the interrupt eventfd of {0}")]
    EventFd(String, #[source] std::io::Error),
    /// The irqfd of a device could not be registered.
    #[error(transparent)]
    Irqfd(#[from] VmError),
    /// An ioeventfd could not be registered.
    #[error("Failed to register the queue notification of {0}")]
    Ioeventfd(String, #[source] kvm_ioctls::Error),
    /// A register window could not be placed on the MMIO bus.
    #[error("Failed to place a device")]
    Bus(#[from] BusError),
}

/// The kinds of virtio device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtioKind {
    /// virtio-blk.
    Block,
    /// virtio-net.
    Net,
    /// virtio-rng.
    Rng,
    /// virtio-vsock.
    Vsock,
}

/// A typed handle on an attached virtio device: what kind-specific operations (a kind's state,
/// a drive swap) reach the device through, while generic ones go through `device()`.
#[derive(Clone)]
pub enum VirtioHandle {
    /// A disk.
    Block(Arc<Mutex<Block>>),
    /// A network interface.
    Net(Arc<Mutex<Net>>),
    /// An entropy device.
    Rng(Arc<Mutex<Rng>>),
    /// The vsock device.
    Vsock(Arc<Mutex<Vsock>>),
}

impl VirtioHandle {
    /// Which kind of device this is.
    pub fn kind(&self) -> VirtioKind {
        match self {
            VirtioHandle::Block(_) => VirtioKind::Block,
            VirtioHandle::Net(_) => VirtioKind::Net,
            VirtioHandle::Rng(_) => VirtioKind::Rng,
            VirtioHandle::Vsock(_) => VirtioKind::Vsock,
        }
    }

    /// The device as the transport and the lifecycle see it.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        match self {
            VirtioHandle::Block(device) => device.clone(),
            VirtioHandle::Net(device) => device.clone(),
            VirtioHandle::Rng(device) => device.clone(),
            VirtioHandle::Vsock(device) => device.clone(),
        }
    }

    /// Runs `f` on the device, locked.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut dyn VirtioDevice) -> R) -> R {
        const POISONED: &str = "virtio device lock poisoned";
        match self {
            VirtioHandle::Block(device) => f(&mut *device.lock().expect(POISONED)),
            VirtioHandle::Net(device) => f(&mut *device.lock().expect(POISONED)),
            VirtioHandle::Rng(device) => f(&mut *device.lock().expect(POISONED)),
            VirtioHandle::Vsock(device) => f(&mut *device.lock().expect(POISONED)),
        }
    }

    /// The device as an event-loop subscriber (its queue eventfds and backend).
    pub fn subscriber(&self) -> Arc<Mutex<dyn MutEventSubscriber + Send>> {
        match self {
            VirtioHandle::Block(device) => device.clone(),
            VirtioHandle::Net(device) => device.clone(),
            VirtioHandle::Rng(device) => device.clone(),
            VirtioHandle::Vsock(device) => device.clone(),
        }
    }
}

impl From<Block> for VirtioHandle {
    fn from(device: Block) -> Self {
        VirtioHandle::Block(Arc::new(Mutex::new(device)))
    }
}

impl From<Net> for VirtioHandle {
    fn from(device: Net) -> Self {
        VirtioHandle::Net(Arc::new(Mutex::new(device)))
    }
}

impl From<Rng> for VirtioHandle {
    fn from(device: Rng) -> Self {
        VirtioHandle::Rng(Arc::new(Mutex::new(device)))
    }
}

impl From<Vsock> for VirtioHandle {
    fn from(device: Vsock) -> Self {
        VirtioHandle::Vsock(Arc::new(Mutex::new(device)))
    }
}

/// One device's counters with its id and kind (for the metrics endpoint).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceReport {
    /// The device's id.
    pub id: String,
    /// Its kind.
    pub kind: VirtioKind,
    /// Its counters.
    pub counters: CounterValues,
}

/// One attached virtio device and everything it was given.
pub struct VirtioEntry {
    id: String,
    name: String,
    slot: VirtioSlot,
    handle: VirtioHandle,
    interrupt: Arc<VirtioInterrupt>,
    transport: Arc<MmioTransport>,
    counters: Arc<DeviceCounters>,
}

impl VirtioEntry {
    /// The device's id (the drive or interface id of the configuration).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The name log lines use ("disk rootfs (vda)").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which kind of device it is.
    pub fn kind(&self) -> VirtioKind {
        self.handle.kind()
    }

    /// Its interrupt line and register window.
    pub fn slot(&self) -> VirtioSlot {
        self.slot
    }

    /// The typed handle.
    pub fn handle(&self) -> &VirtioHandle {
        &self.handle
    }

    /// Its virtio-mmio transport (the register file on the MMIO bus).
    pub fn transport(&self) -> &Arc<MmioTransport> {
        &self.transport
    }

    /// Its counters as last published (read without the device's lock).
    pub fn counters(&self) -> CounterValues {
        self.counters.values()
    }
}

/// Every device of the VM and the buses the vCPUs dispatch to.
pub struct Devices {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Fired by the i8042 when the guest asks for a reset.
    pub reset_evt: EventFd,
    /// The i8042, for host-injected keys (Ctrl-Alt-Del).
    pub i8042: Arc<I8042>,
    /// The UART on COM1.
    pub serial: Arc<SerialDevice>,
    /// The ACPI power-management registers.
    pub acpi_pm: Arc<AcpiPm>,
    /// The CMOS clock.
    pub cmos: Arc<Cmos>,
    /// Fired by the ACPI PM registers when the guest enters S5 (power off).
    pub poweroff_evt: EventFd,
    /// Fired by the ACPI reset register.
    pub acpi_reset_evt: EventFd,
    /// The console and where its input comes from, if it takes input.
    pub console: Option<ConsoleInput>,
    /// The virtio devices, served by the event loop.
    pub virtio: Arc<DeviceManager>,
}

/// The console's input side: the UART and the event telling that its FIFO has room.
pub struct ConsoleInput {
    /// The UART.
    pub serial: Arc<SerialDevice>,
    /// Written when the guest drains the receive FIFO.
    pub space: EventFd,
}

/// Every virtio device of one VM.
pub struct DeviceManager {
    mem: GuestMemoryMmap,
    resources: ResourceAllocator,
    virtio: Vec<VirtioEntry>,
}

impl DeviceManager {
    /// No devices yet; transports will reach guest memory `mem`.
    pub fn new(mem: GuestMemoryMmap) -> Self {
        DeviceManager {
            mem,
            resources: ResourceAllocator::new(),
            virtio: Vec::new(),
        }
    }

    /// Attaches a virtio device under `name` (for log lines): it gets the next interrupt line
    /// and register window, an interrupt and a transport. Nothing reaches KVM or a bus until
    /// `register`.
    pub fn attach(
        &mut self,
        device: impl Into<VirtioHandle>,
        name: String,
    ) -> Result<&VirtioEntry, DeviceManagerError> {
        let handle = device.into();
        let slot = self
            .resources
            .allocate_virtio()
            .ok_or(DeviceManagerError::TooManyDevices)?;
        let evt =
            EventFd::new(EFD_NONBLOCK).map_err(|e| DeviceManagerError::EventFd(name.clone(), e))?;
        let interrupt = Arc::new(VirtioInterrupt::new(evt));
        let device = handle.device();
        let (id, counters) = {
            let locked = device.lock().expect("new device lock");
            (locked.id().to_string(), locked.counters())
        };
        let transport = Arc::new(MmioTransport::new(
            device,
            interrupt.clone(),
            self.mem.clone(),
            name.clone(),
        ));
        self.virtio.push(VirtioEntry {
            id,
            name,
            slot,
            handle,
            interrupt,
            transport,
            counters,
        });
        Ok(self.virtio.last().expect("an entry was just pushed"))
    }

    /// The attached virtio devices, in attach order.
    pub fn virtio(&self) -> &[VirtioEntry] {
        &self.virtio
    }

    /// The `virtio_mmio.device=4K@ADDR:IRQ` kernel arguments, one per device.
    pub fn cmdline_announcements(&self) -> Vec<String> {
        self.virtio
            .iter()
            .map(|e| format!("virtio_mmio.device=4K@{:#x}:{}", e.slot.base, e.slot.irq))
            .collect()
    }

    /// The DSDT entries, one per device.
    pub fn acpi_devices(&self) -> Vec<VirtioMmioDevice> {
        self.virtio
            .iter()
            .map(|e| VirtioMmioDevice {
                base: e.slot.base,
                irq: e.slot.irq,
            })
            .collect()
    }

    /// Wires every device into the VM: its interrupt to an irqfd on its line, each queue's
    /// notification (a write of the queue index to QueueNotify) to an ioeventfd, its transport
    /// onto `mmio` at its window.
    pub fn register(&self, vm: &Vm, mmio: &mut Bus) -> Result<(), DeviceManagerError> {
        for entry in &self.virtio {
            vm.register_irqfd(entry.interrupt.eventfd(), entry.slot.irq)?;
            let notify =
                IoEventAddress::Mmio(entry.slot.base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
            entry.handle.with_device(|device| {
                for (queue, evt) in device.queue_events().iter().enumerate() {
                    vm.fd()
                        .register_ioevent(evt, &notify, queue as u32)
                        .map_err(|e| DeviceManagerError::Ioeventfd(entry.name.clone(), e))?;
                }
                Ok::<(), DeviceManagerError>(())
            })?;
            mmio.insert(entry.transport.clone(), entry.slot.base, MMIO_WINDOW_SIZE)?;
        }
        Ok(())
    }

    /// Every device's counters, in attach order.
    pub fn counters(&self) -> Vec<DeviceReport> {
        self.virtio
            .iter()
            .map(|e| DeviceReport {
                id: e.id.clone(),
                kind: e.kind(),
                counters: e.counters(),
            })
            .collect()
    }

    /// The devices as event-loop subscribers.
    pub fn subscribers(&self) -> Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>> {
        self.virtio.iter().map(|e| e.handle.subscriber()).collect()
    }

    /// Quiesces every device (the VM is pausing): none serves its queues until `wake`.
    pub fn quiesce(&self) {
        for entry in &self.virtio {
            entry.handle.with_device(|device| device.quiesce());
        }
    }

    /// Wakes every device: each serves its queues again, starting with what the guest queued
    /// while it was quiesced.
    pub fn wake(&self) {
        for entry in &self.virtio {
            entry.handle.with_device(|device| device.wake());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    struct Fixture {
        manager: DeviceManager,
        disk: std::path::PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            std::fs::remove_file(&self.disk).ok();
        }
    }

    fn fixture(name: &str) -> Fixture {
        let disk = std::env::temp_dir().join(format!("ember-devmgr-{name}-{}", std::process::id()));
        std::fs::write(&disk, vec![0u8; 4096]).expect("disk file");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
        Fixture {
            manager: DeviceManager::new(mem),
            disk,
        }
    }

    fn block(f: &Fixture, id: &str) -> Block {
        Block::new(id, &f.disk, true).expect("disk")
    }

    #[test]
    fn test_attach_gives_each_device_its_slot_id_and_kind() {
        let mut f = fixture("attach");
        for id in ["a", "b", "c"] {
            let device = block(&f, id);
            f.manager
                .attach(device, format!("disk {id}"))
                .expect("attach");
        }
        let entries = f.manager.virtio();
        let ids: Vec<&str> = entries.iter().map(|e| e.id()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let irqs: Vec<u32> = entries.iter().map(|e| e.slot().irq).collect();
        assert_eq!(irqs, [5, 6, 7]);
        assert!(entries.iter().all(|e| e.kind() == VirtioKind::Block));
        assert_eq!(entries[1].name(), "disk b");
    }

    #[test]
    fn test_announcements_and_dsdt_entries_follow_the_attached_devices() {
        let mut f = fixture("announce");
        for id in ["a", "b"] {
            let device = block(&f, id);
            f.manager.attach(device, id.into()).expect("attach");
        }
        assert_eq!(
            f.manager.cmdline_announcements(),
            [
                "virtio_mmio.device=4K@0xd0000000:5",
                "virtio_mmio.device=4K@0xd0001000:6"
            ]
        );
        let acpi = f.manager.acpi_devices();
        assert_eq!(acpi.len(), 2);
        assert_eq!((acpi[1].base, acpi[1].irq), (0xd000_1000, 6));
    }

    #[test]
    fn test_counters_are_collected_per_device_and_serialize() {
        let mut f = fixture("counters");
        let device = block(&f, "root");
        f.manager
            .attach(device, "disk root".into())
            .expect("attach");

        let reports = f.manager.counters();

        assert_eq!(reports.len(), 1);
        let json = serde_json::to_string(&reports[0]).expect("json");
        assert_eq!(
            json,
            r#"{"id":"root","kind":"block","counters":{"ops":0,"read_bytes":0,"written_bytes":0,"errors":0,"drops":0,"throttled":0}}"#
        );
    }

    #[test]
    fn test_attach_past_the_free_lines_is_refused() {
        let mut f = fixture("full");
        for i in 0..MAX_VIRTIO_DEVICES {
            let device = block(&f, &format!("d{i}"));
            f.manager.attach(device, format!("d{i}")).expect("fits");
        }
        let device = block(&f, "one-too-many");
        let err = f.manager.attach(device, "x".into()).err();
        assert!(matches!(err, Some(DeviceManagerError::TooManyDevices)));
        assert_eq!(f.manager.virtio().len(), MAX_VIRTIO_DEVICES);
    }
}
