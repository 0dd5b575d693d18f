//! The lab's TCP server: listens on every port given (IPv4 and IPv6), answers each
//! connection with a tiny HTTP response and closes it. Runs until killed.
//!
//! Every listener accepts TCP Fast Open (RFC 7413) data in the SYN; it takes effect only
//! where the namespace's `net.ipv4.tcp_fastopen` enables the server side (bit 2).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv6Addr, TcpListener},
    os::fd::AsRawFd as _,
    thread,
    time::Duration,
};

fn serve(listener: &TcpListener) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let _ = stream
            .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
    }
}

/// Sets the Fast Open queue length (`TCP_FASTOPEN`, allowed on a listening socket).
fn allow_fast_open(listener: &TcpListener) {
    let queue: libc::c_int = 16;
    // SAFETY: setsockopt on a socket we own, with a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            (&raw const queue).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small"),
        )
    };
    assert_eq!(rc, 0, "TCP_FASTOPEN: {}", std::io::Error::last_os_error());
}

fn main() {
    let mut workers = Vec::new();
    for arg in std::env::args().skip(1) {
        let port: u16 = arg.parse().unwrap_or_else(|_| panic!("not a port: {arg}"));
        // [::] is dual-stack here (net.ipv6.bindv6only=0): one socket serves both families.
        let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
            .unwrap_or_else(|err| panic!("cannot listen on port {port}: {err}"));
        allow_fast_open(&listener);
        workers.push(thread::spawn(move || serve(&listener)));
    }
    for worker in workers {
        let _ = worker.join();
    }
}
