//! The virtio-mmio transport (virtio 1.x, "version 2" register layout): feature negotiation,
//! queue setup, device status and reset, interrupt status/acknowledge, the config window, and
//! the save and restore of all of it.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::state::{QueueSnapshot, TransportState};
use super::{
    ActivateContext, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice, VirtioInterrupt,
};
use crate::devices::bus::BusDevice;
use crate::devices::state::{StateError, check_version};

/// Size of one transport's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION_MODERN: u32 = 2;
/// Vendor id reported to the guest ("EMBR").
const VENDOR_ID: u32 = 0x5242_4d45;

struct State {
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    /// Queues the driver gave a size the device cannot use.
    bad_size: Vec<bool>,
    config_generation: u32,
    activated: bool,
}

/// One virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<VirtioInterrupt>,
    mem: GuestMemoryMmap,
    state: Mutex<State>,
    name: String,
}

fn new_queues(max_sizes: &[u16]) -> Vec<Queue> {
    max_sizes
        .iter()
        .map(|&size| Queue::new(size).expect("device queue sizes are powers of two <= 32768"))
        .collect()
}

impl MmioTransport {
    /// Wraps `device`, raising `interrupt`; `name` appears in log lines.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<VirtioInterrupt>,
        mem: GuestMemoryMmap,
        name: String,
    ) -> Self {
        let queues = new_queues(device.lock().expect("device lock").queue_max_sizes());
        let bad_size = vec![false; queues.len()];
        MmioTransport {
            device,
            interrupt,
            mem,
            state: Mutex::new(State {
                status: 0,
                device_features_sel: 0,
                driver_features_sel: 0,
                acked_features: 0,
                queue_sel: 0,
                queues,
                bad_size,
                config_generation: 0,
                activated: false,
            }),
            name,
        }
    }

    fn device(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().expect("virtio device lock poisoned")
    }

    fn read_reg(&self, state: &State, offset: u32) -> u32 {
        let selected = state.queues.get(state.queue_sel as usize);
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION_MODERN,
            VIRTIO_MMIO_DEVICE_ID => self.device().device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = self.device().avail_features() | VIRTIO_F_VERSION_1;
                match state.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => selected.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => selected.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => state.status,
            VIRTIO_MMIO_CONFIG_GENERATION => state.config_generation,
            _ => {
                log::warn!("{}: guest read of unknown register {offset:#x}", self.name);
                0
            }
        }
    }

    /// Queue registers are writable only while the driver sets the device up.
    fn queue_setup_allowed(state: &State) -> bool {
        state.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && state.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
    }

    fn write_reg(&self, state: &mut State, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => state.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => state.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                if state.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
                    || state.status & VIRTIO_CONFIG_S_DRIVER == 0
                {
                    log::warn!(
                        "{}: driver features written out of order; ignored",
                        self.name
                    );
                    return;
                }
                let offered = self.device().avail_features() | VIRTIO_F_VERSION_1;
                let shift = match state.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                state.acked_features =
                    (state.acked_features & !mask) | ((u64::from(value) << shift) & offered);
            }
            VIRTIO_MMIO_QUEUE_SEL => state.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Normally caught by the ioeventfd in KVM; this path is the fallback.
                let device = self.device();
                match device.queue_events().get(value as usize) {
                    Some(evt) => {
                        let _ = evt.write(1);
                    }
                    None => log::warn!("{}: notify for missing queue {value}", self.name),
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(state, value),
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                if !Self::queue_setup_allowed(state) {
                    log::warn!(
                        "{}: queue register {offset:#x} written outside queue setup; ignored",
                        self.name
                    );
                    return;
                }
                let sel = state.queue_sel as usize;
                let Some(q) = state.queues.get_mut(sel) else {
                    log::warn!(
                        "{}: queue register written for missing queue {sel}",
                        self.name
                    );
                    return;
                };
                match offset {
                    // An invalid size (not a power of two, above the maximum) leaves the queue
                    // unusable; activation then fails and the device asks for a reset.
                    VIRTIO_MMIO_QUEUE_NUM => {
                        let ok = u16::try_from(value).is_ok_and(|v| q.try_set_size(v).is_ok());
                        if !ok {
                            log::warn!("{}: invalid size {value} for queue {sel}", self.name);
                        }
                        state.bad_size[sel] = !ok;
                    }
                    VIRTIO_MMIO_QUEUE_READY => q.set_ready(value == 1),
                    VIRTIO_MMIO_QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
                    VIRTIO_MMIO_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
                    VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(value), None),
                    VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(value)),
                    VIRTIO_MMIO_QUEUE_USED_LOW => q.set_used_ring_address(Some(value), None),
                    VIRTIO_MMIO_QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(value)),
                    _ => unreachable!("matched by the outer arm"),
                }
            }
            _ => log::warn!(
                "{}: guest write {value:#x} to unknown register {offset:#x}",
                self.name
            ),
        }
    }

    fn reset(&self, state: &mut State) {
        if state.activated {
            self.device().reset();
        }
        let queues = new_queues(self.device().queue_max_sizes());
        let bad_size = vec![false; queues.len()];
        *state = State {
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            queues,
            bad_size,
            config_generation: state.config_generation,
            activated: false,
        };
        self.interrupt.reset();
    }

    fn write_status(&self, state: &mut State, value: u32) {
        if value == 0 {
            log::debug!("{}: reset by the driver", self.name);
            self.reset(state);
            return;
        }
        let old = state.status;
        // The driver may only add bits (and FAILED); anything else is a protocol error.
        if value & old != old {
            log::warn!(
                "{}: driver cleared status bits ({old:#x} -> {value:#x}); ignored",
                self.name
            );
            return;
        }
        let added = value & !old;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && state.acked_features & VIRTIO_F_VERSION_1 == 0
        {
            log::warn!(
                "{}: driver did not accept VIRTIO_F_VERSION_1; features not OK",
                self.name
            );
            state.status = value & !VIRTIO_CONFIG_S_FEATURES_OK;
            return;
        }
        state.status = value;
        if added & VIRTIO_CONFIG_S_FAILED != 0 {
            log::warn!(
                "{}: the guest driver gave up on the device (FAILED)",
                self.name
            );
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 && !state.activated {
            let needed =
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
            if value & needed != needed {
                log::warn!("{}: DRIVER_OK before FEATURES_OK", self.name);
                self.needs_reset(state);
                return;
            }
            self.activate(state);
        }
    }

    fn needs_reset(&self, state: &mut State) {
        state.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn activate(&self, state: &mut State) {
        let event_idx = state.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(state.queues.len());
        let mut problem = None;
        for (i, configured) in state.queues.iter().enumerate() {
            match Queue::try_from(configured.state()) {
                Ok(mut q) => {
                    q.set_event_idx(event_idx);
                    if q.ready() && (state.bad_size[i] || !q.is_valid(&self.mem)) {
                        problem.get_or_insert((i, q.size()));
                    }
                    queues.push(q);
                }
                Err(_) => {
                    problem.get_or_insert((i, configured.size()));
                }
            }
        }
        if let Some((i, size)) = problem {
            log::warn!(
                "{}: queue {i} is invalid (size {size}, rings outside guest memory or misaligned)",
                self.name
            );
            self.needs_reset(state);
            return;
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            acked_features: state.acked_features,
            interrupt: self.interrupt.clone(),
        };
        match self.device().activate(ctx) {
            Ok(()) => {
                state.activated = true;
                log::debug!(
                    "{}: activated, features {:#x}",
                    self.name,
                    state.acked_features
                );
            }
            Err(e) => {
                log::warn!("{}: activation failed: {e}", self.name);
                self.needs_reset(state);
            }
        }
    }
}

impl MmioTransport {
    /// The register file and every queue; once the device is activated, the queues as the
    /// device uses them (ring positions included).
    pub fn save(&self) -> TransportState {
        let state = self.state.lock().expect("transport lock poisoned");
        let live = if state.activated {
            self.device().active_queues()
        } else {
            None
        };
        let queues = live.unwrap_or_else(|| state.queues.iter().map(|q| q.state()).collect());
        TransportState {
            version: TransportState::VERSION,
            status: state.status,
            device_features_sel: state.device_features_sel,
            driver_features_sel: state.driver_features_sel,
            acked_features: state.acked_features,
            queue_sel: state.queue_sel,
            queues: queues.into_iter().map(QueueSnapshot).collect(),
            bad_size: state.bad_size.clone(),
            interrupt_status: self.interrupt.status(),
            config_generation: state.config_generation,
            activated: state.activated,
        }
    }

    /// Puts this transport where `saved` was: registers, queues and interrupt status; a device
    /// that was activated is activated again with its queues at their saved positions. Every
    /// queue is validated as at DRIVER_OK.
    pub fn restore(&self, saved: &TransportState) -> Result<(), StateError> {
        check_version(
            "virtio-mmio transport",
            saved.version,
            TransportState::VERSION,
        )?;
        let invalid = |reason: String| StateError::Invalid {
            what: self.name.clone(),
            reason,
        };
        let max_sizes = self.device().queue_max_sizes().to_vec();
        if saved.queues.len() != max_sizes.len() || saved.bad_size.len() != max_sizes.len() {
            return Err(invalid(format!(
                "{} queues saved, the device has {}",
                saved.queues.len(),
                max_sizes.len()
            )));
        }
        let mut queues = Vec::with_capacity(saved.queues.len());
        for (i, (q, max)) in saved.queues.iter().zip(&max_sizes).enumerate() {
            if q.0.max_size != *max {
                return Err(invalid(format!(
                    "queue {i} has maximum size {}",
                    q.0.max_size
                )));
            }
            let queue = Queue::try_from(q.0).map_err(|e| invalid(format!("queue {i}: {e}")))?;
            queues.push(queue);
        }
        let mut state = self.state.lock().expect("transport lock poisoned");
        if state.activated {
            self.device().reset();
        }
        *state = State {
            status: saved.status,
            device_features_sel: saved.device_features_sel,
            driver_features_sel: saved.driver_features_sel,
            acked_features: saved.acked_features,
            queue_sel: saved.queue_sel,
            queues,
            bad_size: saved.bad_size.clone(),
            config_generation: saved.config_generation,
            activated: false,
        };
        self.interrupt.restore_status(saved.interrupt_status);
        if saved.activated {
            self.activate(&mut state);
            if !state.activated {
                return Err(invalid("the device refused its saved queues".into()));
            }
        }
        Ok(())
    }
}

impl BusDevice for MmioTransport {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device()
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::warn!(
                "{}: {}-byte read at register offset {offset:#x}; registers are 32-bit",
                self.name,
                data.len()
            );
            data.fill(0);
            return;
        }
        let state = self.state.lock().expect("transport lock poisoned");
        let value = self.read_reg(&state, offset as u32);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            let mut state = self.state.lock().expect("transport lock poisoned");
            self.device()
                .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            state.config_generation = state.config_generation.wrapping_add(1);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::warn!(
                "{}: {}-byte write at register offset {offset:#x}; registers are 32-bit",
                self.name,
                data.len()
            );
            return;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let mut state = self.state.lock().expect("transport lock poisoned");
        self.write_reg(&mut state, offset as u32, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;
    use virtio_queue::QueueState;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    struct Dummy {
        evts: Vec<EventFd>,
        activated: Option<(usize, u64)>,
        live: Option<Vec<QueueState>>,
        resets: usize,
    }

    impl VirtioDevice for Dummy {
        fn id(&self) -> &str {
            "dummy"
        }
        fn counters(&self) -> Arc<crate::devices::virtio::counters::DeviceCounters> {
            Arc::default()
        }
        fn device_type(&self) -> u32 {
            42
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[9, 8, 7, 6], offset, data);
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            self.activated = Some((ctx.queues.len(), ctx.acked_features));
            self.live = Some(ctx.queues.iter().map(|q| q.state()).collect());
            Ok(())
        }
        fn reset(&mut self) {
            self.activated = None;
            self.live = None;
            self.resets += 1;
        }
        fn quiesce(&mut self) {}
        fn wake(&mut self) {}
        fn active_queues(&self) -> Option<Vec<QueueState>> {
            self.live.clone()
        }
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
        let dummy = Arc::new(Mutex::new(Dummy {
            evts: vec![EventFd::new(EFD_NONBLOCK).expect("evt")],
            activated: None,
            live: None,
            resets: 0,
        }));
        let irq = Arc::new(VirtioInterrupt::new(
            EventFd::new(EFD_NONBLOCK).expect("irq"),
        ));
        let t = MmioTransport::new(dummy.clone(), irq, mem, "test".into());
        (t, dummy)
    }

    fn rd(t: &MmioTransport, off: u32) -> u32 {
        let mut d = [0u8; 4];
        t.read(u64::from(off), &mut d);
        u32::from_le_bytes(d)
    }

    fn wr(t: &MmioTransport, off: u32, v: u32) {
        t.write(u64::from(off), &v.to_le_bytes());
    }

    fn negotiate(t: &MmioTransport) {
        wr(t, VIRTIO_MMIO_STATUS, 1);
        wr(t, VIRTIO_MMIO_STATUS, 3);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(
            t,
            VIRTIO_MMIO_DRIVER_FEATURES,
            (VIRTIO_RING_F_EVENT_IDX | 1) as u32,
        );
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(t, VIRTIO_MMIO_STATUS, 3 | 8);
    }

    fn setup_queue(t: &MmioTransport) {
        wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
        wr(t, VIRTIO_MMIO_QUEUE_NUM, 16);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
        wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }

    #[test]
    fn test_mmio_identity_registers() {
        let (t, _) = setup();
        assert_eq!(rd(&t, VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC);
        assert_eq!(rd(&t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(rd(&t, VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(rd(&t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        wr(&t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
    }

    #[test]
    fn test_mmio_full_negotiation_activates_device() {
        let (t, dummy) = setup();
        negotiate(&t);
        setup_queue(&t);
        wr(&t, VIRTIO_MMIO_STATUS, 3 | 8 | 4);
        let acked = dummy.lock().expect("lock").activated;
        assert_eq!(
            acked,
            Some((1, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 1))
        );
        assert_eq!(rd(&t, VIRTIO_MMIO_STATUS), 15);
    }

    #[test]
    fn test_mmio_driver_ok_without_features_ok_needs_reset() {
        let (t, dummy) = setup();
        wr(&t, VIRTIO_MMIO_STATUS, 1);
        wr(&t, VIRTIO_MMIO_STATUS, 3);
        wr(&t, VIRTIO_MMIO_STATUS, 3 | 4);
        assert!(dummy.lock().expect("lock").activated.is_none());
        assert_ne!(rd(&t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }

    #[test]
    fn test_mmio_queue_outside_memory_needs_reset() {
        let (t, dummy) = setup();
        negotiate(&t);
        setup_queue(&t);
        wr(&t, VIRTIO_MMIO_QUEUE_USED_LOW, 0xffff_f000);
        wr(&t, VIRTIO_MMIO_STATUS, 15);
        assert!(dummy.lock().expect("lock").activated.is_none());
        assert_ne!(rd(&t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }

    #[test]
    fn test_mmio_queue_size_not_power_of_two_needs_reset() {
        let (t, dummy) = setup();
        negotiate(&t);
        setup_queue(&t);
        wr(&t, VIRTIO_MMIO_QUEUE_NUM, 12);
        wr(&t, VIRTIO_MMIO_STATUS, 15);
        assert!(dummy.lock().expect("lock").activated.is_none());
    }

    #[test]
    fn test_mmio_features_without_version_1_refused() {
        let (t, _) = setup();
        wr(&t, VIRTIO_MMIO_STATUS, 1);
        wr(&t, VIRTIO_MMIO_STATUS, 3);
        wr(&t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&t, VIRTIO_MMIO_STATUS, 3 | 8);
        assert_eq!(rd(&t, VIRTIO_MMIO_STATUS) & 8, 0);
    }

    #[test]
    fn test_mmio_reset_resets_device_and_state() {
        let (t, dummy) = setup();
        negotiate(&t);
        setup_queue(&t);
        wr(&t, VIRTIO_MMIO_STATUS, 15);
        wr(&t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(dummy.lock().expect("lock").resets, 1);
        assert_eq!(rd(&t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(rd(&t, VIRTIO_MMIO_QUEUE_READY), 0);
    }

    #[test]
    fn test_mmio_queue_writes_before_features_ok_ignored() {
        let (t, _) = setup();
        wr(&t, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(rd(&t, VIRTIO_MMIO_QUEUE_READY), 0);
    }

    #[test]
    fn test_mmio_config_window_and_odd_sizes() {
        let (t, _) = setup();
        let mut b = [0u8; 2];
        t.read(0x101, &mut b);
        assert_eq!(b, [8, 7]);
        let mut odd = [0xffu8; 2];
        t.read(0x70, &mut odd);
        assert_eq!(odd, [0, 0]);
    }

    #[test]
    fn test_mmio_notify_fallback_writes_queue_event() {
        let (t, dummy) = setup();
        wr(&t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        wr(&t, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
        assert_eq!(
            dummy.lock().expect("lock").evts[0]
                .read()
                .expect("notified"),
            1
        );
    }

    /// Every register a driver reads, for each queue and feature word (selecting them).
    fn registers(t: &MmioTransport) -> Vec<u32> {
        let mut values = Vec::new();
        for sel in 0..2 {
            wr(t, VIRTIO_MMIO_QUEUE_SEL, sel);
            wr(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
            for off in [
                VIRTIO_MMIO_DEVICE_FEATURES,
                VIRTIO_MMIO_QUEUE_NUM_MAX,
                VIRTIO_MMIO_QUEUE_READY,
                VIRTIO_MMIO_INTERRUPT_STATUS,
                VIRTIO_MMIO_STATUS,
                VIRTIO_MMIO_CONFIG_GENERATION,
            ] {
                values.push(rd(t, off));
            }
        }
        values
    }

    /// Saves `t`, sends the state through JSON, restores it into a fresh transport.
    fn round_trip(t: &MmioTransport) -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let json = serde_json::to_string(&t.save()).expect("serialize");
        let saved: TransportState = serde_json::from_str(&json).expect("deserialize");
        let (fresh, dummy) = setup();
        fresh.restore(&saved).expect("restore");
        (fresh, dummy)
    }

    #[test]
    fn test_mmio_state_round_trip_during_setup_reads_the_same() {
        let (t, _) = setup();
        negotiate(&t);
        setup_queue(&t);
        t.write(0x100, &[1]);
        let before = registers(&t);

        let (restored, dummy) = round_trip(&t);

        assert_eq!(registers(&restored), before);
        assert_eq!(restored.save(), t.save());
        assert!(dummy.lock().expect("lock").activated.is_none());
    }

    #[test]
    fn test_mmio_state_round_trip_activated_reactivates_at_saved_positions() {
        let (t, dummy) = setup();
        negotiate(&t);
        setup_queue(&t);
        wr(&t, VIRTIO_MMIO_STATUS, 15);
        // The device moved along its queue since activation.
        if let Some(live) = dummy.lock().expect("lock").live.as_mut() {
            live[0].next_avail = 7;
            live[0].next_used = 5;
        }
        t.interrupt.signal_used_queue();
        let saved = t.save();

        let (restored, fresh) = round_trip(&t);

        let device = fresh.lock().expect("lock");
        let features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 1;
        assert_eq!(device.activated, Some((1, features)));
        let live = device.live.as_ref().expect("activated");
        assert_eq!((live[0].next_avail, live[0].next_used), (7, 5));
        drop(device);
        assert_eq!(rd(&restored, VIRTIO_MMIO_STATUS), 15);
        assert_eq!(rd(&restored, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        assert_eq!(restored.save(), saved);
    }

    #[test]
    fn test_mmio_restore_refuses_rings_outside_memory_and_other_versions() {
        let (t, _) = setup();
        negotiate(&t);
        setup_queue(&t);
        wr(&t, VIRTIO_MMIO_STATUS, 15);
        let mut outside = t.save();
        outside.queues[0].0.used_ring = 0xffff_f000;
        let mut newer = t.save();
        newer.version += 1;
        let (fresh, dummy) = setup();

        assert!(fresh.restore(&outside).is_err());
        assert!(dummy.lock().expect("lock").activated.is_none());
        assert!(matches!(
            fresh.restore(&newer),
            Err(StateError::Version { .. })
        ));
    }
}
