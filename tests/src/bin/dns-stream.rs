//! A query stream from one fixed source port, like a forwarder's: each query is sent, then
//! its answer (same id) awaited for at most `WAIT_MS` before the next one goes. Prints one
//! line per query: `answered ID NAME` or `lost ID NAME`.
//!
//! ```text
//! dns-stream SERVER LOCAL_PORT WAIT_MS ID:NAME...
//! ```

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    // RD, one question.
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(u8::try_from(label.len()).expect("label of at most 63 bytes"));
        out.extend_from_slice(label.as_bytes());
    }
    // Root, type A, class IN.
    out.extend_from_slice(&[0, 0, 1, 0, 1]);
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, port, wait, queries @ ..] = &args[..] else {
        eprintln!("usage: dns-stream SERVER LOCAL_PORT WAIT_MS ID:NAME...");
        std::process::exit(2);
    };
    let server: IpAddr = server.parse().expect("SERVER");
    let port: u16 = port.parse().expect("LOCAL_PORT");
    let wait = Duration::from_millis(wait.parse().expect("WAIT_MS"));
    let local = if server.is_ipv4() {
        SocketAddr::new([0, 0, 0, 0].into(), port)
    } else {
        SocketAddr::new([0u16; 8].into(), port)
    };
    let socket = UdpSocket::bind(local).expect("bind the fixed port");
    socket.connect((server, 53)).expect("connect");
    for spec in queries {
        let (id, name) = spec.split_once(':').expect("ID:NAME");
        let id: u16 = id.parse().expect("ID");
        socket.send(&query(id, name)).expect("send");
        let start = Instant::now();
        let mut answered = false;
        let mut buf = [0u8; 1500];
        while let Some(left) = wait.checked_sub(start.elapsed()) {
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left)).expect("timeout");
            match socket.recv(&mut buf) {
                Ok(len) if len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                    answered = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        println!("{} {id} {name}", if answered { "answered" } else { "lost" });
    }
}
