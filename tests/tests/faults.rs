//! Faults: SIGKILL, SIGTERM and SIGINT at random moments of a lab run with traffic flowing,
//! over and over (during load, attach, the first sweeps and steady state). After each,
//! nothing of netwatch stays in the kernel (tcx links, programs, clsact filters), and the
//! next start works.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use netwatch_tests::{
    lab::{
        CLIENT_IFACE, DNS_V4, Lab, SERVER_V4, bpf_objects_back_to, netwatch_binary,
        netwatch_bpf_objects, wait_until,
    },
    prerequisites,
    random::{Rng, env_u64, seed},
};

const LISTENER: &str = env!("CARGO_BIN_EXE_lab-listener");

/// netwatch filters on the client interface, both directions. `tc filter show` fails where
/// there is no clsact qdisc (tcx mode): 0 then, and only then.
fn clsact_filters(lab: &Lab) -> usize {
    let qdiscs = lab.client.ok("tc", &["qdisc", "show", "dev", CLIENT_IFACE]);
    if !String::from_utf8_lossy(&qdiscs.stdout).contains("clsact") {
        return 0;
    }
    ["egress", "ingress"]
        .iter()
        .map(|direction| {
            let out = lab
                .client
                .ok("tc", &["filter", "show", "dev", CLIENT_IFACE, direction]);
            String::from_utf8_lossy(&out.stdout)
                .matches("netwatch_")
                .count()
        })
        .sum()
}

/// Waits for `child` to exit, killing it (and failing) after `limit`.
fn wait_exit(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: netwatch did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
fn random_kills_leave_nothing_attached_and_the_next_start_works() {
    if !prerequisites(
        "random_kills_leave_nothing_attached_and_the_next_start_works",
        &["ip", "nft", "bpftool", "tc", "curl", "nc", "dig", "dnsmasq"],
    ) {
        return;
    }
    let kills = env_u64("NETWATCH_KILLS").unwrap_or(50);
    let seed = seed("NETWATCH_FAULTS_SEED");
    eprintln!("faults: seed=0x{seed:x} (NETWATCH_FAULTS_SEED replays it)");
    let mut rng = Rng(seed);

    let mut lab = Lab::new();
    lab.start_listener(LISTENER);
    lab.start_dns();
    // Traffic all along: answered (HTTP), rejected (TCP 9000), dropped (DNS). The shell
    // is the lab's direct child, so dropping the lab kills it (a `timeout` wrapper would die
    // alone and leave the loop running); it also stops by itself after ten minutes.
    let mut traffic = lab.client.command("sh");
    traffic
        .arg("-c")
        .arg(format!(
            "end=$(($(date +%s) + 600)); while [ \"$(date +%s)\" -lt \"$end\" ]; do \
             curl -s -m 1 http://{SERVER_V4}/ >/dev/null; \
             nc -z -w 1 {SERVER_V4} 9000; \
             dig +tries=1 +timeout=1 @{DNS_V4} fault.example >/dev/null; done"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lab.spawn(traffic);

    let before = netwatch_bpf_objects();
    let binary = netwatch_binary();
    let binary = binary.to_string_lossy();
    let signals = [
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
    ];
    let mut by_signal = [0u32; 3];
    let mut restarts_ok = 0;
    // Killed before netwatch said it was watching (loading, verifying, attaching), and in
    // clsact mode.
    let (mut before_watching, mut in_clsact) = (0, 0);
    let started = Instant::now();
    for round in 0..kills {
        let pick = usize::try_from(rng.below(3)).unwrap_or(0);
        let (signal, signal_name) = signals[pick];
        let clsact = rng.below(4) == 0;
        // Half the kills within the first 300 ms: loading, verification, attaching.
        let delay = Duration::from_millis(if rng.below(2) == 0 {
            rng.below(300)
        } else {
            rng.below(1500)
        });
        let what = format!(
            "round {round}: {signal_name} after {delay:?}{}",
            if clsact { " (clsact)" } else { "" }
        );
        let mut args = vec!["--iface", CLIENT_IFACE, "--json", "--timeout", "1s"];
        if clsact {
            args.extend(["--attach", "clsact"]);
        }
        let mut child = lab
            .client
            .command(&binary)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start netwatch");
        std::thread::sleep(delay);
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, signal) };
        let status = wait_exit(&mut child, Duration::from_secs(15), &what);
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        // SIGINT/SIGTERM: a clean exit once the handlers are in (they are installed before
        // anything is attached); killed by the signal itself only before that. Never an
        // error exit, never a panic.
        let clean = status.success();
        let killed_by_it = std::os::unix::process::ExitStatusExt::signal(&status) == Some(signal);
        assert!(clean || killed_by_it, "{what}: exit {status:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        if signal == libc::SIGKILL {
            assert!(killed_by_it, "{what}: {status:?}");
        }
        by_signal[pick] += 1;
        before_watching += u32::from(!stderr.contains("watching"));
        in_clsact += u32::from(clsact);

        // The kernel drops tcx links and programs with their last descriptor. clsact
        // filters hold their programs until removed: after a SIGKILL, the next start does.
        if !(clsact && signal == libc::SIGKILL) {
            wait_until(
                Duration::from_secs(5),
                &format!("{what}: links and programs to go"),
                || bpf_objects_back_to(before),
            );
            assert_eq!(clsact_filters(&lab), 0, "{what}: clsact filters left");
        }

        // The next start works (and removes clsact filters a SIGKILL orphaned).
        let out = lab.client.run(
            &binary,
            &[
                "--iface",
                CLIENT_IFACE,
                "--json",
                "--timeout",
                "1s",
                "--duration",
                "300ms",
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{what}: the next start failed: {stderr}"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.lines().any(|l| l.contains(r#""type":"summary""#)),
            "{what}: the next run reported nothing: {stdout}"
        );
        assert_eq!(
            clsact_filters(&lab),
            0,
            "{what}: filters after the next run"
        );
        wait_until(
            Duration::from_secs(5),
            &format!("{what}: the next run's links to go"),
            || bpf_objects_back_to(before),
        );
        restarts_ok += 1;
    }
    let left = netwatch_bpf_objects();
    assert!(
        left.0 <= before.0 && left.1 <= before.1,
        "nothing left attached: {left:?}, before {before:?}"
    );
    // Kills that all land before netwatch attached anything would test loading alone:
    // about two rounds in five come after it (on a slow machine, fewer).
    let after_watching = kills - u64::from(before_watching);
    assert!(
        after_watching >= kills / 8,
        "only {after_watching} of {kills} kills came after netwatch was watching \
         (seed 0x{seed:x}): a running netwatch was hardly killed"
    );
    let [sigkill, sigterm, sigint] = by_signal;
    println!(
        "faults: seed=0x{seed:x} kills={kills} (sigkill={sigkill} sigterm={sigterm} sigint={sigint}) \
         of them {before_watching} before attaching and {in_clsact} in clsact mode; left_attached={left:?} (before {before:?}) \
         restarts_ok={restarts_ok} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
