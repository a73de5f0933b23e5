//! Exit dispatch on the bus: what a vCPU thread does for one port or MMIO exit after KVM_RUN
//! returns, among several devices (the lookup, the device call), without KVM.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use criterion::{Criterion, criterion_group, criterion_main};
use ember::devices::bus::{Bus, BusDevice};
use ember::devices::virtio::VirtioInterrupt;
use ember::devices::virtio::block::Block;
use ember::devices::virtio::mmio::MmioTransport;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// A register file that remembers the last write, like a small legacy device.
#[derive(Default)]
struct Register(AtomicU64);

impl BusDevice for Register {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let v = self.0.load(Ordering::Relaxed) ^ offset;
        let n = data.len().min(8);
        data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.0.store(offset ^ u64::from(data[0]), Ordering::Relaxed);
    }
}

/// A port bus shaped like Ember's: i8042, COM1, and a few more small devices.
fn port_bus() -> Bus {
    let mut bus = Bus::new("port");
    for (base, len) in [
        (0x40, 4),
        (0x60, 5),
        (0x3f8, 8),
        (0x2f8, 8),
        (0x3e8, 8),
        (0x2e8, 8),
        (0x170, 8),
        (0x1f0, 8),
    ] {
        bus.insert(Arc::new(Register::default()), base, len)
            .expect("ranges do not overlap");
    }
    bus.add_quiet_range(0x80, 1);
    bus
}

/// An MMIO bus shaped like Ember's with a disk: boot timer, then virtio-mmio windows; the disk
/// (a real `Block` behind a real `MmioTransport`) sits in the middle.
fn mmio_bus(disk: &std::path::Path) -> Bus {
    let mut bus = Bus::new("MMIO");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest memory");
    bus.insert(Arc::new(Register::default()), 0xc000_0000, 1)
        .expect("boot timer");
    for i in 0..8u64 {
        let base = 0xd000_0000 + i * 0x1000;
        if i == 4 {
            let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
            let interrupt = Arc::new(VirtioInterrupt::new(irq));
            let block = Block::new("bench", disk, false).expect("disk");
            let transport = MmioTransport::new(
                Arc::new(Mutex::new(block)),
                interrupt,
                mem.clone(),
                "b".into(),
            );
            bus.insert(Arc::new(transport), base, 0x1000)
                .expect("window");
        } else {
            bus.insert(Arc::new(Register::default()), base, 0x1000)
                .expect("window");
        }
    }
    bus
}

fn bench_bus(c: &mut Criterion) {
    let disk = std::env::temp_dir().join(format!("ember-bench-bus-{}", std::process::id()));
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk file");
    let pio = port_bus();
    let mmio = mmio_bus(&disk);
    let mut g = c.benchmark_group("bus");
    g.bench_function("port read COM1 LSR-like (8 devices)", |b| {
        let mut data = [0u8; 1];
        b.iter(|| black_box(pio.read(black_box(0x3fd), &mut data)));
    });
    g.bench_function("port write (8 devices)", |b| {
        b.iter(|| black_box(pio.write(black_box(0x64), &[0xfe])));
    });
    g.bench_function("port read unmapped quiet port", |b| {
        let mut data = [0u8; 1];
        b.iter(|| black_box(pio.read(black_box(0x80), &mut data)));
    });
    g.bench_function("mmio read virtio-blk MagicValue (9 devices)", |b| {
        let mut data = [0u8; 4];
        b.iter(|| black_box(mmio.read(black_box(0xd000_4000), &mut data)));
    });
    g.bench_function("mmio read virtio-blk config capacity", |b| {
        let mut data = [0u8; 4];
        b.iter(|| black_box(mmio.read(black_box(0xd000_4100), &mut data)));
    });
    g.finish();
    std::fs::remove_file(&disk).ok();
}

criterion_group!(benches, bench_bus);
criterion_main!(benches);
