//! NDJSON output: one record per line, flushed as it is written so pipes see it at once.
//!
//! Record types: `verdict` (a target's verdict changed), `target` (per target, at exit),
//! `diagnosis` (a finding appeared or changed, and at exit), `interface`, `ruleset` (this
//! host's nftables ruleset changed: see [`crate::firewall::changes::RulesetRecord`]),
//! `summary` (at exit). Readers skip types they don't know.
//!
//! Every target, whether in a `verdict` or `target` record or in a finding's `evidence`,
//! carries its `direction`: `"egress"` for requests this host sent (`remote` is where they
//! went, `port` the remote port), `"ingress"` for requests it received (`remote` is the peer
//! that asked, `port` this host's port asked for; `null` for ICMP).

use std::io::{self, Write};

use serde::Serialize;

use super::{RunInfo, WatchedInterface};
use crate::{
    diagnosis::Finding,
    firewall::changes::RulesetRecord,
    snapshot::{KernelStats, Snapshot, TargetView},
};

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Record<'a> {
    Verdict(Stamped<'a, TargetView>),
    Diagnosis(&'a Finding),
    Interface(Stamped<'a, WatchedInterface>),
    Ruleset(Stamped<'a, RulesetRecord>),
    Target(&'a TargetView),
    Summary(Summary<'a>),
}

/// A record with the wall-clock time it was made.
#[derive(Serialize)]
struct Stamped<'a, T> {
    time: String,
    #[serde(flatten)]
    inner: &'a T,
}

#[derive(Serialize)]
struct Summary<'a> {
    #[serde(flatten)]
    run: &'a RunInfo,
    targets: usize,
    in_flight: usize,
    tombstones: usize,
    /// Requests that could not be tracked (table full).
    lost_requests: u64,
    kernel: &'a KernelStats,
    /// TCP connections with retransmissions, and what they were judged (path MTU).
    retransmitting_connections: &'a crate::stalls::StallStats,
}

/// Writes NDJSON records to `out`.
pub struct JsonWriter<W: Write> {
    out: W,
}

impl<W: Write> JsonWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// A `verdict` record for each change, stamped with `time` (RFC 3339).
    pub fn verdicts(&mut self, changes: &[TargetView], time: &str) -> io::Result<()> {
        for change in changes {
            let record = Record::Verdict(Stamped {
                time: time.to_owned(),
                inner: change,
            });
            self.line(&record)?;
        }
        self.out.flush()
    }

    /// An `interface` record: a watched interface went down, came up, went away or came
    /// back (and was attached again).
    pub fn interface(&mut self, interface: &WatchedInterface, time: &str) -> io::Result<()> {
        self.line(&Record::Interface(Stamped {
            time: time.to_owned(),
            inner: interface,
        }))?;
        self.out.flush()
    }

    /// A `ruleset` record per committed change (or summary of several), stamped with `time`.
    pub fn ruleset(&mut self, records: &[RulesetRecord], time: &str) -> io::Result<()> {
        for record in records {
            self.line(&Record::Ruleset(Stamped {
                time: time.to_owned(),
                inner: record,
            }))?;
        }
        self.out.flush()
    }

    /// `diagnosis` records, one per finding.
    pub fn diagnoses(&mut self, findings: &[&Finding]) -> io::Result<()> {
        for finding in findings {
            self.line(&Record::Diagnosis(finding))?;
        }
        self.out.flush()
    }

    /// The exit records: one `target` per target, one `diagnosis` per current finding,
    /// then the `summary`.
    pub fn finish(
        &mut self,
        snapshot: &Snapshot,
        findings: &[Finding],
        run: &RunInfo,
    ) -> io::Result<()> {
        for target in &snapshot.targets {
            self.line(&Record::Target(target))?;
        }
        for finding in findings {
            self.line(&Record::Diagnosis(finding))?;
        }
        self.line(&Record::Summary(Summary {
            run,
            targets: snapshot.targets.len(),
            in_flight: snapshot.in_flight,
            tombstones: snapshot.tombstones,
            lost_requests: snapshot.kernel.lost_requests,
            kernel: &snapshot.kernel,
            retransmitting_connections: &snapshot.retransmitting_connections,
        }))?;
        self.out.flush()
    }

    fn line(&mut self, record: &Record<'_>) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::*;
    use crate::{
        diagnosis::diagnose,
        snapshot::tests::view,
        target::{Direction, Proto},
        verdict::Verdict,
    };

    fn lines(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn verdict_records_carry_the_contract_fields() {
        let mut target = view(Proto::Udp, "198.51.100.53", Some(53), Verdict::Blackholed);
        target.requests = 14;
        target.unanswered = 14;
        target.retransmits = 2;
        target.names = Some(vec!["chat.example.com".into()]);
        let mut out = Vec::new();
        JsonWriter::new(&mut out)
            .verdicts(&[target], "2026-11-24T22:00:00.000Z")
            .unwrap();
        let records = lines(&out);
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!(r["type"], "verdict");
        assert_eq!(r["direction"], "egress");
        assert_eq!(r["proto"], "udp");
        assert_eq!(r["remote"], "198.51.100.53");
        assert_eq!(r["port"], 53);
        assert_eq!(r["requests"], 14);
        assert_eq!(r["answered"], 0);
        assert_eq!(r["rejected"], 0);
        assert_eq!(r["unanswered"], 14);
        assert_eq!(r["retransmits"], 2);
        assert_eq!(r["verdict"], "blackholed");
        assert_eq!(r["reason"], Value::Null);
        assert_eq!(r["names"][0], "chat.example.com");
        assert_eq!(r["time"], "2026-11-24T22:00:00.000Z");
        assert_eq!(
            r["processes"],
            serde_json::json!([]),
            "always there, empty: unknown"
        );
    }

    #[test]
    fn target_records_name_their_processes() {
        let mut target = view(Proto::Tcp, "198.51.100.10", Some(8443), Verdict::Rejected);
        target.processes = vec![crate::attribution::Process {
            pid: 4242,
            comm: "curl".into(),
            cgroup: "/system.slice/payments.service".into(),
        }];
        let mut out = Vec::new();
        JsonWriter::new(&mut out)
            .verdicts(&[target], "2026-11-24T22:00:00.000Z")
            .unwrap();
        assert_eq!(
            lines(&out)[0]["processes"],
            serde_json::json!([
                {"pid": 4242, "comm": "curl", "cgroup": "/system.slice/payments.service"}
            ])
        );
    }

    #[test]
    fn inbound_targets_say_ingress_in_every_record() {
        let mut ssh = view(Proto::Tcp, "203.0.113.9", Some(22), Verdict::Blackholed);
        ssh.direction = Direction::Ingress;
        (ssh.requests, ssh.unanswered) = (4, 4);
        let mut ping = view(Proto::Icmpv6, "2001:db8::9", None, Verdict::Ok);
        ping.direction = Direction::Ingress;
        ping.answered = 1;
        let mut out = Vec::new();
        let mut writer = JsonWriter::new(&mut out);
        writer
            .verdicts(std::slice::from_ref(&ssh), "2026-11-26T13:00:00.000Z")
            .unwrap();
        let snapshot = Snapshot {
            targets: vec![ssh, ping],
            ..Snapshot::default()
        };
        let findings = diagnose(&snapshot, &[], Duration::from_secs(3));
        let run = RunInfo {
            interfaces: vec![],
            uptime: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            window: Duration::from_mins(1),
            local_drops: "available".to_owned(),
            attribution: "available".to_owned(),
            path_mtu: "available".to_owned(),
            fragments: "available".to_owned(),
            ruleset: "followed".to_owned(),
            trace_rules: "off".to_owned(),
        };
        writer.finish(&snapshot, &findings, &run).unwrap();
        let records = lines(&out);
        let types: Vec<&str> = records
            .iter()
            .map(|r| r["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["verdict", "target", "target", "diagnosis", "summary"]
        );
        for record in &records[..3] {
            assert_eq!(record["direction"], "ingress", "{record}");
        }
        assert_eq!(records[0]["remote"], "203.0.113.9", "the peer that asked");
        assert_eq!(records[0]["port"], 22, "this host's port asked for");
        assert_eq!(records[0]["verdict"], "blackholed");
        assert_eq!(records[2]["proto"], "icmpv6");
        assert_eq!(records[2]["port"], Value::Null);
        let diagnosis = &records[3];
        assert_eq!(diagnosis["finding"], "inbound-blackholed");
        assert_eq!(diagnosis["evidence"][0]["direction"], "ingress");
        assert_eq!(diagnosis["request"], serde_json::json!([]));
        assert_eq!(diagnosis["local_rules"][0]["chain"], "input");
        assert_eq!(
            diagnosis["local_rules"][0]["iptables"],
            "iptables -I INPUT -s 203.0.113.9 -p tcp --dport 22 -j ACCEPT"
        );
    }

    #[test]
    fn ruleset_records_carry_the_generation_and_each_rule() {
        use crate::firewall::{
            changes::RuleChange,
            netlink::{Family, Op},
        };
        let record = RulesetRecord {
            generation: 42,
            changes: vec![RuleChange {
                op: Op::Add,
                family: Family::Inet,
                table: "host".into(),
                chain: "output".into(),
                handle: 7,
                rule: "tcp dport 3306 drop comment \"no mysql\"".into(),
            }],
            chains: Vec::new(),
            process: Some("nft".into()),
            summarized: None,
            at_ns: 0,
        };
        let mut out = Vec::new();
        JsonWriter::new(&mut out)
            .ruleset(&[record], "2026-11-24T22:00:00.000Z")
            .unwrap();
        assert_eq!(
            lines(&out)[0],
            serde_json::json!({
                "type": "ruleset", "time": "2026-11-24T22:00:00.000Z", "generation": 42,
                "changes": [{"op": "add", "family": "inet", "table": "host",
                             "chain": "output", "handle": 7,
                             "rule": "tcp dport 3306 drop comment \"no mysql\""}],
                "process": "nft"
            })
        );
    }

    #[test]
    fn icmp_has_a_null_port_and_ipv6_is_canonical() {
        let mut target = view(Proto::Icmpv6, "2001:0db8:0:0::1", None, Verdict::Rejected);
        target.reason = Some("icmp6-adm-prohibited");
        let snapshot = Snapshot {
            targets: vec![target],
            ..Snapshot::default()
        };
        let run = RunInfo {
            interfaces: vec![],
            uptime: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            window: Duration::from_mins(1),
            local_drops: "available".to_owned(),
            attribution: "available".to_owned(),
            path_mtu: "available".to_owned(),
            fragments: "available".to_owned(),
            ruleset: "followed".to_owned(),
            trace_rules: "off".to_owned(),
        };
        let mut out = Vec::new();
        JsonWriter::new(&mut out)
            .finish(&snapshot, &[], &run)
            .unwrap();
        let records = lines(&out);
        assert_eq!(records[0]["type"], "target");
        assert_eq!(records[0]["port"], Value::Null);
        assert_eq!(records[0]["remote"], "2001:db8::1");
        assert_eq!(records[0]["reason"], "icmp6-adm-prohibited");
        assert!(
            records[0].get("names").is_none(),
            "names only for DNS targets"
        );
        assert_eq!(records[1]["type"], "summary");
        assert_eq!(records[1]["targets"], 1);
        assert_eq!(records[1]["timeout"], 3.0);
    }
}
