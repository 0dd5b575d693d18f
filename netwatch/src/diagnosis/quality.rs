//! IPv6 broken where IPv4 works, answers slower than the timeout, partial loss.

use super::{
    BTreeSet, Duration, Finding, IPV6_BROKEN, LATE, MAX_TIMEOUT_S, PARTIAL_LOSS, Proto,
    SLOW_ANSWERS, TargetView, Verdict, answers, count, fails, identity, label, list,
    never_answered, remotes, service,
};

/// The service of `t` with `icmpv6` spelled as `icmp`: what an IPv6 target and its IPv4
/// counterpart have in common.
pub(super) fn family_free_service(t: &TargetView) -> (Proto, Option<u16>) {
    let proto = if t.proto == Proto::Icmpv6 {
        Proto::Icmp
    } else {
        t.proto
    };
    (proto, t.port)
}

/// IPv6 is only blamed where IPv4 shows the same service works: an IPv6 target that fails
/// exactly like its IPv4 counterpart (DNS blocked on both) says nothing about IPv6.
pub(super) fn ipv6_finding(judged: &[&TargetView], findings: &mut Vec<Finding>) {
    if judged.iter().any(|t| t.remote.is_ipv6() && answers(t)) {
        return;
    }
    let v4_ok: Vec<&TargetView> = judged
        .iter()
        .copied()
        .filter(|t| t.remote.is_ipv4() && t.verdict == Verdict::Ok)
        .collect();
    let mut v6_failing: Vec<&TargetView> = Vec::new();
    let mut counterparts: Vec<&TargetView> = Vec::new();
    for &target in judged.iter().filter(|t| t.remote.is_ipv6() && fails(t)) {
        let service = family_free_service(target);
        let twins: Vec<&TargetView> = v4_ok
            .iter()
            .copied()
            .filter(|t| family_free_service(t) == service)
            .collect();
        if !twins.is_empty() {
            v6_failing.push(target);
            counterparts.extend(twins);
        }
    }
    if v6_failing.is_empty() {
        return;
    }
    // One IPv4 target can be the counterpart of several IPv6 ones.
    counterparts.sort_by_key(|t| identity(t));
    counterparts.dedup_by_key(|t| identity(t));
    let labels: Vec<String> = v6_failing.iter().map(|t| label(t)).collect();
    let services: BTreeSet<String> = counterparts.iter().map(|t| service(t)).collect();
    let services: Vec<String> = services.into_iter().collect();
    let v4_remotes = remotes(&counterparts);
    let summary = format!(
        "IPv6 is broken while IPv4 works: {} ({}) {} while the same {} over IPv4 ({} to {}) \
         {} ok, and no IPv6 target answers; programs that try IPv6 first stall or fall back \
         slowly.",
        count(v6_failing.len() as u64, "IPv6 target", "IPv6 targets"),
        list(&labels),
        if v6_failing.len() == 1 {
            "fails"
        } else {
            "fail"
        },
        if services.len() == 1 {
            "service"
        } else {
            "services"
        },
        list(&services),
        list(&v4_remotes),
        if counterparts.len() == 1 { "is" } else { "are" },
    );
    let mut evidence = v6_failing;
    evidence.extend(counterparts);
    findings.push(Finding::new(IPV6_BROKEN, summary, &evidence, Vec::new()));
}

/// Blackholed too recently to be evidence: a slow remote's late answer may still come.
pub(super) fn is_provisional(t: &TargetView) -> bool {
    t.verdict == Verdict::Blackholed && t.provisional
}

/// Whether `t`'s failures are answers after the timeout: slow, not blocked.
pub(super) fn is_slow(t: &TargetView) -> bool {
    t.verdict == Verdict::Degraded && t.reason == Some(LATE)
}

