//! The run loop: poll the kernel tables, feed the tracker, hand changes to the output, until
//! a signal or `--duration` ends it. Then a last poll, the exit records, and detach.

use std::{
    io,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    attribution::{Attribution, Host, host::RealHost},
    cli::{Args, AttachMode},
    clock, diagnosis,
    firewall::{self, Firewall},
    interfaces::{self, LinkState},
    output::{Mode, Output, View},
    privileges,
    probe::{Classifiers, KernelTables, Owners, Probe, ProbeError},
    report::{RunInfo, WatchedInterface, tui::Action},
    serve,
    snapshot::{Snapshot, TargetView},
    sweep::{SweepPolicy, Sweeper},
    target::{Direction, Target},
    tracker::Tracker,
    verdict::Verdict,
};

/// How often the kernel tables are read. Unanswered requests are found at most this long
/// after their timeout.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// `CLOCK_MONOTONIC` in nanoseconds as `bpf_ktime_get_ns()` reads it (time namespaces
/// corrected for).
pub use crate::clock::monotonic_ns;

/// One poll: counters first (so every expired request's target is known), then the pending
/// sweep, then the kernel's loss counters; returns the verdict changes.
pub fn poll(
    kernel: &mut dyn KernelTables,
    tracker: &mut Tracker,
    sweeper: &mut Sweeper,
    now_ns: u64,
) -> Result<Vec<TargetView>, ProbeError> {
    poll_with(kernel, tracker, sweeper, None, now_ns)
}

/// The join of requests to the processes behind them, and the host it reads.
pub struct Attributing<'a> {
    pub attribution: &'a mut Attribution,
    pub host: &'a mut dyn Host,
}

/// [`poll`], naming the processes behind the requests in the pending table when
/// `attributing` is given.
pub fn poll_with(
    kernel: &mut dyn KernelTables,
    tracker: &mut Tracker,
    sweeper: &mut Sweeper,
    mut attributing: Option<&mut Attributing<'_>>,
    now_ns: u64,
) -> Result<Vec<TargetView>, ProbeError> {
    kernel.read_targets(&mut |key, counters| {
        tracker.observe_counters(now_ns, key, counters);
        if let Some(attributing) = attributing.as_deref_mut() {
            attributing
                .attribution
                .observe_latest(key, counters.last_socket_cookie);
        }
    })?;
    for (key, reason, count) in kernel.read_local_drops()? {
        tracker.observe_local_drops(now_ns, &key, reason, count);
    }
    if sweeper.due() {
        let mut entries = sweeper.table_buffer();
        kernel.read_pending_into(&mut entries)?;
        if let Some(attributing) = attributing.as_deref_mut() {
            let found = attributing.attribution.attribute(
                &mut Owners(kernel),
                attributing.host,
                &entries,
                now_ns,
            );
            for (target, process) in found {
                tracker.observe_process(&target, process);
            }
        }
        let swept = sweeper.sweep(now_ns, entries.drain(..));
        sweeper.keep_table_buffer(entries);
        for (key, request) in &swept.unanswered {
            tracker.observe_unanswered(now_ns, key, request);
        }
        tracker.observe_in_flight(&swept.in_flight_by_target);
        kernel.remove_pending_all(&swept.remove)?;
    }
    // Each target's latest request last: its process is the most recent.
    if let Some(attributing) = attributing {
        let found =
            attributing
                .attribution
                .attribute_latest(&mut Owners(kernel), attributing.host, now_ns);
        for (target, process) in found {
            tracker.observe_process(&target, process);
        }
    }
    let connections = kernel.read_retransmits()?;
    if !connections.is_empty() {
        let probing = kernel.mtu_probing();
        let forget =
            tracker.observe_retransmits(now_ns, &connections, |c| kernel.acked_since(c), probing);
        kernel.forget_retransmits(&forget);
    }
    let (in_flight, tombstones) = sweeper.last_counts();
    tracker.observe_kernel(kernel.read_counters()?, in_flight, tombstones);
    Ok(tracker.judge(now_ns))
}

