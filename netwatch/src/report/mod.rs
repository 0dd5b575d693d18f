//! Renderers: each turns a [`crate::snapshot::Snapshot`] into text. No I/O beyond the
//! writer they are handed.

pub mod json;
pub mod metrics;
pub mod table;
pub mod tui;

use std::time::Duration;

use serde::Serialize;

use crate::snapshot::TargetView;

/// The REASON cell of a target, the same in the plain table and the live view: the reason,
/// unanswered names, requests netwatch could not track, what stalled after the handshake,
/// the path MTU reported, fragmented answers, and drops on this host.
#[must_use]
pub fn detail(t: &TargetView) -> String {
    let mut detail = t.reason.unwrap_or_default().to_owned();
    let mut note = |text: String| {
        if !detail.is_empty() {
            detail.push_str("  ");
        }
        detail.push_str(&text);
    };
    if let Some(names) = t.names.as_ref().filter(|n| !n.is_empty()) {
        note(format!("unanswered: {}", names.join(", ")));
    }
    if t.untracked > 0 {
        note(format!("({} untracked: table full)", t.untracked));
    }
    if t.mtu_stalls > 0 {
        let through = t
            .largest_delivered
            .map_or_else(|| "only the handshake".to_owned(), |b| format!("{b} B"));
        let lost = t
            .smallest_lost
            .map_or_else(String::new, |b| format!("{b} B lost, "));
        let recovered = if t.mtu_recoveries > 0 {
            format!(", {} recovered", t.mtu_recoveries)
        } else {
            String::new()
        };
        note(format!(
            "({} stalled after the handshake: {lost}{through} through{recovered})",
            t.mtu_stalls
        ));
    }
    if let Some(mtu) = t.path_mtu {
        note(format!("(path MTU {mtu})"));
    }
    if t.fragmented_answers > 0 {
        note(format!("({} answers in fragments)", t.fragmented_answers));
    }
    if !t.local_drops.is_empty() {
        let drops: Vec<String> = t
            .local_drops
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        note(format!("(dropped here: {})", drops.join(", ")));
    }
    detail
}

/// The run's context shown beside the data: what is watched, for how long, with which
/// settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunInfo {
    /// (interface, attach mode).
    pub interfaces: Vec<WatchedInterface>,
    #[serde(serialize_with = "as_secs")]
    pub uptime: Duration,
    #[serde(serialize_with = "as_secs")]
    pub timeout: Duration,
    #[serde(serialize_with = "as_secs")]
    pub window: Duration,
    /// Whether drops on this host are counted: `available`, or `unavailable: <why>`.
    pub local_drops: String,
    /// Whether the processes behind requests are named: `available`, or
    /// `unavailable: <why>`.
    pub attribution: String,
    /// Whether TCP connections that stall after the handshake (path MTU) are followed:
    /// `available`, or `unavailable: <why>`.
    pub path_mtu: String,
    /// Whether DNS answers lost to fragments are told from answers that arrived:
    /// `available`, or `unavailable: <why>`.
    pub fragments: String,
    /// Whether this host's nftables ruleset changes are followed: `followed`, or
    /// `unavailable: <why>`.
    pub ruleset: String,
    /// `--trace-rules`: `off`, `available`, or `unavailable: <why>`.
    pub trace_rules: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchedInterface {
    pub name: String,
    /// What kind of device it is (`ethernet`, `tun`, `wireguard`…: see
    /// [`crate::interfaces::LinkKind`]).
    pub kind: &'static str,
    /// How it is attached (`tcx`, `clsact`), or how it was before it went away.
    pub attach: &'static str,
    pub state: crate::interfaces::LinkState,
}

impl WatchedInterface {
    /// `eth0 (ethernet, tcx)`, `tun0 (tun, tcx, down)`, `eth0 (gone)`.
    #[must_use]
    pub fn label(&self) -> String {
        use crate::interfaces::LinkState;
        match self.state {
            LinkState::Up => format!("{} ({}, {})", self.name, self.kind, self.attach),
            LinkState::Down => format!("{} ({}, {}, down)", self.name, self.kind, self.attach),
            LinkState::Gone => format!("{} (gone)", self.name),
        }
    }
}

fn as_secs<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// `1 remote`, `3 remotes` for a rollup of requests this host sent; `1 peer`, `3 peers` for
/// one of requests it received.
#[must_use]
pub fn remotes_label(rollup: &crate::snapshot::Rollup) -> String {
    use crate::target::Direction;
    let noun = match rollup.direction {
        Direction::Egress => "remote",
        Direction::Ingress => "peer",
    };
    let plural = if rollup.remotes == 1 { "" } else { "s" };
    format!("{} {noun}{plural}", rollup.remotes)
}

/// A short human duration: `850ms`, `3s`, `1m23s`, `2h05m`.
#[must_use]
pub fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs == 0 {
        return format!("{}ms", duration.subsec_millis());
    }
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_durations() {
        assert_eq!(short_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(short_duration(Duration::from_secs(3)), "3s");
        assert_eq!(short_duration(Duration::from_secs(83)), "1m23s");
        assert_eq!(short_duration(Duration::from_mins(125)), "2h05m");
    }
}
