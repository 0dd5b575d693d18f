//! The lab's TCP server: listens on every port given (IPv4 and IPv6), answers each
//! connection with a tiny HTTP response and closes it. Runs until killed.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv6Addr, TcpListener},
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

fn main() {
    let mut workers = Vec::new();
    for arg in std::env::args().skip(1) {
        let port: u16 = arg.parse().unwrap_or_else(|_| panic!("not a port: {arg}"));
        // [::] is dual-stack here (net.ipv6.bindv6only=0): one socket serves both families.
        let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
            .unwrap_or_else(|err| panic!("cannot listen on port {port}: {err}"));
        workers.push(thread::spawn(move || serve(&listener)));
    }
    for worker in workers {
        let _ = worker.join();
    }
}
