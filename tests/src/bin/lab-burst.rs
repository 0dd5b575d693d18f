//! New targets in a burst: one non-blocking TCP connect to `ADDR:80` and one DNS query to
//! `ADDR:53` (its own socket, so its own source port) for every ADDR, all sent back to back
//! before any answer can come. Run two at once, pinned to different CPUs, and the kernel
//! sees first packets to new targets on both CPUs at the same moment. Keeps the sockets
//! open `HOLD_MS` (handshakes complete, answers arrive), then exits.
//!
//! ```text
//! lab-burst HOLD_MS [--at=UNIX_MS] ADDR...
//! ```
//!
//! `--at`: start at that wall-clock instant (at most 5 s ahead), so that two bursts
//! started one after the other still send at the same moment.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{FromRawFd as _, OwnedFd},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A DNS query for `burst.example`, type A, with `id`.
fn dns_query(id: u16) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(b"\x05burst\x07example\x00\x00\x01\x00\x01");
    out
}

/// Starts a TCP connect to `address`:80 without waiting for it.
fn connect_nonblocking(address: Ipv4Addr) -> OwnedFd {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET fits"),
        sin_port: 80u16.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in for the length given.
    let rc = unsafe {
        libc::connect(
            fd,
            (&raw const sin).cast(),
            u32::try_from(size_of::<libc::sockaddr_in>()).expect("small"),
        )
    };
    let err = std::io::Error::last_os_error();
    assert!(
        rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
        "connect {address}: {err}"
    );
    owned
}

fn main() {
    let mut args = std::env::args().skip(1);
    let hold: u64 = args
        .next()
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("usage: lab-burst HOLD_MS [--at=UNIX_MS] ADDR..."));
    let mut args = args.peekable();
    let start_at_ms: Option<u64> = args
        .next_if(|a| a.starts_with("--at="))
        .map(|at| at["--at=".len()..].parse().expect("--at=UNIX_MS"));
    let addresses: Vec<Ipv4Addr> = args
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("not an IPv4 address: {a}"))
        })
        .collect();
    if let Some(at_ms) = start_at_ms {
        let now_ms = u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_millis(),
        )
        .expect("ms");
        thread::sleep(Duration::from_millis(
            at_ms.saturating_sub(now_ms).min(5000),
        ));
    }
    let mut keep = Vec::with_capacity(addresses.len());
    let mut sockets = Vec::with_capacity(addresses.len());
    for (n, &address) in addresses.iter().enumerate() {
        keep.push(connect_nonblocking(address));
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let id = u16::try_from(n).expect("fewer than 65,536 addresses");
        socket
            .send_to(&dns_query(id), SocketAddr::new(IpAddr::V4(address), 53))
            .expect("send the query");
        sockets.push(socket);
    }
    thread::sleep(Duration::from_millis(hold));
    println!("sent {} connects and {} queries", keep.len(), sockets.len());
}