/// Follows the watched interfaces: one that went away is forgotten (the kernel dropped its
/// attachment with it) and attached again when it comes back; down and up are reported.
/// Returns the interfaces whose state changed.
fn reconcile(
    probe: &mut Probe,
    watched: &mut [WatchedInterface],
    mode: AttachMode,
) -> Vec<WatchedInterface> {
    let mut changed = Vec::new();
    for interface in watched.iter_mut() {
        let now = interfaces::probe_link(&interface.name);
        let attached_at = probe.attached_index(&interface.name);
        let state = match now {
            None => {
                if attached_at.is_some() {
                    probe.forget(&interface.name);
                }
                LinkState::Gone
            }
            Some((index, state)) if attached_at == Some(index) => state,
            Some((index, state)) => {
                // New, or re-created under a new index: attach (again), as what it is now.
                probe.forget(&interface.name);
                let attached = interfaces::lookup(&interface.name)
                    .map_err(|err| err.to_string())
                    .and_then(|link| {
                        let via = probe.attach(&link, mode).map_err(|err| err.to_string())?;
                        Ok((link, via))
                    });
                match attached {
                    Ok((link, via)) if link.index == index => {
                        interface.attach = via.as_str();
                        interface.kind = link.kind.name();
                        state
                    }
                    // Re-created again in between: the next poll attaches to the new one.
                    Ok(_) => LinkState::Gone,
                    Err(err) => {
                        log::warn!("{err}; retrying");
                        LinkState::Gone
                    }
                }
            }
        };
        if state != interface.state {
            interface.state = state;
            changed.push(interface.clone());
        }
    }
    changed
}

/// How a run that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Normal,
    /// A target ended with a verdict named by `--fail-on` (exit status 3).
    FailOnMatched,
}

/// Every address of this host, on any interface: a request arriving on a watched interface
/// may be for an address on another (policy routing, a service address on `lo`).
fn all_host_addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.ip())
        .collect()
}

/// The host's own addresses on the watched interfaces, global ones first: the source of
/// the firewall requests the diagnosis writes.
fn host_addresses(watched: &[WatchedInterface]) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| watched.iter().any(|w| w.name == a.name))
        .map(|a| a.ip())
        .collect();
    addresses.sort_by_key(|ip| match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_unicast_link_local() || v6.is_loopback(),
    });
    addresses
}

