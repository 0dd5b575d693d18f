//! Packet captures taken beside netwatch: `tcpdump -w` on the watched interface, read back
//! with `tshark`, an independent dissector (Wireshark's, not netwatch's parser).
//!
//! tcpdump's taps see what tc sees on a veth: on egress `dev_queue_xmit_nit` runs after the
//! tc egress hook, on ingress `__netif_receive_skb_core` delivers to taps before tc ingress.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

use crate::lab::{Netns, wait_until};

static MARKERS: AtomicU32 = AtomicU32::new(0);

/// A running `tcpdump -w`; killed on drop.
pub struct Capture {
    child: Option<Child>,
    path: PathBuf,
    stderr: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

/// What tcpdump said when it stopped.
#[derive(Debug)]
pub struct CaptureEnd {
    pub path: PathBuf,
    /// "N packets dropped by kernel": must be 0 for the capture to be complete.
    pub dropped_by_kernel: u64,
    pub stderr: String,
}

impl Capture {
    /// Starts capturing every packet on `iface` in `ns` into `path`, and waits until
    /// tcpdump listens. `--immediate-mode`: packets reach the file as they come, not when a
    /// kernel buffer block fills (or tcpdump would lose the last ones on SIGINT). `-B`: a
    /// 32 MiB ring rather than the default 2 MiB, so a burst while tcpdump waits for a CPU (a
    /// loaded CI machine) is not dropped: a capture that lost packets is no reference.
    #[must_use]
    pub fn start(ns: &Netns, iface: &str, path: &Path) -> Self {
        let mut child = ns
            .command("tcpdump")
            .args([
                "-i",
                iface,
                "-n",
                "--immediate-mode",
                "-U",
                "-B",
                "32768",
                "-w",
            ])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("could not start tcpdump: {err}"));
        let pipe = child.stderr.take().expect("tcpdump stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().expect("tcpdump stderr");
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut capture = Self {
            child: Some(child),
            path: path.to_owned(),
            stderr,
            reader: Some(reader),
        };
        wait_until(Duration::from_secs(10), "tcpdump to listen", || {
            if let Some(Ok(Some(status))) = capture.child.as_mut().map(Child::try_wait) {
                panic!("tcpdump exited ({status}): {}", capture.stderr_text());
            }
            capture.stderr_text().contains("listening on")
        });
        capture
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().expect("tcpdump stderr").clone()
    }

    /// Sends a marker datagram out of the client namespace (UDP to the firewall's discard
    /// port on the client link: no request of any kind netwatch tracks) and waits until it
    /// is in the file: every packet sent before it is then there too.
    pub fn sync(&self, client: &Netns, to: &str) {
        let marker = format!(
            "netwatch-capture-sync-{}-{}",
            std::process::id(),
            MARKERS.fetch_add(1, Ordering::Relaxed)
        );
        let out = client.run(
            "bash",
            &["-c", &format!("printf %s {marker} > /dev/udp/{to}/9")],
        );
        assert!(
            out.status.success(),
            "sending the capture marker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until(
            Duration::from_secs(10),
            "the capture marker in the file",
            || {
                std::fs::read(&self.path).is_ok_and(|bytes| {
                    bytes
                        .windows(marker.len())
                        .any(|window| window == marker.as_bytes())
                })
            },
        );
    }

    /// Stops tcpdump (SIGINT, so it writes its statistics) and waits for it.
    #[must_use]
    pub fn stop(mut self) -> CaptureEnd {
        let mut child = self.child.take().expect("running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let mut status = None;
        wait_until(Duration::from_secs(10), "tcpdump to stop", || {
            status = child.try_wait().expect("wait for tcpdump");
            status.is_some()
        });
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stderr = self.stderr_text();
        let dropped_by_kernel = stderr
            .lines()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no drop count from tcpdump: {stderr}"));
        CaptureEnd {
            path: self.path.clone(),
            dropped_by_kernel,
            stderr,
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One packet as tshark dissected it: for each field asked for, every occurrence, outermost
/// first (so inside an ICMP error, the quoted header's value comes second).
pub type Fields = Vec<Vec<String>>;

/// `tshark -r path -T fields` with `fields`, sequence numbers absolute, every occurrence of
/// each field. `filter` is a display filter (`-Y`).
#[must_use]
pub fn tshark_fields(path: &Path, fields: &[&str], filter: Option<&str>) -> Vec<Fields> {
    let mut command = Command::new("tshark");
    command
        .arg("-r")
        .arg(path)
        .args(["-n", "-o", "tcp.relative_sequence_numbers:FALSE"])
        .args(["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"])
        .args(["-E", "separator=/t"]);
    if let Some(filter) = filter {
        command.args(["-Y", filter]);
    }
    for field in fields {
        command.args(["-e", field]);
    }
    let out = command
        .output()
        .unwrap_or_else(|err| panic!("could not run tshark: {err}"));
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let mut row: Fields = line
                .split('\t')
                .map(|value| {
                    if value.is_empty() {
                        Vec::new()
                    } else {
                        value.split(',').map(str::to_owned).collect()
                    }
                })
                .collect();
            row.resize(fields.len(), Vec::new());
            row
        })
        .collect()
}
