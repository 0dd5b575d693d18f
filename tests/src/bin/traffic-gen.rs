//! The lab's traffic generator, for pressure tests and benchmarks. Runs inside a lab
//! namespace and sends only to the address it is given (a lab host).
//!
//! ```text
//! traffic-gen dns  ADDR:PORT SECONDS [MAX]   distinct DNS queries (new id, new source port
//!                                            every 65,536, none reused in the last 64) as
//!                                            fast as possible
//! traffic-gen udp  ADDR:PORT SECONDS         64-byte frames (18 bytes of UDP payload)
//! traffic-gen dns-same ADDR:PORT SECONDS [MAX] one DNS query (same port, same id) again
//!                                            and again: one request, sent MAX times
//! ```
//! A send refused with EPERM (this host's output chain dropped the packet) counts as sent:
//! the packet was made and dropped here.
//! ```text
//! ```
//! Stops after SECONDS or MAX packets and prints one JSON line: `{"sent":N,"seconds":S}`.

use std::{
    collections::VecDeque,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

/// A minimal DNS query for `a.example` type A, with `id`.
fn dns_query(id: u16) -> [u8; 27] {
    let [hi, lo] = id.to_be_bytes();
    [
        hi, lo, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, // header: RD, one question
        1, b'a', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0, // a.example
        0, 1, 0, 1, // A, IN
    ]
}

/// Source ports of `dns` mode held after their 65,536 ids are used: 64 × 65,536 requests
/// (seconds at the fastest rate, far past any timeout a run uses) before a port may return.
const KEEP_PORTS: usize = 64;

fn bind_for(target: SocketAddr) -> UdpSocket {
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("addr");
    let socket = UdpSocket::bind(local).expect("bind");
    socket.connect(target).expect("connect");
    socket
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, target, seconds, ..] = &args[..] else {
        eprintln!("usage: traffic-gen dns|udp ADDR:PORT SECONDS [MAX]");
        std::process::exit(2);
    };
    let mode = mode.as_str();
    let target: SocketAddr = target.parse().expect("ADDR:PORT");
    let limit = Duration::from_secs_f64(seconds.parse().expect("SECONDS"));
    let max: u64 = args.get(3).map_or(u64::MAX, |m| m.parse().expect("MAX"));
    let start = Instant::now();
    let mut sent = 0u64;
    let mut socket = bind_for(target);
    let mut retired: VecDeque<UdpSocket> = VecDeque::with_capacity(KEEP_PORTS);
    let frame = [0u8; 18];
    'outer: while sent < max {
        // Check the clock every 256 packets: cheap, and the bound still holds to a millisecond.
        for _ in 0..256 {
            if sent >= max {
                break 'outer;
            }
            let result = match mode {
                "dns" => {
                    #[expect(clippy::cast_possible_truncation, reason = "ids wrap by design")]
                    let id = sent as u16;
                    if id == 0 && sent > 0 {
                        // Every id used on this source port: a new port keeps requests distinct.
                        // The old socket stays open a while, so the kernel cannot hand its port
                        // out again while its requests may still be pending: the same port, id
                        // and question again is a retry to a tracker, not a new request.
                        let old = std::mem::replace(&mut socket, bind_for(target));
                        if retired.len() == KEEP_PORTS {
                            retired.pop_front();
                        }
                        retired.push_back(old);
                    }
                    socket.send(&dns_query(id))
                }
                "udp" => socket.send(&frame),
                "dns-same" => socket.send(&dns_query(1)),
                other => panic!("unknown mode {other}"),
            };
            match result {
                Ok(_) => sent += 1,
                // A full socket buffer or an ICMP error from an earlier send: try again.
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) if err.raw_os_error() == Some(libc::ECONNREFUSED) => {}
                Err(err) if err.raw_os_error() == Some(libc::EPERM) => sent += 1,
                Err(err) => panic!("send: {err}"),
            }
        }
        if start.elapsed() >= limit {
            break;
        }
    }
    println!(
        "{{\"sent\":{sent},\"seconds\":{}}}",
        start.elapsed().as_secs_f64()
    );
}
