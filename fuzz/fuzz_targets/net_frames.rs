//! virtio-net's data paths against a fake TAP: the TX path gathers fuzzer-built chains (any
//! descriptors, NEXT loops, indirect tables, buffers outside memory, write-only descriptors)
//! and writes them to a backend whose answers the fuzzer picks (sent, would block, error,
//! interrupted); the RX path reads fuzzer frames (any length up to beyond the 64 KiB maximum,
//! shorter than the vnet header) and scatters them into fuzzer-built RX chains. The `Net`
//! device itself opens a real TAP (TUNSETIFF) and is not built here; its event-loop glue only
//! calls these two paths.
#![no_main]

use std::collections::VecDeque;
use std::io::ErrorKind;

use arbitrary::Arbitrary;
use ember::devices::rate_limiter::RateLimiter;
use ember::devices::virtio::net::QUEUE_SIZE;
use ember::devices::virtio::net::frame::{MAX_BUFFER_LEN, NetStats};
use ember::devices::virtio::net::rxtx::{Backend, Rx, Tx};
use ember_fuzz::{
    MEM_SIZE, TEMPLATE_AVAIL, TEMPLATE_DESC, TEMPLATE_SIZE, TEMPLATE_USED, memory, net_template,
    net_template_base, patch, queue, queue_size,
};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

/// What the fake TAP answers next.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Answer {
    Ok,
    WouldBlock,
    Interrupted,
    Failed,
}

/// One frame the fake TAP hands to RX: `len` bytes (mod just above the largest buffer) of a
/// pattern seeded with `seed`, or an error.
#[derive(Arbitrary, Debug)]
struct Incoming {
    answer: Answer,
    len: u32,
    seed: u8,
}

#[derive(Default)]
struct FakeTap {
    incoming: VecDeque<Incoming>,
    write_answers: VecDeque<Answer>,
    writes: usize,
}

fn io(answer: Answer) -> std::io::Error {
    match answer {
        Answer::WouldBlock | Answer::Ok => ErrorKind::WouldBlock.into(),
        Answer::Interrupted => ErrorKind::Interrupted.into(),
        Answer::Failed => std::io::Error::other("fake TAP failure"),
    }
}

impl Backend for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let next = self
            .incoming
            .pop_front()
            .ok_or_else(|| std::io::Error::from(ErrorKind::WouldBlock))?;
        match next.answer {
            Answer::Ok => {
                // A TAP truncates frames to the buffer it is given.
                let len = (next.len as usize % (MAX_BUFFER_LEN + 100)).min(buf.len());
                buf[..len].fill(next.seed);
                let head = len.min(8);
                buf[..head].copy_from_slice(&next.len.to_le_bytes().repeat(2)[..head]);
                Ok(len)
            }
            other => Err(io(other)),
        }
    }

    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writes += 1;
        // Bounded: after the script, every write succeeds (a real TAP does not fail forever
        // with EINTR).
        match self.write_answers.pop_front().unwrap_or(Answer::Ok) {
            Answer::Ok => Ok(buf.len()),
            other => Err(io(other)),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Guest memory changes (descriptors, rings, buffers).
    Memory { addr: u16, bytes: Vec<u8> },
    /// The guest publishes avail entries on the RX (false) or TX (true) queue.
    Avail { tx: bool, idx: u16 },
    /// A TX notification: one pass of the TX path.
    Tx,
    /// TAP readable or an RX notification: one pass of the RX path.
    Rx,
    /// The device is reset: the waiting TX frame is forgotten.
    ResetTx,
}

#[derive(Arbitrary, Debug)]
struct Input {
    event_idx: bool,
    /// Start from `net_template` (16-entry queues with frames and buffers posted) instead of the
    /// layout below.
    template: bool,
    size: u8,
    /// RX queue rings, then TX queue rings (aligned down as the transport requires).
    rings: [u16; 6],
    image_at: u16,
    image: Vec<u8>,
    incoming: Vec<Incoming>,
    write_answers: Vec<Answer>,
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let mem = memory(MEM_SIZE);
    let r = input.rings;
    let layout = |i: usize| {
        (
            u64::from(r[i] & !0xf),
            u64::from(r[i + 1] & !1),
            u64::from(r[i + 2] & !3),
        )
    };
    let (size, (rd, ra, ru), (td, ta, tu)) = if input.template {
        net_template(&mem, false);
        net_template(&mem, true);
        let at = |tx| {
            let base = net_template_base(tx);
            (
                base + TEMPLATE_DESC,
                base + TEMPLATE_AVAIL,
                base + TEMPLATE_USED,
            )
        };
        (TEMPLATE_SIZE, at(false), at(true))
    } else {
        (queue_size(input.size, QUEUE_SIZE), layout(0), layout(3))
    };
    patch(&mem, u64::from(input.image_at), &input.image);
    let (Some(mut rxq), Some(mut txq)) = (
        queue(&mem, QUEUE_SIZE, size, rd, ra, ru, input.event_idx),
        queue(&mem, QUEUE_SIZE, size, td, ta, tu, input.event_idx),
    ) else {
        return;
    };
    let mut tap = FakeTap {
        incoming: input.incoming.into_iter().take(64).collect(),
        write_answers: input.write_answers.into_iter().collect(),
        ..FakeTap::default()
    };
    let (mut rx, mut tx, mut stats) = (Rx::default(), Tx::default(), NetStats::default());
    let limiter = || RateLimiter::new("fuzz", None).expect("a timerfd");
    let (mut rx_limiter, mut tx_limiter) = (limiter(), limiter());
    for step in input.steps.into_iter().take(64) {
        match step {
            Step::Memory { addr, bytes } => patch(&mem, u64::from(addr), &bytes),
            Step::Avail { tx, idx } => {
                let avail = if tx { ta } else { ra };
                let _ = mem.write_obj(idx, GuestAddress(avail + 2));
            }
            Step::Tx => {
                let before = stats;
                let pass = tx.process(&mem, &mut txq, &mut tap, &mut tx_limiter, &mut stats, "fuzz");
                assert!(stats.tx_frames >= before.tx_frames);
                if pass.blocked {
                    assert!(tx.is_blocked(), "a blocked pass keeps its frame");
                }
            }
            Step::Rx => {
                let _ = rx.process(&mem, &mut rxq, &mut tap, &mut rx_limiter, &mut stats, "fuzz");
            }
            Step::ResetTx => tx.reset(),
        }
    }
    assert!(stats.tx_frames as usize <= tap.writes);
});