/// Runs netwatch until a signal, `q`, or the end of `--duration`.
#[expect(
    clippy::too_many_lines,
    reason = "the run loop reads best as one select! over its event sources"
)]
pub async fn run(args: Args) -> anyhow::Result<Ending> {
    // Signals first: a Ctrl-C during attach must still detach cleanly.
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;

    privileges::require()?;
    // Before anything is attached: an unusable time namespace offset stops here.
    clock::check()?;
    let interfaces = interfaces::resolve(&args.iface)?;
    let mut probe = Probe::load_with(args.timeout, Classifiers::for_interfaces(&interfaces))?;
    probe.watch_udp_ports(&args.udp_port)?;
    // Before attaching: the first requests arriving must already be recognised.
    probe.set_local_addresses(all_host_addresses())?;
    // Said once everything else is up: a run that then fails (an interface, the metrics
    // port) stays one line, whatever this kernel lacks.
    let drops_unavailable = probe.attach_drops().err();
    let stalls_unavailable = probe.attach_retransmits().err();
    let cgroup2 = std::fs::read_to_string("/proc/mounts")
        .ok()
        .and_then(|mounts| crate::attribution::host::cgroup2_mount(&mounts));
    let attribution_unavailable = probe.attach_owners(cgroup2.as_deref()).err();
    // While every capability is there: the announcements need CAP_NET_ADMIN to listen.
    let mut firewall = Firewall::start(args.trace_rules);
    let mut host = RealHost::new(cgroup2);
    let mut attribution = Attribution::new();
    if attribution_unavailable.is_none() {
        attribution.prime(&mut host, monotonic_ns());
    }
    let mut watched = Vec::new();
    for iface in &interfaces {
        let via = probe.attach(iface, args.attach)?;
        let state = interfaces::probe_link(&iface.name).map_or(LinkState::Gone, |(_, state)| state);
        watched.push(WatchedInterface {
            name: iface.name.clone(),
            kind: iface.kind.name(),
            attach: via.as_str(),
            state,
        });
    }
    let started = Instant::now();
    let mut run = RunInfo {
        interfaces: watched,
        uptime: Duration::ZERO,
        timeout: args.timeout,
        window: args.window,
        local_drops: probe.local_drops_status(),
        attribution: probe.attribution_status(),
        path_mtu: probe.path_mtu_status(),
        fragments: probe.fragments_status(),
        ruleset: firewall.ruleset_status.clone(),
        trace_rules: firewall.trace_status.clone(),
    };
    // Listening sockets are bound before privileges go.
    let published: Option<serve::Shared> = match args.metrics {
        Some(addr) => {
            let shared = Arc::new(Mutex::new(serve::Published {
                snapshot: Snapshot::default(),
                run: run.clone(),
            }));
            let bound = serve::start(addr, Arc::clone(&shared)).await?;
            eprintln!("netwatch: metrics at http://{bound}/metrics");
            Some(shared)
        }
        None => None,
    };
    // The probe: one read of the kernel's counters, as every poll makes.
    let mut bpf_call = || {
        privileges::BpfProbe::from_result(
            probe
                .read_counters()
                .map(drop)
                .map_err(|err| map_errno(&err)),
        )
    };
    if let Err(err) = privileges::drop_after_attach(&mut bpf_call) {
        log::warn!("could not drop capabilities after attaching: {err}");
    }
    let names: Vec<String> = run.interfaces.iter().map(WatchedInterface::label).collect();
    if let Some(why) = &drops_unavailable {
        eprintln!("netwatch: drops on this host are not counted: {why}");
    }
    if let Some(why) = run.fragments.strip_prefix("unavailable: ")
        && drops_unavailable.is_none()
    {
        eprintln!("netwatch: DNS answers lost to fragments count as answered: {why}");
    }
    if let Some(why) = &stalls_unavailable {
        eprintln!("netwatch: connections that stall after the handshake are not followed: {why}");
    }
    if let Some(why) = &attribution_unavailable {
        eprintln!("netwatch: processes behind requests are not named: {why}");
    }
    for note in firewall.take_notes() {
        eprintln!("netwatch: {note}");
    }
    let mut attributing = attribution_unavailable.is_none().then_some(Attributing {
        attribution: &mut attribution,
        host: &mut host,
    });
    eprintln!("netwatch: watching {}; Ctrl-C to stop", names.join(", "));

    let timeout_ns = u64::try_from(args.timeout.as_nanos()).unwrap_or(u64::MAX);
    let mut sweeper = Sweeper::new(SweepPolicy {
        timeout_ns,
        capacity: probe.pending_capacity(),
    });
    let mut tracker = Tracker::new(args.window)
        .with_blackhole_grace(args.timeout)
        .with_drop_reasons(probe.drop_reasons())
        .with_rules_traced(firewall.tracing());
    let mut sources = host_addresses(&run.interfaces);
    let mut output =
        Output::new(Mode::choose(args.json, args.plain)).context("setting up the terminal")?;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stop_at = args
        .duration
        .map(|d| tokio::time::Instant::from_std(started + d));
    let until_stop = async {
        match stop_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_stop);

    let mut polls: u64 = 0;
    let mut stdout_open = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let moved = reconcile(&mut probe, &mut run.interfaces, args.attach);
                polls += 1;
                if !moved.is_empty() || polls.is_multiple_of(20) {
                    sources = host_addresses(&run.interfaces);
                    probe.set_local_addresses(all_host_addresses())?;
                }
                let now_ns = monotonic_ns();
                if polls.is_multiple_of(20) {
                    firewall.check_legacy();
                }
                let records = follow_firewall(&mut firewall, &mut tracker, now_ns);
                let changes = poll_with(&mut probe, &mut tracker, &mut sweeper, attributing.as_mut(), now_ns)?;
                run.uptime = started.elapsed();
                let snapshot = tracker.snapshot(now_ns);
                firewall.trace(firewall::trace::wanted(snapshot.targets.iter().map(|t| (target_of(t), dropped_here(t)))));
                let findings = diagnosis::diagnose(&snapshot, &sources, args.timeout);
                if output.is_plain_or_json() {
                    for note in firewall.take_notes() {
                        eprintln!("netwatch: {note}");
                    }
                }
                let written = output.ruleset(&records).and_then(|()| output.interfaces_changed(&moved)).and_then(|()| {
                    output.on_poll(&View { changes: &changes, snapshot: &snapshot, findings: &findings, run: &run })
                });
                publish(published.as_ref(), snapshot, &run);
                if let Err(err) = written {
                    stdout_open = closed_stdout(err)?;
                    break;
                }
            }
            () = firewall.readable() => firewall.drain(monotonic_ns()),
            action = output.next_action() => match action {
                Action::Quit => break,
                Action::Redraw => output.redraw().context("drawing the terminal")?,
                Action::Nothing => {}
            },
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            () = &mut until_stop => break,
        }
    }

    // A last look, so the exit records count everything seen until now.
    let now_ns = monotonic_ns();
    let records = follow_firewall(&mut firewall, &mut tracker, now_ns);
    let changes = poll_with(
        &mut probe,
        &mut tracker,
        &mut sweeper,
        attributing.as_mut(),
        now_ns,
    )?;
    run.uptime = started.elapsed();
    let snapshot = tracker.snapshot(now_ns);
    let findings = diagnosis::diagnose(&snapshot, &sources, args.timeout);
    let view = View {
        changes: &changes,
        snapshot: &snapshot,
        findings: &findings,
        run: &run,
    };
    if stdout_open {
        let written = output
            .ruleset(&records)
            .and_then(|()| output.on_poll(&view))
            .and_then(|()| output.finish(&view));
        if let Err(err) = written {
            closed_stdout(err)?;
        }
    } else {
        drop(output);
    }
    probe.detach_all();
    // The trace table goes now, not after the exit status is worked out.
    drop(firewall);
    // Requests this host sent only: on a host open to the internet, a scanner knocking on a
    // port the input chain drops would make every run "fail" (the inbound findings say so).
    let matched = snapshot.targets.iter().any(|target| {
        target.direction == Direction::Egress && args.fail_on.contains(&target.verdict)
    });
    Ok(if matched {
        Ending::FailOnMatched
    } else {
        Ending::Normal
    })
}

