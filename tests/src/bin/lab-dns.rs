//! A DNS responder for the trust tests: answers every A query for any name with
//! 198.51.100.10 after a fixed delay, and never answers a name whose first label starts with
//! `lost`. Runs inside the lab's server namespace until killed.
//!
//! ```text
//! lab-dns DELAY_MS ADDR...     one UDP socket on ADDR:53 each (replies leave from ADDR)
//! ```

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    thread,
    time::Duration,
};

/// The answer's address.
const ANSWER: [u8; 4] = [198, 51, 100, 10];

/// The question of a query (`qname` labels, type, class) and where it ends, or `None` when
/// it is not a query this responder understands.
fn question(query: &[u8]) -> Option<(String, u16, usize)> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    // At most 128 labels: a name is at most 255 bytes.
    for _ in 0..128 {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            let qtype = u16::from_be_bytes([*query.get(at + 1)?, *query.get(at + 2)?]);
            query.get(at + 4)?;
            return Some((labels.join("."), qtype, at + 5));
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at + 1..at + 1 + len)?).into_owned());
        at += 1 + len;
    }
    None
}

/// The response to `query`: same id and question, one A record for type A, none otherwise.
fn response(query: &[u8], qtype: u16, question_end: usize) -> Vec<u8> {
    let rd = query[2] & 0x01;
    let answers: u16 = u16::from(qtype == 1);
    let mut out = vec![query[0], query[1], 0x84 | rd, 0x80, 0, 1];
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..question_end]);
    if answers == 1 {
        // Name: a pointer to the question's name; A, IN, TTL 60, 4 bytes.
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        out.extend_from_slice(&ANSWER);
    }
    out
}

fn serve(socket: &UdpSocket, delay: Duration) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let query = &buf[..len];
        let Some((name, qtype, end)) = question(query) else {
            continue;
        };
        if name.starts_with("lost") {
            continue;
        }
        let reply = response(query, qtype, end);
        let socket = socket.try_clone().expect("clone socket");
        thread::spawn(move || {
            thread::sleep(delay);
            let _ = socket.send_to(&reply, from);
        });
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let delay: u64 = args
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("usage: lab-dns DELAY_MS ADDR..."));
    let delay = Duration::from_millis(delay);
    let mut workers = Vec::new();
    for address in args {
        let ip: IpAddr = address
            .parse()
            .unwrap_or_else(|_| panic!("not an address: {address}"));
        let socket = UdpSocket::bind(SocketAddr::new(ip, 53))
            .unwrap_or_else(|err| panic!("cannot bind {address}:53: {err}"));
        workers.push(thread::spawn(move || serve(&socket, delay)));
    }
    for worker in workers {
        let _ = worker.join();
    }
}
