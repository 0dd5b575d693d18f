//! Blackholes after the handshake (issue 18): the firewall namespace is a router whose route
//! towards one side carries 1400 bytes (`ip route … mtu 1400`) while both ends' links carry
//! 1500, so full-size segments need path-MTU discovery; its own output chain drops the
//! "fragmentation needed" / "packet too big" it generates, so discovery is blackholed.
//! Real TCP clients and servers (`tests/lab/tcp_peer.py`: a greeting first, so something
//! small gets through) upload and download through it, and netwatch, on the client or the
//! server, must name the stalls, their sizes and the fix; and must blame nothing where
//! the path is fine: the ICMP let through, loss of every size, a receiver that stops
//! reading, a peer that vanishes, a small upload, TCP's own MTU probing. Large DNS answers
//! lost to fragments dropped on the way are named for what they are.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use netwatch_tests::{
    kernel_has_drop_reasons,
    lab::{
        CLIENT_V4, CLIENT_V6, DNS_V4, DNS_V6, Finished, Lab, Netns, NetwatchRun, SERVER_V4,
        SERVER_V6, netwatch_binary, wait_until,
    },
    prerequisites,
};
use serde_json::Value;

/// Bytes of an upload or download: a few hundred kB, far more than one window.
const LARGE: &str = "300000";
/// The MTU of the narrow hop.
const NARROW: &str = "1400";
/// A full-size segment on the 1500-byte links: IP, TCP with timestamps, 1448 or 1428 bytes.
const FULL_SIZE: u64 = 1500;
/// The greeting that gets through ("hello\n", 6 bytes) as a segment on the wire: IPv4 and
/// TCP with timestamps (52 bytes of headers), or IPv6 (72).
const GREETING_V4: u64 = 6 + 52;
const GREETING_V6: u64 = 6 + 72;

/// The router drops the path-MTU signals it generates: discovery is blackholed.
const DROP_PMTU_SIGNALS: &str = "
table inet lab {
  chain output {
    type filter hook output priority 0; policy accept;
    icmp type destination-unreachable icmp code frag-needed drop
    icmpv6 type packet-too-big drop
  }
}
";

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/tcp_peer.py")
}

/// Which way the narrow hop narrows: the router's route towards the server (uploads
/// stall) or towards the client (downloads stall).
#[derive(Clone, Copy)]
enum Towards {
    Server,
    Client,
}

/// The lab with the firewall replaced by a plain router whose route `towards` one side
/// carries [`NARROW`] bytes; `blackholed`: it drops the signals that would say so.
fn narrow_lab(towards: Towards, blackholed: bool) -> Lab {
    let lab = Lab::new();
    lab.nft("flush ruleset\n");
    let (v4, v6, dev) = match towards {
        Towards::Server => ("198.51.100.0/24", "2001:db8:2::/64", "f1"),
        Towards::Client => ("203.0.113.0/24", "2001:db8:1::/64", "f0"),
    };
    lab.firewall
        .ok("ip", &["route", "replace", v4, "dev", dev, "mtu", NARROW]);
    // The connected route itself (metric 256, proto kernel): another one beside it would
    // lose to it.
    lab.firewall.ok(
        "ip",
        &[
            "-6", "route", "replace", v6, "dev", dev, "metric", "256", "proto", "kernel", "mtu",
            NARROW,
        ],
    );
    if blackholed {
        lab.nft(DROP_PMTU_SIGNALS);
    }
    warm_up(&lab);
    lab
}

/// Resolves the neighbours on both links before any test connection: a first IPv6 SYN that
/// waits a second for neighbour discovery gives TCP a round trip of a second, hence an RTO
/// of several, and a stall that takes minutes to show.
fn warm_up(lab: &Lab) {
    for server in [SERVER_V4, SERVER_V6] {
        lab.client.ok("ping", &["-c", "1", "-W", "5", server]);
    }
}