/// Reads what the ruleset announced and what was traced, at `now_ns`, into the tracker;
/// returns the `ruleset` records due.
fn follow_firewall(
    firewall: &mut Firewall,
    tracker: &mut Tracker,
    now_ns: u64,
) -> Vec<firewall::changes::RulesetRecord> {
    tracker.observe_wall_clock(now_ns, SystemTime::now());
    firewall.drain(now_ns);
    let records = firewall.flush(now_ns);
    for record in &records {
        tracker.observe_ruleset_change(
            record.at_ns,
            record.generation,
            record.describe(),
            record.total_changes(),
        );
    }
    for (target, drop) in firewall.take_drops() {
        tracker.observe_rule_drop(&target.key(), drop);
    }
    records
}

fn target_of(t: &TargetView) -> Target {
    Target {
        direction: t.direction,
        proto: t.proto,
        remote: t.remote,
        port: t.port,
    }
}

/// Whether this host drops packets of `t` and it fails (or is still pending): worth tracing.
fn dropped_here(t: &TargetView) -> bool {
    t.verdict != Verdict::Ok && !t.local_drops.is_empty()
}

/// The errno of a failed map read, when a syscall failed.
fn map_errno(err: &ProbeError) -> Option<i32> {
    match err {
        ProbeError::Map {
            source: aya::maps::MapError::SyscallError(err),
            ..
        } => err.io_error.raw_os_error(),
        _ => None,
    }
}

fn publish(shared: Option<&serve::Shared>, snapshot: Snapshot, run: &RunInfo) {
    if let Some(shared) = shared {
        let mut published = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        published.snapshot = snapshot;
        published.run = run.clone();
    }
}

