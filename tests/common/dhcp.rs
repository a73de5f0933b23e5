//! A minimal DHCP responder on the host side of a TAP, for guests booted with `ip=dhcp`: it
//! answers DISCOVER with OFFER and REQUEST with ACK (one fixed address, a /24, the server as
//! router), built as raw Ethernet frames on an AF_PACKET socket. It also records which client
//! MACs sent a DISCOVER, so a test can see that each NIC transmitted.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::netns::PacketSocket;

const DHCP_DISCOVER: u8 = 1;
const DHCP_OFFER: u8 = 2;
const DHCP_REQUEST: u8 = 3;
const DHCP_ACK: u8 = 5;
const MAGIC_COOKIE: [u8; 4] = [0x63, 0x82, 0x53, 0x63];
/// The responder's own (made-up) MAC.
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// A client request: message type, transaction id and client MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// DHCP message type (option 53).
    pub kind: u8,
    /// Transaction id.
    pub xid: [u8; 4],
    /// Client hardware address.
    pub chaddr: [u8; 6],
}

/// Parses a DHCP client message out of an Ethernet frame.
pub fn parse_request(frame: &[u8]) -> Option<Request> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    if ip[9] != 17 || ip.len() < ihl + 8 {
        return None;
    }
    let udp = &ip[ihl..];
    if udp[2..4] != [0, 67] {
        return None;
    }
    let bootp = &udp[8..];
    if bootp.len() < 240 || bootp[0] != 1 || bootp[236..240] != MAGIC_COOKIE {
        return None;
    }
    let mut opts = &bootp[240..];
    let mut kind = None;
    while let [code, rest @ ..] = opts {
        match code {
            0 => opts = rest,
            255 => break,
            _ => {
                let [len, rest @ ..] = rest else { break };
                let len = usize::from(*len);
                if rest.len() < len {
                    break;
                }
                if *code == 53 && len == 1 {
                    kind = Some(rest[0]);
                }
                opts = &rest[len..];
            }
        }
    }
    Some(Request {
        kind: kind?,
        xid: bootp[4..8].try_into().ok()?,
        chaddr: bootp[28..34].try_into().ok()?,
    })
}

fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The OFFER or ACK for `req`: `client` in a /24, `server` as server id and router.
pub fn build_reply(req: &Request, kind: u8, server: [u8; 4], client: [u8; 4]) -> Vec<u8> {
    let mut bootp = vec![0u8; 240];
    bootp[0] = 2; // BOOTREPLY
    bootp[1] = 1; // Ethernet
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&req.xid);
    bootp[16..20].copy_from_slice(&client); // yiaddr
    bootp[20..24].copy_from_slice(&server); // siaddr
    bootp[28..34].copy_from_slice(&req.chaddr);
    bootp[236..240].copy_from_slice(&MAGIC_COOKIE);
    bootp.extend_from_slice(&[53, 1, kind]);
    bootp.extend_from_slice(&[54, 4]);
    bootp.extend_from_slice(&server);
    bootp.extend_from_slice(&[51, 4, 0, 1, 0x51, 0x80]); // lease: one day
    bootp.extend_from_slice(&[1, 4, 255, 255, 255, 0]);
    bootp.extend_from_slice(&[3, 4]);
    bootp.extend_from_slice(&server);
    bootp.push(255);

    let udp_len = 8 + bootp.len();
    let mut udp = vec![0, 67, 0, 68];
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    udp.extend_from_slice(&bootp);

    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&server);
    ip.extend_from_slice(&[255, 255, 255, 255]);
    let sum = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&SERVER_MAC);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp);
    frame
}

/// A responder thread on one TAP.
pub struct DhcpServer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Request>>>,
    thread: Option<JoinHandle<()>>,
}

impl DhcpServer {
    /// Serves `client` from `server` on `sock`, each answer `delay` after the request; with
    /// `answer` false it only watches.
    pub fn spawn(
        sock: PacketSocket,
        server: [u8; 4],
        client: [u8; 4],
        answer: bool,
        delay: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Some(frame) = sock.recv(Duration::from_millis(200)) else {
                    continue;
                };
                let Some(req) = parse_request(&frame) else {
                    continue;
                };
                seen2.lock().expect("seen lock").push(req);
                let reply = match req.kind {
                    DHCP_DISCOVER => DHCP_OFFER,
                    DHCP_REQUEST => DHCP_ACK,
                    _ => continue,
                };
                if answer {
                    std::thread::sleep(delay);
                    sock.send(&build_reply(&req, reply, server, client));
                }
            }
        });
        DhcpServer {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Requests received so far.
    pub fn seen(&self) -> Vec<Request> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// Whether a DISCOVER from `mac` arrived.
    pub fn saw_discover_from(&self, mac: [u8; 6]) -> bool {
        self.seen()
            .iter()
            .any(|r| r.kind == DHCP_DISCOVER && r.chaddr == mac)
    }

    /// Whether any DHCP request from `mac` arrived.
    pub fn saw_request_from(&self, mac: [u8; 6]) -> bool {
        self.seen().iter().any(|r| r.chaddr == mac)
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
