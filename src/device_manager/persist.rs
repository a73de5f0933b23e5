//! Saving and restoring every device through the device manager: each virtio device (its
//! transport with the queues, and its own state reached through its typed handle) and the legacy
//! devices (UART, i8042, ACPI PM registers, CMOS). Save a quiesced VM (vCPUs parked, devices quiesced);
//! restore into devices freshly built from the same configuration, before the vCPUs run.

use serde::{Deserialize, Serialize};

use super::{DeviceManager, Devices, VirtioHandle, VirtioKind};
use crate::devices::acpi::AcpiPmState;
use crate::devices::legacy::cmos::CmosState;
use crate::devices::legacy::i8042::I8042State;
use crate::devices::legacy::serial::SerialDeviceState;
use crate::devices::state::{StateError, check_version};
use crate::devices::virtio::block::persist::BlockState;
use crate::devices::virtio::net::persist::NetState;
use crate::devices::virtio::rng::persist::RngState;
use crate::devices::virtio::state::TransportState;
use crate::devices::virtio::vsock::persist::VsockState;

/// A virtio device's own state, by kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum VirtioKindState {
    /// A disk.
    Block(BlockState),
    /// A network interface.
    Net(NetState),
    /// An entropy device.
    Rng(RngState),
    /// The vsock device.
    Vsock(VsockState),
}

impl VirtioKindState {
    /// The kind of device this state belongs to.
    pub fn kind(&self) -> VirtioKind {
        match self {
            VirtioKindState::Block(_) => VirtioKind::Block,
            VirtioKindState::Net(_) => VirtioKind::Net,
            VirtioKindState::Rng(_) => VirtioKind::Rng,
            VirtioKindState::Vsock(_) => VirtioKind::Vsock,
        }
    }
}

/// One virtio device: its transport (with the queues) and its own state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioDeviceState {
    /// The device's id.
    pub id: String,
    /// The virtio-mmio register file and queues.
    pub transport: TransportState,
    /// The device's own state.
    pub device: VirtioKindState,
}

/// Every device of a VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// Layout version (`DevicesState::VERSION`).
    pub version: u16,
    /// The UART.
    pub serial: SerialDeviceState,
    /// The i8042.
    pub i8042: I8042State,
    /// The ACPI power-management registers.
    pub acpi_pm: AcpiPmState,
    /// The CMOS clock's registers and RAM.
    pub cmos: CmosState,
    /// The virtio devices, in attach order.
    pub virtio: Vec<VirtioDeviceState>,
}

impl DevicesState {
    /// The layout this build writes and reads.
    pub const VERSION: u16 = 1;
}

impl DeviceManager {
    /// Every virtio device's state, in attach order.
    pub fn save(&self) -> Vec<VirtioDeviceState> {
        self.virtio
            .iter()
            .map(|entry| VirtioDeviceState {
                id: entry.id.clone(),
                transport: entry.transport.save(),
                device: match &entry.handle {
                    VirtioHandle::Block(d) => VirtioKindState::Block(lock(d).save()),
                    VirtioHandle::Net(d) => VirtioKindState::Net(lock(d).save()),
                    VirtioHandle::Rng(d) => VirtioKindState::Rng(lock(d).save()),
                    VirtioHandle::Vsock(d) => VirtioKindState::Vsock(lock(d).save()),
                },
            })
            .collect()
    }

    /// Restores `saved` into the attached devices, which must be the saved ones in the same
    /// order (same ids and kinds): each transport first (which activates a device that was
    /// active), then the device's own state.
    pub fn restore(&self, saved: &[VirtioDeviceState]) -> Result<(), StateError> {
        if saved.len() != self.virtio.len() {
            return Err(StateError::Mismatch {
                what: "virtio devices".into(),
                field: "the number of devices",
            });
        }
        for (entry, state) in self.virtio.iter().zip(saved) {
            let mismatch = |field| StateError::Mismatch {
                what: entry.name.clone(),
                field,
            };
            if state.id != entry.id {
                return Err(mismatch("the id"));
            }
            if state.device.kind() != entry.kind() {
                return Err(mismatch("the kind"));
            }
            entry.transport.restore(&state.transport)?;
            match (&entry.handle, &state.device) {
                (VirtioHandle::Block(d), VirtioKindState::Block(s)) => lock(d).restore(s)?,
                (VirtioHandle::Net(d), VirtioKindState::Net(s)) => lock(d).restore(s)?,
                (VirtioHandle::Rng(d), VirtioKindState::Rng(s)) => lock(d).restore(s)?,
                (VirtioHandle::Vsock(d), VirtioKindState::Vsock(s)) => lock(d).restore(s)?,
                (
                    VirtioHandle::Block(_)
                    | VirtioHandle::Net(_)
                    | VirtioHandle::Rng(_)
                    | VirtioHandle::Vsock(_),
                    _,
                ) => {
                    return Err(mismatch("the kind"));
                }
            }
        }
        Ok(())
    }
}