/// A reader that went away (`netwatch --json | head`) ends the run normally; any other
/// write error is an error.
fn closed_stdout(err: io::Error) -> anyhow::Result<bool> {
    if err.kind() == io::ErrorKind::BrokenPipe {
        Ok(false)
    } else {
        Err(err).context("writing to stdout")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use netwatch_common::{
        KernelCounter, PendingRequest, RequestKey, TargetCounters, TargetKey, proto,
    };

    use super::*;
    use crate::{
        target::{Proto, ip_to_key, target_key},
        tracker::zero_counters,
        verdict::Verdict,
    };

    const S: u64 = 1_000_000_000;

    /// The kernel's tables as plain maps.
    #[derive(Default)]
    struct FakeKernel {
        targets: HashMap<TargetKey, TargetCounters>,
        pending: HashMap<RequestKey, PendingRequest>,
        counters: [u64; KernelCounter::COUNT],
        removed: Vec<RequestKey>,
    }

    impl KernelTables for FakeKernel {
        fn read_targets(
            &mut self,
            each: &mut dyn FnMut(&TargetKey, &TargetCounters),
        ) -> Result<(), ProbeError> {
            self.targets.iter().for_each(|(k, v)| each(k, v));
            Ok(())
        }
        fn read_pending_into(
            &mut self,
            entries: &mut Vec<(RequestKey, PendingRequest)>,
        ) -> Result<(), ProbeError> {
            entries.clear();
            entries.extend(self.pending.iter().map(|(k, v)| (*k, *v)));
            Ok(())
        }
        fn remove_pending(&mut self, key: &RequestKey) -> Result<(), ProbeError> {
            self.pending.remove(key);
            self.removed.push(*key);
            Ok(())
        }
        fn read_counters(&mut self) -> Result<[u64; KernelCounter::COUNT], ProbeError> {
            Ok(self.counters)
        }
    }

    fn syn(port: u16, sent_ns: u64) -> (RequestKey, PendingRequest) {
        let key = RequestKey {
            remote: ip_to_key("198.51.100.10".parse().unwrap()),
            local: ip_to_key("203.0.113.2".parse().unwrap()),
            remote_port: 5432,
            local_port: port,
            tag: 0,
            proto: proto::TCP,
            direction: netwatch_common::DIRECTION_EGRESS,
        };
        let mut pending = PendingRequest::sent_at(sent_ns);
        pending.tcp_seq = 7;
        pending.ifindex = 2;
        (key, pending)
    }

    #[test]
    fn polls_turn_kernel_state_into_verdicts() {
        let target = target_key(Proto::Tcp, "198.51.100.10".parse().unwrap(), 5432);
        let mut kernel = FakeKernel::default();
        kernel.targets.insert(
            target,
            TargetCounters {
                requests: 2,
                ..zero_counters()
            },
        );
        let (k1, p1) = syn(40_001, S);
        let (k2, p2) = syn(40_002, 2 * S);
        kernel.pending.insert(k1, p1);
        kernel.pending.insert(k2, p2);
        kernel.counters[KernelCounter::PendingFull as usize] = 3;
        let mut tracker = Tracker::new(Duration::from_mins(1));
        let mut sweeper = Sweeper::new(SweepPolicy {
            timeout_ns: 3 * S,
            capacity: 100,
        });

        let first = poll(&mut kernel, &mut tracker, &mut sweeper, 3 * S).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].verdict, Verdict::Pending);
        assert_eq!(first[0].in_flight, 2);

        let second = poll(&mut kernel, &mut tracker, &mut sweeper, 4 * S + S / 10).unwrap();
        assert_eq!(second[0].verdict, Verdict::Blackholed);
        assert_eq!((second[0].unanswered, second[0].in_flight), (1, 1));

        // The second request is answered: the kernel deletes it and counts it.
        kernel.pending.remove(&k2);
        kernel.targets.insert(
            target,
            TargetCounters {
                requests: 2,
                answered: 1,
                ..zero_counters()
            },
        );
        let third = poll(&mut kernel, &mut tracker, &mut sweeper, 5 * S + S / 10).unwrap();
        assert_eq!(third[0].verdict, Verdict::Degraded);
        assert_eq!(
            (third[0].answered, third[0].unanswered, third[0].in_flight),
            (1, 1, 0)
        );

        let snapshot = tracker.snapshot(5 * S);
        assert_eq!(snapshot.kernel.lost_requests, 3);
        assert_eq!(
            snapshot.tombstones, 1,
            "the unanswered SYN stays for its retransmits"
        );
        assert!(kernel.removed.is_empty());
    }
}