/// A `tcp_peer.py serve` on `port` in the server namespace (`mode`: read, stall,
/// send:N), listening when this returns.
fn serve(lab: &mut Lab, port: u16, mode: &str) {
    let ready = lab.dir().join(format!("tcp-peer-{port}.ready"));
    let mut command = lab.server.command("python3");
    command
        .arg(peer_script())
        .args(["serve", &ready.to_string_lossy(), &port.to_string(), mode])
        .stdin(Stdio::null());
    lab.spawn(command);
    wait_until(Duration::from_secs(10), "the TCP server listening", || {
        ready.exists()
    });
}

/// A `tcp_peer.py` client, killed when dropped (on failure too).
struct Peer(Child);

impl Peer {
    /// Its exit code, waiting at most `limit`.
    fn exit_code(&mut self, limit: Duration) -> i32 {
        let mut code = None;
        wait_until(limit, "the TCP client to finish", || {
            code = self
                .0
                .try_wait()
                .expect("wait")
                .map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        code.expect("finished")
    }

    fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tcp_peer.py ARGS…` started in `ns`.
fn peer(ns: &Netns, args: &[&str]) -> Peer {
    Peer(
        ns.command("python3")
            .arg(peer_script())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("tcp_peer.py"),
    )
}

/// netwatch in `ns` watching `iface` (with the default timeout: a first IPv6 SYN may wait
/// a second for neighbour discovery, and that is no late answer).
fn watch(ns: &Netns, iface: &str) -> NetwatchRun {
    let mut command = ns.command(&netwatch_binary().to_string_lossy());
    command.args(["--iface", iface, "--json"]);
    NetwatchRun::start(command)
}

/// Stops netwatch and checks it exited cleanly.
fn stop(run: NetwatchRun) -> Finished {
    let finished = run.stop();
    assert!(
        finished.status.success(),
        "netwatch exit: {:?}: {}",
        finished.status,
        finished.stderr
    );
    assert!(
        finished.summary()["path_mtu"] == "available",
        "the retransmission program must run here: {}",
        finished.summary()["path_mtu"]
    );
    finished
}

fn tcp_target<'a>(finished: &'a Finished, direction: &str, remote: &str, port: u64) -> &'a Value {
    finished.target_record(direction, "tcp", remote, Some(port))
}

/// Waits until netwatch calls (`direction`, `remote`, `port`) degraded for path-mtu.
fn wait_for_stall(run: &NetwatchRun, direction: &str, remote: &str, port: u64) {
    run.wait_for(
        Duration::from_secs(40),
        &format!("{remote}:{port} degraded for path-mtu"),
        |r| {
            r["type"] == "verdict"
                && r["direction"] == direction
                && r["remote"] == remote
                && r["port"] == port
                && r["reason"] == "path-mtu"
        },
    );
}

fn findings<'a>(finished: &'a Finished, id: &str) -> Vec<&'a Value> {
    finished
        .records
        .iter()
        .filter(|r| r["type"] == "diagnosis" && r["finding"] == id)
        .collect()
}

fn count(record: &Value, field: &str) -> u64 {
    record[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {field}: {record}"))
}

/// A stalled target: degraded for path-mtu, one connection, full-size segments lost, the
/// greeting through.
fn assert_stalled(record: &Value, delivered: u64) {
    assert_eq!(record["verdict"], "degraded", "{record}");
    assert_eq!(record["reason"], "path-mtu", "{record}");
    assert_eq!(count(record, "mtu_stalls"), 1, "{record}");
    assert_eq!(count(record, "mtu_recoveries"), 0, "{record}");
    assert_eq!(count(record, "smallest_lost"), FULL_SIZE, "{record}");
    assert_eq!(count(record, "largest_delivered"), delivered, "{record}");
    assert_eq!(
        count(record, "answered"),
        1,
        "the handshake was answered: {record}"
    );
}

/// No target is blamed on the path's MTU, and no finding says so.
fn assert_no_mtu_blame(finished: &Finished) {
    for record in finished.records.iter().filter(|r| r["type"] == "verdict") {
        assert_ne!(record["reason"], "path-mtu", "{record}");
    }
    for (_, record) in finished.targets() {
        assert_eq!(record["mtu_stalls"], 0, "{record}");
    }
    assert!(
        findings(finished, "path-mtu-blackhole").is_empty(),
        "{:#?}",
        findings(finished, "path-mtu-blackhole")
    );
}

#[test]
fn uploads_over_a_path_mtu_blackhole_stall_and_are_named() {
    const NAME: &str = "uploads_over_a_path_mtu_blackhole_stall_and_are_named";
    if !prerequisites(NAME, &["ip", "nft", "python3"]) {
        return;
    }
    let mut lab = narrow_lab(Towards::Server, true);
    serve(&mut lab, 5001, "read");
    let netwatch = watch(&lab.client, "c0");
    let mut uploads: Vec<Peer> = [SERVER_V4, SERVER_V6]
        .iter()
        .map(|server| peer(&lab.client, &["upload", server, "5001", LARGE, "40"]))
        .collect();
    wait_for_stall(&netwatch, "egress", SERVER_V4, 5001);
    wait_for_stall(&netwatch, "egress", SERVER_V6, 5001);
    for upload in &mut uploads {
        assert!(
            upload.running(),
            "an upload finished over a blackholed path: the lab proves nothing"
        );
    }
    drop(uploads);
    let finished = stop(netwatch);
    assert_stalled(
        tcp_target(&finished, "egress", SERVER_V4, 5001),
        GREETING_V4,
    );
    assert_stalled(
        tcp_target(&finished, "egress", SERVER_V6, 5001),
        GREETING_V6,
    );
    let found = findings(&finished, "path-mtu-blackhole");
    let last = found.last().expect("a path-mtu-blackhole finding");
    let summary = last["summary"].as_str().expect("summary");
    assert!(
        summary.contains("packets of 1500 bytes never get through")
            && summary.contains("tcp_mtu_probing=1"),
        "{summary}"
    );
    let requests: Vec<(&str, &str, &str)> = last["request"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| {
            (
                r["proto"].as_str().expect("proto"),
                r["icmp_type"].as_str().expect("icmp_type"),
                r["direction"].as_str().expect("direction"),
            )
        })
        .collect();
    assert_eq!(
        requests,
        [
            ("icmp", "fragmentation-needed", "inbound"),
            ("icmpv6", "packet-too-big", "inbound")
        ],
        "{last}"
    );
    assert_eq!(last["request"][0]["destinations"][0], CLIENT_V4, "{last}");
    assert!(
        findings(&finished, "partial-loss").is_empty(),
        "a stall is no partial loss"
    );
    assert!(finished.summary()["retransmitting_connections"]["path_mtu_stalls"] == 2);
}

#[test]
fn a_server_names_the_peers_whose_downloads_stall() {
    const NAME: &str = "a_server_names_the_peers_whose_downloads_stall";
    if !prerequisites(NAME, &["ip", "nft", "python3"]) {
        return;
    }
    let mut lab = narrow_lab(Towards::Client, true);
    serve(&mut lab, 8080, &format!("send:{LARGE}"));
    let netwatch = watch(&lab.server, "s0");
    let downloads: Vec<Peer> = [SERVER_V4, SERVER_V6]
        .iter()
        .map(|server| peer(&lab.client, &["download", server, "8080", "40"]))
        .collect();
    wait_for_stall(&netwatch, "ingress", CLIENT_V4, 8080);
    wait_for_stall(&netwatch, "ingress", CLIENT_V6, 8080);
    drop(downloads);
    let finished = stop(netwatch);
    // The server's greeting ("ok\n", 3 bytes) is what got through.
    assert_stalled(tcp_target(&finished, "ingress", CLIENT_V4, 8080), 3 + 52);
    assert_stalled(tcp_target(&finished, "ingress", CLIENT_V6, 8080), 3 + 72);
    let found = findings(&finished, "path-mtu-blackhole");
    let last = found.last().expect("a path-mtu-blackhole finding");
    let summary = last["summary"].as_str().expect("summary");
    assert!(
        summary.starts_with(&format!(
            "Connections from {CLIENT_V4}, {CLIENT_V6} to this host's tcp/8080 open and then stall"
        )),
        "{summary}"
    );
}

#[test]
fn path_mtu_signals_let_through_are_honoured_and_recorded() {
    const NAME: &str = "path_mtu_signals_let_through_are_honoured_and_recorded";
    if !prerequisites(NAME, &["ip", "nft", "python3"]) {
        return;
    }
    let mut lab = narrow_lab(Towards::Server, false);
    serve(&mut lab, 5001, "read");
    let netwatch = watch(&lab.client, "c0");
    for server in [SERVER_V4, SERVER_V6] {
        let mut upload = peer(&lab.client, &["upload", server, "5001", LARGE, "20"]);
        assert_eq!(
            upload.exit_code(Duration::from_secs(25)),
            0,
            "the upload to {server} did not get through with path-MTU discovery working"
        );
    }
    let finished = stop(netwatch);
    for server in [SERVER_V4, SERVER_V6] {
        let record = tcp_target(&finished, "egress", server, 5001);
        assert_eq!(record["verdict"], "ok", "{record}");
        assert_eq!(record["path_mtu"], 1400, "{record}");
        assert!(count(record, "path_mtu_signals") >= 1, "{record}");
        assert_eq!(count(record, "path_mtu_dropped_here"), 0, "{record}");
        assert_eq!(
            count(record, "rejected"),
            0,
            "a signal is no rejection: {record}"
        );
    }
    assert_no_mtu_blame(&finished);
    assert!(finished.kernel_counter("path_mtu") >= 2);
}

#[test]
fn path_mtu_signals_dropped_by_this_hosts_input_chain_name_the_local_rule() {
    const NAME: &str = "path_mtu_signals_dropped_by_this_hosts_input_chain_name_the_local_rule";
    if !prerequisites(NAME, &["ip", "nft", "python3"]) {
        return;
    }
    let mut lab = narrow_lab(Towards::Server, false);
    Lab::nft_in(
        &lab.client,
        "table inet host {
           chain input {
             type filter hook input priority 0; policy accept;
             icmp type destination-unreachable icmp code frag-needed drop
             icmpv6 type packet-too-big drop
           }
         }",
    );
    serve(&mut lab, 5001, "read");
    let netwatch = watch(&lab.client, "c0");
    let uploads: Vec<Peer> = [SERVER_V4, SERVER_V6]
        .iter()
        .map(|server| peer(&lab.client, &["upload", server, "5001", LARGE, "40"]))
        .collect();
    wait_for_stall(&netwatch, "egress", SERVER_V4, 5001);
    wait_for_stall(&netwatch, "egress", SERVER_V6, 5001);
    drop(uploads);
    let finished = stop(netwatch);
    for server in [SERVER_V4, SERVER_V6] {
        let record = tcp_target(&finished, "egress", server, 5001);
        assert_eq!(record["reason"], "path-mtu", "{record}");
        assert!(count(record, "path_mtu_signals") >= 1, "{record}");
        if kernel_has_drop_reasons() {
            assert!(count(record, "path_mtu_dropped_here") >= 1, "{record}");
        }
    }
    let found = findings(&finished, "path-mtu-blackhole");
    let last = found.last().expect("a path-mtu-blackhole finding");
    assert_eq!(
        last["request"].as_array().map(Vec::len),
        Some(0),
        "nothing to ask upstream: {last}"
    );
    let rules: Vec<&str> = last["local_rules"]
        .as_array()
        .expect("local rules")
        .iter()
        .map(|r| r["nft"].as_str().expect("nft"))
        .collect();
    assert_eq!(
        rules,
        [
            "nft insert rule inet filter input icmp type destination-unreachable icmp code \
             frag-needed accept",
            "nft insert rule inet filter input icmpv6 type packet-too-big accept"
        ],
        "{last}"
    );
    assert_eq!(
        last["local_rules"][0]["iptables"],
        "iptables -I INPUT -p icmp --icmp-type fragmentation-needed -j ACCEPT"
    );
}

#[test]
fn loss_a_closed_window_a_vanished_peer_and_small_uploads_blame_no_path_mtu() {
    loss_blames_no_path_mtu(
        "loss_a_closed_window_a_vanished_peer_and_small_uploads_blame_no_path_mtu",
        false,
    );
}

/// The same with TCP's black-hole detection on: TCP then lowers its segment size for the
/// vanished peers too (after ~3 s of retransmissions), which must read as what died before
/// at every size, not as a size that never got through.
#[test]
fn loss_a_closed_window_a_vanished_peer_and_small_uploads_with_tcp_probing_on_blame_nothing() {
    loss_blames_no_path_mtu(
        "loss_a_closed_window_a_vanished_peer_and_small_uploads_with_tcp_probing_on_blame_nothing",
        true,
    );
}

/// Random loss, a small upload, a receiver that stops reading and two peers that vanish, over
/// a path that carries full-size segments: no path-MTU stall, nothing blamed. `probing`: with
/// `net.ipv4.tcp_mtu_probing=1` on the client.
fn loss_blames_no_path_mtu(name: &str, probing: bool) {
    if !prerequisites(name, &["ip", "nft", "python3"]) {
        return;
    }
    // A path that carries full-size segments: only loss, windows and peers are in play.
    let mut lab = Lab::new();
    if probing {
        lab.client
            .ok("sysctl", &["-qw", "net.ipv4.tcp_mtu_probing=1"]);
    }
    lab.nft("flush ruleset\n");
    warm_up(&lab);
    lab.nft(
        "table inet lab {
           chain forward {
             type filter hook forward priority 0; policy accept;
             ip daddr 198.51.100.10 tcp dport 5002 tcp flags & syn == 0 numgen random mod 10 < 2 drop
           }
         }",
    );
    serve(&mut lab, 5002, "read");
    serve(&mut lab, 5003, "read");
    serve(&mut lab, 5004, "stall");
    serve(&mut lab, 5005, "read");
    serve(&mut lab, 5006, "read");
    let netwatch = watch(&lab.client, "c0");
    // Random loss of every size (20 %), a small upload, a receiver that stops reading, and
    // two peers that vanish once 300 kB got through: after it, one connection sends only
    // full-size segments, the other a small one first (lost too).
    let mut lossy = peer(&lab.client, &["upload", SERVER_V4, "5002", LARGE, "60"]);
    let mut small = peer(&lab.client, &["upload", SERVER_V4, "5003", "500", "20"]);
    let full_window = peer(&lab.client, &["upload", SERVER_V4, "5004", "4000000", "15"]);
    let pauses: Vec<PathBuf> = [5005, 5006]
        .iter()
        .map(|port| lab.dir().join(format!("vanish-{port}.pause")))
        .collect();
    let vanishing: Vec<Peer> = [(5005, ""), (5006, "small")]
        .iter()
        .zip(&pauses)
        .map(|((port, small), pause)| {
            let (port, pause) = (port.to_string(), pause.to_string_lossy().into_owned());
            let mut args = vec!["upload", SERVER_V4, &port, LARGE, "40", &pause];
            if !small.is_empty() {
                args.push(small);
            }
            peer(&lab.client, &args)
        })
        .collect();
    wait_until(
        Duration::from_secs(20),
        "the first half of the uploads",
        || pauses.iter().all(|pause| pause.exists()),
    );
    lab.nft("insert rule inet lab forward tcp dport { 5005, 5006 } drop\n");
    for pause in &pauses {
        std::fs::remove_file(pause).expect("resume the upload");
    }
    assert_eq!(small.exit_code(Duration::from_secs(25)), 0, "small upload");
    assert_eq!(lossy.exit_code(Duration::from_secs(65)), 0, "lossy upload");
    // The vanished peers: their head retransmitted again and again, as a stall's would be.
    // Six retransmissions of each socket: a tail loss probe can be the first (another
    // segment than the head), and the small head is sent once alone before TCP merges it
    // with the full-size segments behind it; four of the head at one size remain.
    wait_until(
        Duration::from_secs(40),
        "the vanished peers' retransmissions",
        || retransmits_of(&lab.client, 5005) >= 6 && retransmits_of(&lab.client, 5006) >= 6,
    );
    if probing {
        // What this case is about: TCP lowered its segment size for the vanished peers.
        wait_until(
            Duration::from_secs(40),
            "TCP's black-hole detection lowering the vanished peers' segment size",
            || {
                [5005, 5006]
                    .iter()
                    .all(|port| mss_of(&lab.client, *port) < FULL_MSS)
            },
        );
    }
    drop(vanishing);
    drop(full_window);
    let finished = stop(netwatch);
    assert_no_mtu_blame(&finished);
    for port in [5002, 5003, 5004, 5005, 5006] {
        let record = tcp_target(&finished, "egress", SERVER_V4, port);
        assert_eq!(record["verdict"], "ok", "{record}");
    }
    let connections = &finished.summary()["retransmitting_connections"];
    assert!(
        count(connections, "followed") >= 3 && count(connections, "not_path_mtu") >= 2,
        "the lossy and the vanished uploads were followed, the vanished ones judged: \
         {connections}"
    );
    assert_eq!(count(connections, "path_mtu_stalls"), 0, "{connections}");
}

/// The segment size of an IPv4 connection with timestamps on a 1500-byte path.
const FULL_MSS: u64 = 1448;

/// The segment size `ss` reports for the connection to `port` (`mss:N`); `u64::MAX` when
/// there is none.
fn mss_of(ns: &Netns, port: u16) -> u64 {
    let out = ns.run("ss", &["-tin", &format!("( dport = :{port} )")]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|field| field.strip_prefix("mss:"))
        .and_then(|mss| mss.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The retransmissions `ss` reports for the connection to `port` (`retrans:N/TOTAL`: TOTAL).
fn retransmits_of(ns: &Netns, port: u16) -> u64 {
    let out = ns.run("ss", &["-tin", &format!("( dport = :{port} )")]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|field| field.strip_prefix("retrans:"))
        .and_then(|value| value.split('/').nth(1))
        .and_then(|total| total.parse().ok())
        .unwrap_or(0)
}

#[test]
fn tcp_mtu_probing_recovers_a_stall_and_nothing_is_blamed() {
    probing_recovers(
        "tcp_mtu_probing_recovers_a_stall_and_nothing_is_blamed",
        None,
    );
}

/// The same over a long path. TCP's black-hole detection acts on time (about 3 s of
/// retransmissions, `tcp_retries1`), not on a count: where the retransmission timer starts
/// above ~215 ms (a round trip of a few tens of milliseconds, any path off the local network),
/// the head goes out at full size only three times before TCP lowers it, one short of
/// [`netwatch_common::STALL_RETRANSMITS`]. The lab has no delay to add (no netem here), so
/// the client's routes set the timer's floor to what a ~100 ms round trip gives.
#[test]
fn tcp_mtu_probing_recovers_a_stall_over_a_long_round_trip_too() {
    probing_recovers(
        "tcp_mtu_probing_recovers_a_stall_over_a_long_round_trip_too",
        Some("300ms"),
    );
}

/// Uploads to both servers through a blackholed narrow hop with TCP's probing on (and the
/// client's retransmission timer at least `rto_min`): each stalls, TCP lowers its segment
/// size, gets through, and netwatch reports one stall and one recovery per target and blames
/// nothing.
fn probing_recovers(name: &str, rto_min: Option<&str>) {
    if !prerequisites(name, &["ip", "nft", "python3"]) {
        return;
    }
    let mut lab = narrow_lab(Towards::Server, true);
    lab.client
        .ok("sysctl", &["-qw", "net.ipv4.tcp_mtu_probing=1"]);
    if let Some(rto_min) = rto_min {
        for (family, gateway) in [("-4", "203.0.113.1"), ("-6", "2001:db8:1::1")] {
            let route = [family, "route", "change", "default", "via", gateway];
            lab.client
                .ok("ip", &[&route[..], &["rto_min", rto_min]].concat());
        }
    }
    serve(&mut lab, 5001, "read");
    let netwatch = watch(&lab.client, "c0");
    for server in [SERVER_V4, SERVER_V6] {
        let mut upload = peer(&lab.client, &["upload", server, "5001", LARGE, "40"]);
        assert_eq!(
            upload.exit_code(Duration::from_secs(45)),
            0,
            "TCP's probing did not get the upload to {server} through"
        );
    }
    let finished = stop(netwatch);
    for server in [SERVER_V4, SERVER_V6] {
        let record = tcp_target(&finished, "egress", server, 5001);
        assert_eq!(record["verdict"], "ok", "{record}");
        assert_eq!(count(record, "mtu_stalls"), 1, "the stall: {record}");
        assert_eq!(count(record, "mtu_recoveries"), 1, "the recovery: {record}");
        assert_eq!(count(record, "smallest_lost"), FULL_SIZE, "{record}");
        // TCP first retries at its base MSS (1024 bytes of payload), then probes up to what
        // the narrow hop carries.
        let delivered = count(record, "largest_delivered");
        assert!(
            (1024..=1400).contains(&delivered),
            "the sizes TCP got through: {record}"
        );
    }
    for record in finished.verdicts() {
        assert_ne!(record["reason"], "path-mtu", "blamed on the way: {record}");
    }
    assert!(findings(&finished, "path-mtu-blackhole").is_empty());
}

/// The lab's dnsmasq with a TXT record too large for one packet (`big.example`, 15 strings
/// of 200 bytes) and a small one, answering EDNS up to 4096 bytes.
fn start_big_dns(lab: &mut Lab) {
    let big = vec![format!("\"{}\"", "x".repeat(200)); 15].join(",");
    lab.start_dns_with(&[
        "--edns-packet-max=4096".to_owned(),
        format!("--txt-record=big.example,{big}"),
        "--txt-record=small.example,hello".to_owned(),
    ]);
}

#[test]
fn dns_answers_lost_to_dropped_fragments_are_named_not_blocked() {
    const NAME: &str = "dns_answers_lost_to_dropped_fragments_are_named_not_blocked";
    if !prerequisites(NAME, &["ip", "nft", "dig", "dnsmasq"]) {
        return;
    }
    // A router that never tracked connections, so nothing reassembles on the way (a
    // namespace that ever did keeps reassembling on Linux 5.10 and 6.1): the first fragment of
    // a datagram passes, the others are dropped where they enter it.
    let mut lab = Lab::with_firewall(
        "table netdev lab {
           chain answers {
             type filter hook ingress device \"f1\" priority 0; policy accept;
             ip frag-off & 0x1fff != 0 drop
             ip6 nexthdr ipv6-frag frag frag-off != 0 drop
           }
         }",
    );
    // The client gives up reassembling after 3 s (30 s by default).
    lab.client.ok(
        "sysctl",
        &["-qw", "net.ipv4.ipfrag_time=3", "net.ipv6.ip6frag_time=3"],
    );
    start_big_dns(&mut lab);
    let netwatch = watch(&lab.client, "c0");
    for server in [DNS_V4, DNS_V6] {
        let at = format!("@{server}");
        let small = lab.client.run(
            "dig",
            &["+time=2", "+tries=1", "+short", &at, "small.example", "TXT"],
        );
        assert!(
            small.stdout.starts_with(b"\"hello\""),
            "a small answer must get through: {small:?}"
        );
        let big = lab.client.run(
            "dig",
            &[
                "+time=2",
                "+tries=1",
                "+bufsize=4096",
                "+ignore",
                &at,
                "big.example",
                "TXT",
            ],
        );
        assert!(
            String::from_utf8_lossy(&big.stdout).contains("timed out"),
            "the large answer got through: the lab proves nothing: {big:?}"
        );
    }
    if kernel_reports_reassembly_timeouts() {
        for server in [DNS_V4, DNS_V6] {
            netwatch.wait_for(Duration::from_secs(20), "the reassembly timing out", |r| {
                r["type"] == "verdict"
                    && r["remote"] == server
                    && r["local_drops"]["FRAG_REASM_TIMEOUT"].as_u64() >= Some(1)
            });
        }
    }
    assert_fragments_named(&stop(netwatch));
}

/// The exit records of the fragments test: each resolver's large answer arrived in
/// fragments and (where the kernel reports it) never reassembled, and no finding calls
/// the resolvers blocked.
fn assert_fragments_named(finished: &Finished) {
    for server in [DNS_V4, DNS_V6] {
        let record = finished
            .target_record("egress", "udp", server, Some(53))
            .clone();
        assert_eq!(count(&record, "requests"), 2, "{record}");
        assert_eq!(count(&record, "fragmented_answers"), 1, "{record}");
        if kernel_reports_reassembly_timeouts() {
            assert_eq!(record["local_drops"]["FRAG_REASM_TIMEOUT"], 1, "{record}");
            assert_eq!(count(&record, "answered"), 1, "the small one: {record}");
        }
    }
    for wrong in [
        "dns-blocked",
        "resolver-partially-blocked",
        "dns-transport-blocked",
        "local-firewall-drops",
        "partial-loss",
    ] {
        assert!(
            findings(finished, wrong).is_empty(),
            "{wrong}: {:#?}",
            findings(finished, wrong)
        );
    }
    let status = finished.summary()["fragments"]
        .as_str()
        .expect("fragments status");
    if kernel_reports_reassembly_timeouts() {
        assert_eq!(status, "available");
        let found = findings(finished, "dns-fragments-lost");
        let last = found.last().expect("a dns-fragments-lost finding");
        let summary = last["summary"].as_str().expect("summary");
        assert!(
            summary.starts_with(&format!(
                "Large DNS answers from {DNS_V4}, {DNS_V6} are lost to fragmentation: 2 answers \
                 arrived in fragments and 2 never reassembled"
            )) && summary.contains("1232"),
            "{summary}"
        );
    } else {
        assert!(
            status.starts_with("unavailable: "),
            "a kernel that does not report a reassembly timing out says netwatch cannot tell: \
             {status}"
        );
        assert!(
            finished
                .stderr
                .contains("DNS answers lost to fragments count as answered")
                || finished.summary()["local_drops"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("unavailable")),
            "said once: {}",
            finished.stderr
        );
    }
}

/// Whether the running kernel reports a reassembly timing out as a drop reason
/// (`FRAG_REASM_TIMEOUT`, in its BTF's `enum skb_drop_reason`), read here independently of
/// netwatch's run.
fn kernel_reports_reassembly_timeouts() -> bool {
    kernel_has_drop_reasons()
        && std::fs::read(netwatch::btf::VMLINUX_BTF)
            .ok()
            .and_then(|btf| netwatch::drops::layout(&btf).ok())
            .is_some_and(|(_, reasons)| reasons.value_of("FRAG_REASM_TIMEOUT").is_some())
}
