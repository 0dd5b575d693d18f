//! The plain table: every target worst first, then the rollup per (direction, proto, port).
//!
//! DIR is `out` for requests this host sent and `in` for requests it received; for an
//! inbound target REMOTE is the peer that asked and PORT this host's port it asked for.
//! Inbound rollups are labelled `TCP/22 in`.

use std::fmt::Write as _;

use super::{RunInfo, short_duration};
use crate::{
    attribution,
    snapshot::{Rollup, Snapshot, TargetView},
    verdict::Verdict,
};

/// The status line: what is watched, since when, with which settings, and what was lost.
#[must_use]
pub fn status_line(snapshot: &Snapshot, run: &RunInfo) -> String {
    let interfaces: Vec<String> = run
        .interfaces
        .iter()
        .map(super::WatchedInterface::label)
        .collect();
    format!(
        "netwatch  {}  up {}  timeout {}  window {}  {:.1} req/s  in flight {}  lost {}",
        interfaces.join(", "),
        short_duration(run.uptime),
        short_duration(run.timeout),
        short_duration(run.window),
        snapshot.requests_per_s,
        snapshot.in_flight,
        snapshot.kernel.lost_requests,
    )
}

/// The whole report as text, without the status line.
#[must_use]
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    if snapshot.targets.is_empty() {
        out.push_str(
            "No requests seen yet: DNS queries, TCP connection attempts and pings leaving the \
             watched interfaces, and those arriving for this host, show up here.\n",
        );
        return out;
    }
    let remote_width = snapshot
        .targets
        .iter()
        .map(|t| t.remote.to_string().len())
        .max()
        .unwrap_or(6)
        .max(6);
    let who_width = snapshot
        .targets
        .iter()
        .map(|t| attribution::who(&t.processes).len())
        .max()
        .unwrap_or(0)
        .clamp(3, WHO_WIDTH);
    let _ = writeln!(
        out,
        "{:<10}  {:<3}  {:<6}  {:<remote_width$}  {:>5}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  \
         {:<who_width$}  REASON",
        "VERDICT", "DIR", "PROTO", "REMOTE", "PORT", "REQ", "ANS", "REJ", "UNANS", "RETX", "WHO",
    );
    for target in &snapshot.targets {
        let _ = writeln!(
            out,
            "{}",
            target_row(target, remote_width, who_width).trim_end()
        );
    }
    out.push_str("\nPER PORT\n");
    for rollup in &snapshot.rollups {
        let _ = writeln!(out, "{}", rollup_row(rollup).trim_end());
    }
    out
}

/// The WHO column's widest.
const WHO_WIDTH: usize = 24;

/// The WHO cell: the unit, container or process behind the target's requests (see
/// [`attribution::who`]), `-` when unknown, cut to `width`.
#[must_use]
pub fn who_cell(t: &TargetView, width: usize) -> String {
    let who = attribution::who(&t.processes);
    if who.is_empty() {
        "-".to_owned()
    } else if who.chars().count() > width {
        let cut: String = who.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}~")
    } else {
        who
    }
}

fn target_row(t: &TargetView, remote_width: usize, who_width: usize) -> String {
    let port = t.port.map_or_else(|| "-".to_owned(), |p| p.to_string());
    let detail = super::detail(t);
    format!(
        "{:<10}  {:<3}  {:<6}  {:<remote_width$}  {:>5}  {:>6}  {:>6}  {:>6}  {:>6}  {:>6}  \
         {:<who_width$}  {}",
        t.verdict.as_str(),
        t.direction.short(),
        t.proto.as_str(),
        t.remote.to_string(),
        port,
        t.requests,
        t.answered,
        t.rejected,
        t.unanswered,
        t.retransmits,
        who_cell(t, who_width),
        detail,
    )
}

