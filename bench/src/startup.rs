//! How long netwatch takes to start: from the command to its "watching" line, round after
//! round on the lab's client interface (`--json`, on the monitor CPU). In that time it reads
//! the kernel's BTF (in a child process), loads its programs (the verifier's time), attaches
//! them and its socket owner programs: what an operator waits for at every start and every
//! restart of the service, and what each of the test suites' many runs costs (seconds under
//! the kernel matrix's emulation). The launch through `ip netns exec` and `taskset` is
//! included (a few ms).

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::{
    labkit::{BenchLab, Tools},
    stats::Figure,
};

/// How long a start may take before the section gives up: far above any seen (about 0.5 s
/// here, a few seconds under emulation).
const BOUND: Duration = Duration::from_mins(1);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartupResults {
    /// Milliseconds from the command to "watching", per round.
    pub ms: Vec<f64>,
}

impl StartupResults {
    #[must_use]
    pub fn figure(&self) -> Option<Figure> {
        Figure::of(&self.ms)
    }
}

pub fn run(
    tools: &Tools,
    rounds: usize,
    progress: &dyn Fn(&str),
) -> anyhow::Result<StartupResults> {
    let lab = BenchLab::new()?;
    let sender = lab.sender(tools);
    progress(&format!(
        "startup: {rounds} starts of netwatch, each to its \"watching\" line"
    ));
    let mut ms = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut command = sender.netwatch_command(&[]);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command.spawn().context("starting netwatch")?;
        let watching = watching_within(&mut child, BOUND);
        let elapsed = started.elapsed();
        // Stopped either way; a start that failed is the error to tell, not its exit status.
        let stopped = stop(&mut child);
        watching?;
        stopped?;
        ms.push(elapsed.as_secs_f64() * 1e3);
    }
    Ok(StartupResults { ms })
}

/// Waits for `child`'s "watching" line on its stderr, at most `bound`; its other lines make
/// the error when it exits or stays silent.
fn watching_within(child: &mut Child, bound: Duration) -> anyhow::Result<()> {
    let stderr = child.stderr.take().context("netwatch's stderr")?;
    let (lines, received) = mpsc::channel();
    // Ends at netwatch's exit (its stderr closes).
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + bound;
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) if line.contains("watching") => return Ok(()),
            Ok(line) => said.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("netwatch exited before watching: {}", said.join(" / "))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!(
                    "netwatch did not start watching within {bound:?}: {}",
                    said.join(" / ")
                )
            }
        }
    }
}

/// Stops netwatch (SIGTERM) and waits for it; an error when it does not exit cleanly.
fn stop(child: &mut Child) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).context("netwatch's pid")?;
    // SAFETY: kill only sends a signal, to the child this process spawned and has not reaped.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = child.wait().context("waiting for netwatch")?;
    if !status.success() {
        bail!("netwatch exited with {status} when stopped");
    }
    Ok(())
}
