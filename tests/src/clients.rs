//! The lab's real clients (dig, curl, nc, ping), their argument lists in one place.
//!
//! Every client is bounded by its own timeout, so a dropped request never hangs a test.
//! Build one, optionally pin it to a CPU, then run it (waiting) or spawn it in a namespace:
//!
//! ```no_run
//! # use netwatch_tests::{clients::Client, lab::Lab};
//! # let lab = Lab::new();
//! Client::dig("198.51.100.53", "chat.example").pinned(1).run(&lab.client);
//! ```

use std::{
    io::Read as _,
    process::{Child, Command, Output, Stdio},
};

use crate::lab::Netns;

/// A client command line: a program and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    program: String,
    args: Vec<String>,
}

impl Client {
    fn new(program: &str, args: &[&str]) -> Self {
        Self {
            program: program.to_owned(),
            args: args.iter().map(|&a| a.to_owned()).collect(),
        }
    }

    /// One DNS query over UDP, one try, a 1 s wait for the answer.
    #[must_use]
    pub fn dig(server: &str, name: &str) -> Self {
        Self::new(
            "dig",
            &["+tries=1", "+timeout=1", &format!("@{server}"), name],
        )
    }

    /// One DNS query over UDP, one try, waiting up to `timeout_s` for the answer.
    #[must_use]
    pub fn dig_waiting(server: &str, name: &str, timeout_s: u32) -> Self {
        Self::new(
            "dig",
            &[
                "+tries=1",
                &format!("+timeout={timeout_s}"),
                &format!("@{server}"),
                name,
            ],
        )
    }

    /// One DNS query over TCP (a connection to port 53), one try.
    #[must_use]
    pub fn dig_tcp(server: &str, name: &str) -> Self {
        Self::dig_tcp_waiting(server, name, 1)
    }

    /// One DNS query over TCP, one try, waiting up to `timeout_s` (a dropped SYN is sent
    /// again after 1 s, so a longer wait sees retransmits).
    #[must_use]
    pub fn dig_tcp_waiting(server: &str, name: &str, timeout_s: u32) -> Self {
        Self::new(
            "dig",
            &[
                "+tcp",
                "+tries=1",
                &format!("+timeout={timeout_s}"),
                &format!("@{server}"),
                name,
            ],
        )
    }

    /// The same client with `arg` added at the end (a dig query type, say).
    #[must_use]
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// An HTTP GET of `http://ADDR:PORT/` (IPv6 addresses bracketed), 3 s at most.
    #[must_use]
    pub fn curl(address: &str, port: u16) -> Self {
        Self::new(
            "curl",
            &["-s", "-o", "/dev/null", "-m", "3", &url(address, port)],
        )
    }

    /// An HTTP POST of `data` with TCP Fast Open (`curl --tcp-fastopen`): with a cookie
    /// from an earlier connection, the data leaves in the SYN.
    #[must_use]
    pub fn curl_fast_open(address: &str, port: u16, data: &str) -> Self {
        Self::new(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "3",
                "--tcp-fastopen",
                "-d",
                data,
                &url(address, port),
            ],
        )
    }

    /// A TCP connect (`nc -z`), giving up after `wait_s`.
    #[must_use]
    pub fn nc(address: &str, port: u16, wait_s: u32) -> Self {
        Self::new(
            "nc",
            &["-z", "-w", &wait_s.to_string(), address, &port.to_string()],
        )
    }

    /// One UDP datagram (`nc -u -z`), giving up after `wait_s`.
    #[must_use]
    pub fn nc_udp(address: &str, port: u16, wait_s: u32) -> Self {
        Self::new(
            "nc",
            &[
                "-u",
                "-z",
                "-w",
                &wait_s.to_string(),
                address,
                &port.to_string(),
            ],
        )
    }

    /// `count` ICMP or `ICMPv6` echo requests 200 ms apart, waiting at most 1 s for the last
    /// answer. IPv6 is told by the address.
    #[must_use]
    pub fn ping(address: &str, count: u32) -> Self {
        let family = if address.contains(':') { "-6" } else { "-4" };
        Self::new(
            "ping",
            &[
                family,
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                address,
            ],
        )
    }

    /// `count` echo requests to a broadcast address (`ping -b`), out of `iface`.
    #[must_use]
    pub fn ping_broadcast(address: &str, iface: &str, count: u32) -> Self {
        Self::new(
            "ping",
            &[
                "-4",
                "-b",
                "-I",
                iface,
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                address,
            ],
        )
    }

    /// `dns-stream` (this crate's binary at `binary`): `queries` (`ID:NAME`) to `server`
    /// from the fixed source `port`, one after the other, each answer awaited `wait_ms`.
    #[must_use]
    pub fn dns_stream(
        binary: &str,
        server: &str,
        port: u16,
        wait_ms: u64,
        queries: &[String],
    ) -> Self {
        let mut client = Self::new(binary, &[server, &port.to_string(), &wait_ms.to_string()]);
        client.args.extend(queries.iter().cloned());
        client
    }

    /// Runs the same client on CPU `cpu` only (`taskset -c`).
    #[must_use]
    pub fn pinned(self, cpu: u32) -> Self {
        let mut args = vec!["-c".to_owned(), cpu.to_string(), self.program];
        args.extend(self.args);
        Self {
            program: "taskset".to_owned(),
            args,
        }
    }

    /// The command line, for messages.
    #[must_use]
    pub fn line(&self) -> String {
        format!("{} {}", self.program, self.args.join(" "))
    }

    /// The command, to run inside `ns`, its output discarded.
    #[must_use]
    pub fn command(&self, ns: &Netns) -> Command {
        let mut command = ns.command(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// Runs it in `ns` and waits. Its own success does not matter (blocked requests fail),
    /// only that it ran to its end rather than being killed.
    pub fn run(&self, ns: &Netns) -> Output {
        let out = ns.run(
            &self.program,
            &self.args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(
            out.status.code().is_some(),
            "`{}` was killed: {}",
            self.line(),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// `http://ADDR:PORT/`, with IPv6 addresses in brackets.
#[must_use]
pub fn url(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("http://[{address}]:{port}/")
    } else {
        format!("http://{address}:{port}/")
    }
}

/// Runs every client at once in `ns`, waits for them all (each is bounded by its own
/// timeout) and returns their outputs in order. Any still running when this panics are
/// killed.
#[expect(
    clippy::must_use_candidate,
    reason = "most callers only need the clients to have run"
)]
pub fn run_together(ns: &Netns, clients: &[Client]) -> Vec<Output> {
    struct Running(Vec<(String, Child)>);
    impl Drop for Running {
        fn drop(&mut self) {
            for (_, child) in &mut self.0 {
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
    let mut running = Running(Vec::with_capacity(clients.len()));
    for client in clients {
        let child = client
            .command(ns)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("could not start `{}`: {err}", client.line()));
        running.0.push((client.line(), child));
    }
    let mut outputs = Vec::with_capacity(clients.len());
    for (line, child) in &mut running.0 {
        let mut stdout = Vec::new();
        if let Some(mut pipe) = child.stdout.take() {
            // Bounded: the client ends by its own timeout, and EOF comes with it.
            let _ = pipe.read_to_end(&mut stdout);
        }
        let status = child.wait().expect("wait for a client");
        assert!(status.code().is_some(), "`{line}` was killed: {status}");
        outputs.push(Output {
            status,
            stdout,
            stderr: Vec::new(),
        });
    }
    outputs
}