fn rollup_row(r: &Rollup) -> String {
    let remotes = super::remotes_label(r);
    let reason = if r.verdict == Verdict::Ok {
        ""
    } else {
        r.reason.unwrap_or_default()
    };
    format!(
        "{:<13} {:>7} answered  {:<11} {:<10} {}",
        r.service().to_string(),
        format!("{}/{}", r.answered, r.requests),
        remotes,
        r.verdict.as_str(),
        reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        snapshot::tests::view,
        target::{Direction, Proto},
    };

    #[test]
    fn renders_targets_and_rollups() {
        let mut dns1 = view(Proto::Udp, "198.51.100.53", Some(53), Verdict::Blackholed);
        dns1.requests = 10;
        dns1.unanswered = 10;
        dns1.names = Some(vec!["chat.example.com".into()]);
        let mut dns2 = view(Proto::Udp, "198.51.100.54", Some(53), Verdict::Blackholed);
        dns2.requests = 4;
        dns2.unanswered = 4;
        let mut rejected = view(Proto::Tcp, "198.51.100.10", Some(8443), Verdict::Rejected);
        rejected.rejected = 1;
        rejected.reason = Some("icmp-host-prohibited");
        let mut ok = view(Proto::Tcp, "198.51.100.10", Some(443), Verdict::Ok);
        ok.answered = 1;
        let targets = vec![dns1, dns2, rejected, ok];
        let snapshot = Snapshot {
            rollups: Rollup::of(&targets),
            targets,
            ..Snapshot::default()
        };
        let text = render(&snapshot);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("VERDICT"));
        assert!(
            lines[1].starts_with("blackholed  out  udp     198.51.100.53"),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].ends_with("unanswered: chat.example.com"),
            "{}",
            lines[1]
        );
        assert!(lines[3].contains("8443") && lines[3].ends_with("icmp-host-prohibited"));
        let rollup = text.lines().find(|l| l.starts_with("UDP/53")).unwrap();
        assert!(rollup.contains("0/14 answered"), "{rollup}");
        assert!(rollup.contains("2 remotes"), "{rollup}");
        assert!(rollup.contains("blackholed"), "{rollup}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("TCP/443") && l.contains("1/1 answered"))
        );
    }

    #[test]
    fn inbound_targets_sit_beside_outbound_ones() {
        let mut inbound = view(Proto::Tcp, "203.0.113.9", Some(443), Verdict::Blackholed);
        inbound.direction = Direction::Ingress;
        (inbound.requests, inbound.unanswered) = (4, 4);
        let mut reset = view(Proto::Tcp, "203.0.113.9", Some(8080), Verdict::Rejected);
        reset.direction = Direction::Ingress;
        (reset.requests, reset.rejected) = (2, 2);
        reset.reason = Some("tcp-reset");
        let mut ping = view(Proto::Icmp, "203.0.113.9", None, Verdict::Ok);
        ping.direction = Direction::Ingress;
        let mut outbound = view(Proto::Tcp, "198.51.100.10", Some(443), Verdict::Ok);
        outbound.answered = 1;
        let mut targets = vec![outbound, ping, reset, inbound];
        targets.sort_by(TargetView::worst_first);
        let snapshot = Snapshot {
            rollups: Rollup::of(&targets),
            targets,
            ..Snapshot::default()
        };
        let text = render(&snapshot);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("VERDICT     DIR  PROTO"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("blackholed  in   tcp     203.0.113.9      443"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("rejected    in   tcp") && lines[2].ends_with("tcp-reset"),
            "{text}"
        );
        assert!(lines[3].starts_with("ok          out  tcp"), "{text}");
        assert!(
            lines[4].starts_with("ok          in   icmp    203.0.113.9        -"),
            "{text}"
        );
        let rollup = |label: &str| {
            text.lines()
                .find(|l| l.get(..13).map(str::trim_end) == Some(label))
                .unwrap_or_else(|| panic!("{label} in {text}"))
        };
        assert!(
            rollup("TCP/443 in").contains("0/4 answered  1 peer"),
            "{text}"
        );
        assert!(rollup("TCP/443 in").contains("blackholed"), "{text}");
        assert!(
            rollup("TCP/443").contains("1/1 answered  1 remote"),
            "{text}"
        );
        assert!(rollup("TCP/8080 in").ends_with("tcp-reset"), "{text}");
        assert!(rollup("ICMP in").contains(" ok"), "{text}");
    }

    #[test]
    fn local_drops_show_beside_the_reason() {
        let mut dns = view(Proto::Udp, "198.51.100.54", Some(53), Verdict::Blackholed);
        dns.reason = Some("here:netfilter-drop");
        dns.local_drops = std::collections::BTreeMap::from([("NETFILTER_DROP", 3)]);
        let targets = vec![dns];
        let snapshot = Snapshot {
            rollups: Rollup::of(&targets),
            targets,
            ..Snapshot::default()
        };
        let text = render(&snapshot);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.ends_with("here:netfilter-drop  (dropped here: NETFILTER_DROP 3)"),
            "{row}"
        );
    }

    #[test]
    fn the_who_column_names_the_unit_or_process() {
        let process = |comm: &str, cgroup: &str| attribution::Process {
            pid: 1,
            comm: comm.into(),
            cgroup: cgroup.into(),
        };
        let mut unit = view(Proto::Tcp, "198.51.100.10", Some(8443), Verdict::Rejected);
        unit.processes = vec![process("curl", "/system.slice/payments.service")];
        let mut bare = view(Proto::Udp, "198.51.100.53", Some(53), Verdict::Blackholed);
        bare.processes = vec![process("dig", "/user.slice/session-1.scope")];
        let unknown = view(Proto::Tcp, "198.51.100.11", Some(443), Verdict::Blackholed);
        let text = render(&Snapshot {
            targets: vec![unit, bare, unknown],
            ..Snapshot::default()
        });
        let header = text.lines().next().unwrap();
        let who = header.find("WHO").expect("a WHO column");
        assert!(header[who..].starts_with("WHO"), "{text}");
        let row = |needle: &str| text.lines().find(|l| l.contains(needle)).unwrap();
        assert_eq!(&row("8443")[who..who + 16], "payments.service", "{text}");
        assert_eq!(row(" 53 ")[who..].trim_end(), "dig", "{text}");
        assert_eq!(row(" 443 ")[who..].trim_end(), "-", "{text}");
    }

    #[test]
    fn empty_snapshot_says_what_will_appear() {
        assert!(render(&Snapshot::default()).starts_with("No requests seen yet"));
    }
}