fn lock<T>(device: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    device.lock().expect("virtio device lock poisoned")
}

impl Devices {
    /// Every device's state.
    pub fn save(&self) -> DevicesState {
        DevicesState {
            version: DevicesState::VERSION,
            serial: self.serial.save(),
            i8042: self.i8042.save(),
            acpi_pm: self.acpi_pm.save(),
            cmos: self.cmos.save(),
            virtio: self.virtio.save(),
        }
    }

    /// Restores every device from `saved`.
    pub fn restore(&self, saved: &DevicesState) -> Result<(), StateError> {
        check_version("device", saved.version, DevicesState::VERSION)?;
        self.serial.restore(&saved.serial)?;
        self.i8042.restore(&saved.i8042)?;
        self.acpi_pm.restore(&saved.acpi_pm)?;
        self.cmos.restore(&saved.cmos)?;
        self.virtio.restore(&saved.virtio)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
    use virtio_bindings::virtio_mmio::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::devices::acpi::AcpiPm;
    use crate::devices::bus::{Bus, BusDevice};
    use crate::devices::legacy::EventFdTrigger;
    use crate::devices::legacy::cmos::Cmos;
    use crate::devices::legacy::i8042::I8042;
    use crate::devices::legacy::serial::{SerialDevice, SerialOutput};
    use crate::devices::virtio::block::Block;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::test_utils::{Scratch, desc, memory, post};
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    /// Two disks (the first read-write, the second read-only) on `mem`, and their event loop.
    fn manager(mem: &GuestMemoryMmap, disks: &[Scratch; 2]) -> (DeviceManager, Loop) {
        let mut manager = DeviceManager::new(mem.clone());
        for (i, disk) in disks.iter().enumerate() {
            let block = Block::new(&format!("d{i}"), &disk.path, i == 1).expect("disk");
            manager.attach(block, format!("disk d{i}")).expect("attach");
        }
        let mut events: Loop = EventManager::new().expect("epoll");
        for sub in manager.subscribers() {
            events.add_subscriber(sub);
        }
        (manager, events)
    }

    fn wr(t: &MmioTransport, offset: u32, value: u32) {
        t.write(u64::from(offset), &value.to_le_bytes());
    }

    fn rd(t: &MmioTransport, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        t.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    /// What a driver does to bring a device up on the mock queue `mq`.
    fn driver_init(t: &MmioTransport, mq: &MockSplitQueue<'_, GuestMemoryMmap>) {
        wr(t, VIRTIO_MMIO_STATUS, 1);
        wr(t, VIRTIO_MMIO_STATUS, 3);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
        wr(t, VIRTIO_MMIO_STATUS, 11);
        wr(t, VIRTIO_MMIO_QUEUE_NUM, 16);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, mq.desc_table_addr().0 as u32);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, mq.avail_addr().0 as u32);
        wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, mq.used_addr().0 as u32);
        wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
        wr(t, VIRTIO_MMIO_STATUS, 15);
    }

    /// Posts a one-sector read of sector 0 as request `n` (descriptors 3n to 3n+2).
    fn post_read(mem: &GuestMemoryMmap, mq: &MockSplitQueue<'_, GuestMemoryMmap>, n: u16) {
        let base = 0x10_0000 + u64::from(n) * 0x1000;
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        mem.write_slice(&header, GuestAddress(base))
            .expect("header");
        let w = VRING_DESC_F_WRITE as u16;
        post(
            mq,
            n * 3,
            &[
                desc(base, 16, 0),
                desc(base + 0x100, 512, w),
                desc(base + 0x300, 1, w),
            ],
        );
    }

    fn registers(t: &MmioTransport) -> Vec<u32> {
        [
            VIRTIO_MMIO_STATUS,
            VIRTIO_MMIO_QUEUE_READY,
            VIRTIO_MMIO_INTERRUPT_STATUS,
            VIRTIO_MMIO_CONFIG_GENERATION,
        ]
        .iter()
        .map(|&offset| rd(t, offset))
        .collect()
    }

    #[test]
    fn test_manager_state_round_trip_resumes_each_device_where_it_was() {
        let disks = [
            Scratch::new("devmgr-state-0", &[7u8; 8192]),
            Scratch::new("devmgr-state-1", &[9u8; 8192]),
        ];
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let (saved_vm, mut events) = manager(&mem, &disks);
        driver_init(saved_vm.virtio()[0].transport(), &mq);
        post_read(&mem, &mq, 0);
        events.run_with_timeout(0).expect("epoll");
        assert_eq!(mq.used().idx().load(), 1);
        let json = serde_json::to_string(&saved_vm.save()).expect("serialize");
        let saved_registers: Vec<_> = saved_vm
            .virtio()
            .iter()
            .map(|e| registers(e.transport()))
            .collect();
        // The saving VM lets go of its (locked) disk images, as a process that saved would.
        drop(events);
        drop(saved_vm);

        let (restored, mut events) = manager(&mem, &disks);
        let state: Vec<VirtioDeviceState> = serde_json::from_str(&json).expect("deserialize");
        restored.restore(&state).expect("restore");
        post_read(&mem, &mq, 1);
        events.run_with_timeout(0).expect("epoll");

        for (a, b) in saved_registers.iter().zip(restored.virtio()) {
            assert_eq!(&registers(b.transport()), a);
        }
        assert_eq!(
            restored.virtio()[0].counters().ops,
            1,
            "request 0 not served again"
        );
        assert_eq!(mq.used().idx().load(), 2);
        let mut data = [0u8; 512];
        mem.read_slice(&mut data, GuestAddress(0x10_1100))
            .expect("data");
        assert_eq!(data, [7u8; 512]);
    }

    #[test]
    fn test_manager_restore_refuses_other_devices() {
        let disks = [
            Scratch::new("devmgr-other-0", &[0u8; 4096]),
            Scratch::new("devmgr-other-1", &[0u8; 4096]),
        ];
        let mem = memory();
        let (manager, _events) = manager(&mem, &disks);
        let saved = manager.save();
        let mut swapped = saved.clone();
        swapped.swap(0, 1);

        assert!(manager.restore(&saved[..1]).is_err());
        assert!(matches!(
            manager.restore(&swapped),
            Err(StateError::Mismatch {
                field: "the id",
                ..
            })
        ));
        manager.restore(&saved).expect("the same devices");
    }

    /// A `Devices` with the legacy devices on their own eventfds and no virtio device.
    fn devices() -> Devices {
        let evt = || EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let trigger = || EventFdTrigger(evt());
        Devices {
            pio: Arc::new(Bus::new("port")),
            mmio: Arc::new(Bus::new("MMIO")),
            reset_evt: evt(),
            i8042: Arc::new(I8042::new(trigger(), trigger())),
            serial: Arc::new(SerialDevice::new(trigger(), evt(), SerialOutput::Sink)),
            acpi_pm: Arc::new(AcpiPm::new(trigger(), trigger())),
            cmos: Arc::new(Cmos::default()),
            poweroff_evt: evt(),
            acpi_reset_evt: evt(),
            console: None,
            virtio: Arc::new(DeviceManager::new(memory())),
        }
    }

    #[test]
    fn test_devices_state_round_trips_through_json() {
        let vm = devices();
        vm.serial.write(7, &[0x5a]);
        vm.i8042.send_ctrl_alt_del().expect("keyboard on");
        vm.acpi_pm.write(2, &[0x01, 0x00]);
        let json = serde_json::to_string(&vm.save()).expect("serialize");

        let fresh = devices();
        fresh
            .restore(&serde_json::from_str(&json).expect("deserialize"))
            .expect("restore");

        assert_eq!(fresh.save(), vm.save());
    }
}