/// One finding for every slow target: their latency, and a `--timeout` that would have
/// waited for their answers. Late answers mixed with requests never answered stay one
/// slow-answers finding (the unanswered count is in it): with a longer timeout, what is
/// left shows as `partial-loss`.
pub(super) fn slow_answers_finding(
    judged: &[&TargetView],
    timeout: Duration,
    findings: &mut Vec<Finding>,
) {
    let slow: Vec<&TargetView> = judged.iter().copied().filter(|t| is_slow(t)).collect();
    if slow.is_empty() {
        return;
    }
    let items: Vec<String> = slow
        .iter()
        .map(|t| match (t.latency_p50_ms, t.latency_p99_ms) {
            (Some(p50), Some(p99)) => format!(
                "{} (latency p50 {}, p99 {})",
                label(t),
                format_ms(p50),
                format_ms(p99)
            ),
            _ => label(t),
        })
        .collect();
    let late: u64 = slow.iter().map(|t| t.late).sum();
    let mut counts = vec![count(late, "late answer", "late answers")];
    let never: u64 = slow.iter().map(|t| never_answered(t)).sum();
    if never > 0 {
        counts.push(format!(
            "{} never answered",
            count(never, "request", "requests")
        ));
    }
    let rejected: u64 = slow.iter().map(|t| t.rejected).sum();
    if rejected > 0 {
        counts.push(format!("{rejected} rejected"));
    }
    let slowest_p99_ms = slow
        .iter()
        .filter_map(|t| t.latency_p99_ms)
        .fold(None, |max: Option<f64>, p99| {
            Some(max.map_or(p99, |m| m.max(p99)))
        });
    let summary = format!(
        "Answers from {} arrive after the {} timeout ({}): {} slow, not blocked; run with \
         --timeout {}s or more.",
        list(&items),
        humantime::format_duration(timeout),
        counts.join(", "),
        if slow.len() == 1 {
            "the target is"
        } else {
            "the targets are"
        },
        suggested_timeout_s(timeout, slowest_p99_ms),
    );
    findings.push(Finding::new(SLOW_ANSWERS, summary, &slow, Vec::new()));
}

/// A `--timeout` in whole seconds that waits for the slowest answers: 1.5 times the
/// slowest p99 (which includes the late answers), at least twice the current timeout (the
/// p99 can sit below it when few answers are late), at most netwatch's limit.
pub(super) fn suggested_timeout_s(timeout: Duration, slowest_p99_ms: Option<f64>) -> u64 {
    let twice_s = timeout.as_secs_f64() * 2.0;
    let from_p99_s = slowest_p99_ms.map_or(0.0, |ms| ms * 1.5 / 1000.0);
    let seconds = twice_s.max(from_p99_s).ceil();
    if seconds.is_finite() && seconds < f64::from(MAX_TIMEOUT_S) {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive whole number below MAX_TIMEOUT_S"
        )]
        let seconds = seconds as u64;
        seconds.max(1)
    } else {
        u64::from(MAX_TIMEOUT_S)
    }
}

/// `850 ms`, `1.6 s`.
pub(super) fn format_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}

pub(super) fn partial_loss_findings(judged: &[&TargetView], findings: &mut Vec<Finding>) {
    // Slow targets have their own finding: late answers are not loss.
    for &target in judged
        .iter()
        .filter(|t| t.verdict == Verdict::Degraded && !is_slow(t))
    {
        let n = target.requests;
        let never = never_answered(target);
        let mut parts = Vec::new();
        if never > 0 || target.rejected == 0 {
            parts.push(format!(
                "{never} of {} unanswered",
                count(n, "request", "requests")
            ));
        }
        if target.rejected > 0 {
            let rejected = if parts.is_empty() {
                format!("{} of {}", target.rejected, count(n, "request", "requests"))
            } else {
                target.rejected.to_string()
            };
            match target.reason {
                Some(reason) => parts.push(format!("{rejected} rejected ({reason})")),
                None => parts.push(format!("{rejected} rejected")),
            }
        }
        let late = if target.late > 0 {
            format!(" and {} more after the timeout", target.late)
        } else {
            String::new()
        };
        let summary = format!(
            "{} works only part of the time: {}, {} answered{late} (intermittent loss, a rate \
             limit or an overloaded path).",
            label(target),
            parts.join(" and "),
            target.answered,
        );
        findings.push(Finding::new(PARTIAL_LOSS, summary, &[target], Vec::new()));
    }
}
