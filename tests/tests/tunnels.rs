//! The kernel's own tunnel devices and a bond: ipip, gre, sit, ip6tnl, ip6gre, `WireGuard`
//! and bonding are modules this machine's kernel does not have, and Debian's kernels in the
//! matrix do. So these tests are `#[ignore]`d here (shown as ignored, never as passed) and
//! `cargo xtask vm-test` runs them in every guest with `--ignored`.
//!
//! Two namespaces joined by a veth pair (the underlay, 192.0.2.0/24 and `2001:db8:ff::/64`),
//! one tunnel of each kind between them (`WireGuard` with keys and a peer on each side);
//! real pings and TCP connections through each, and netwatch on all the tunnels at once on
//! one side. On 5.10 the kernel's tunnels hand tc ingress their packets behind the outer
//! headers (see `NoLinkHeader` in the eBPF crate): this is the test that shows it.

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use netwatch_tests::{
    clients::Client,
    lab::{Finished, Netns, NetwatchRun, TargetId, netwatch_binary, run_ok, wait_until},
    prerequisites,
};

const LISTENER: &str = env!("CARGO_BIN_EXE_lab-listener");

/// The modules the guests load for these tests.
const MODULES: &[&str] = &[
    "ipip",
    "ip_gre",
    "sit",
    "ip6_tunnel",
    "ip6_gre",
    "wireguard",
    "bonding",
    "dummy",
];

/// A tunnel between the two namespaces: its device name, how it is made, the kind netwatch
/// must name, and the overlay addresses (A's, B's) with their prefix length.
struct Tunnel {
    device: &'static str,
    kind: &'static str,
    link: Link,
    overlay: &'static [(&'static str, &'static str, u8)],
}

/// How a [`Tunnel`]'s two ends are made.
enum Link {
    /// `ip link add DEVICE` with these arguments, then `local` and `remote` on the underlay
    /// of that family (swapped on side B).
    Ip {
        args: &'static [&'static str],
        underlay_v6: bool,
    },
    /// A `WireGuard` device on each side, each the other's one peer over the IPv4 underlay.
    Wireguard,
}

const TUNNELS: &[Tunnel] = &[
    Tunnel {
        device: "t4",
        kind: "ipip",
        link: Link::Ip {
            args: &["type", "ipip"],
            underlay_v6: false,
        },
        overlay: &[("198.51.100.1", "198.51.100.2", 30)],
    },
    Tunnel {
        device: "g4",
        kind: "gre",
        link: Link::Ip {
            args: &["type", "gre"],
            underlay_v6: false,
        },
        overlay: &[
            ("198.51.100.5", "198.51.100.6", 30),
            ("2001:db8:14::1", "2001:db8:14::2", 64),
        ],
    },
    Tunnel {
        device: "s6",
        kind: "sit",
        link: Link::Ip {
            args: &["type", "sit"],
            underlay_v6: false,
        },
        overlay: &[("2001:db8:10::1", "2001:db8:10::2", 64)],
    },
    Tunnel {
        device: "t6",
        kind: "ip6tnl",
        link: Link::Ip {
            args: &["type", "ip6tnl", "mode", "any"],
            underlay_v6: true,
        },
        overlay: &[
            ("198.51.100.9", "198.51.100.10", 30),
            ("2001:db8:11::1", "2001:db8:11::2", 64),
        ],
    },
    Tunnel {
        device: "g6",
        kind: "ip6gre",
        link: Link::Ip {
            args: &["type", "ip6gre"],
            underlay_v6: true,
        },
        overlay: &[
            ("198.51.100.13", "198.51.100.14", 30),
            ("2001:db8:12::1", "2001:db8:12::2", 64),
        ],
    },
    Tunnel {
        device: "wg0",
        kind: "wireguard",
        link: Link::Wireguard,
        overlay: &[
            ("198.51.100.17", "198.51.100.18", 30),
            ("2001:db8:15::1", "2001:db8:15::2", 64),
        ],
    },
];

/// The underlay's addresses: side A's, side B's, IPv4 then IPv6.
const UNDERLAY: [(&str, &str); 2] = [
    ("192.0.2.1", "192.0.2.2"),
    ("2001:db8:ff::1", "2001:db8:ff::2"),
];
/// The port both `WireGuard` ends listen on.
const WIREGUARD_PORT: &str = "51820";

fn load_modules() {
    for module in MODULES {
        run_ok(Command::new("modprobe").arg(module));
    }
}

/// The two namespaces, their underlay, and every tunnel of [`TUNNELS`] between them.
fn tunnels() -> (Netns, Netns) {
    let id = std::process::id();
    let (a, b) = (
        Netns::create(format!("nwtun-a{id}")),
        Netns::create(format!("nwtun-b{id}")),
    );
    run_ok(
        Command::new("ip")
            .args(["link", "add", "u0", "netns", &a.name, "type", "veth"])
            .args(["peer", "name", "u0", "netns", &b.name]),
    );
    let [(a4, b4), (a6, b6)] = UNDERLAY;
    for (ns, v4, v6) in [(&a, a4, a6), (&b, b4, b6)] {
        ns.ok("ip", &["addr", "add", &format!("{v4}/24"), "dev", "u0"]);
        ns.ok(
            "ip",
            &["addr", "add", &format!("{v6}/64"), "dev", "u0", "nodad"],
        );
        ns.ok("ip", &["link", "set", "u0", "up"]);
        ns.ok("ip", &["link", "set", "lo", "up"]);
    }
    for tunnel in TUNNELS {
        for (side, ns) in [&a, &b].into_iter().enumerate() {
            let mut args = vec!["link", "add", tunnel.device];
            match tunnel.link {
                Link::Ip {
                    args: link,
                    underlay_v6,
                } => {
                    let (ours, theirs) = UNDERLAY[usize::from(underlay_v6)];
                    let (local, remote) = if side == 0 {
                        (ours, theirs)
                    } else {
                        (theirs, ours)
                    };
                    args.extend_from_slice(link);
                    args.extend(["local", local, "remote", remote]);
                }
                Link::Wireguard => args.extend(["type", "wireguard"]),
            }
            ns.ok("ip", &args);
            for (ours, theirs, prefix) in tunnel.overlay {
                let address = if side == 0 { ours } else { theirs };
                let cidr = format!("{address}/{prefix}");
                let mut args = vec!["addr", "add", &cidr, "dev", tunnel.device];
                if address.contains(':') {
                    args.push("nodad");
                }
                ns.ok("ip", &args);
            }
        }
        if matches!(tunnel.link, Link::Wireguard) {
            wireguard_peers(tunnel, [&a, &b]);
        }
        for ns in [&a, &b] {
            ns.ok("ip", &["link", "set", tunnel.device, "up"]);
        }
    }
    (a, b)
}

/// Keys for both ends of `tunnel`, each the other's peer, reached over the IPv4 underlay
/// and allowed the other's overlay addresses.
fn wireguard_peers(tunnel: &Tunnel, sides: [&Netns; 2]) {
    let keys = [wg(&["genkey"], ""), wg(&["genkey"], "")];
    let public = keys.clone().map(|key| wg(&["pubkey"], &key));
    let [(a4, b4), _] = UNDERLAY;
    for (side, ns) in sides.into_iter().enumerate() {
        let other = 1 - side;
        let endpoint = format!("{}:{WIREGUARD_PORT}", [a4, b4][other]);
        let allowed = tunnel
            .overlay
            .iter()
            .map(|&(a, b, _)| {
                let address = [a, b][other];
                let host = if address.contains(':') { 128 } else { 32 };
                format!("{address}/{host}")
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut set = ns.command("wg");
        // Not /dev/stdin: the guests' /dev is a bare devtmpfs, without that link.
        set.args(["set", tunnel.device, "private-key", "/proc/self/fd/0"])
            .args(["listen-port", WIREGUARD_PORT, "peer", &public[other]])
            .args(["endpoint", &endpoint, "allowed-ips", &allowed]);
        piped(&mut set, &keys[side]);
    }
}

/// `wg ARGS` with `input` on its standard input: its output, trimmed.
fn wg(args: &[&str], input: &str) -> String {
    let mut command = Command::new("wg");
    command.args(args);
    piped(&mut command, input)
}

/// Runs `command` with `input` on its standard input; its output, trimmed, once it
/// succeeded.
fn piped(command: &mut Command, input: &str) -> String {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{input}\n").as_bytes())
        .expect("writing to stdin");
    let out = child.wait_with_output().expect("waiting");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Pings, a TCP connection answered and one refused, through every tunnel, both families
/// where the tunnel carries both: each judged as on Ethernet, each device named with its
/// kind.
#[test]
#[ignore = "needs the ipip, ip_gre, sit, ip6_tunnel, ip6_gre and wireguard modules: \
            cargo xtask vm-test runs it in Debian's kernels"]
fn traffic_through_the_kernels_tunnels_is_judged_as_on_ethernet() {
    const NAME: &str = "traffic_through_the_kernels_tunnels_is_judged_as_on_ethernet";
    if !prerequisites(NAME, &["ip", "modprobe", "nc", "ping", "wg"]) {
        return;
    }
    load_modules();
    let (a, b) = tunnels();
    let mut listener = b.command(LISTENER);
    listener
        .arg("80")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut listener = listener.spawn().expect("lab-listener");
    wait_until(Duration::from_secs(10), "the listener", || {
        b.run("nc", &["-z", "-w", "1", "192.0.2.2", "80"])
            .status
            .success()
    });
    let netwatch = NetwatchRun::start({
        let mut command = a.command(&netwatch_binary().to_string_lossy());
        for tunnel in TUNNELS {
            command.args(["--iface", tunnel.device]);
        }
        command.args(["--json", "--timeout", "1s"]);
        command
    });
    let attach = netwatch_tests::auto_attach();
    let stderr = netwatch.stderr_text();
    for (device, kind) in TUNNELS.iter().map(|t| (t.device, t.kind)) {
        assert!(
            stderr.contains(&format!("{device} ({kind}, {attach})")),
            "{device} named as {kind}: {stderr}"
        );
    }
    let peers: Vec<&str> = TUNNELS
        .iter()
        .flat_map(|t| t.overlay.iter().map(|(_, peer, _)| *peer))
        .collect();
    // What the peer really did, beside what netwatch says: answered, answered, refused.
    for peer in &peers {
        for (client, answered) in [
            (Client::ping(peer, 2), true),
            (Client::nc(peer, 80, 2), true),
            (Client::nc(peer, 81, 2), false),
        ] {
            let out = client.run(&a);
            assert_eq!(
                out.status.success(),
                answered,
                "`{}`: {}",
                client.line(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let last = peers.last().expect("peers");
    netwatch.wait_for(Duration::from_secs(15), "the last refusal judged", |r| {
        r["type"] == "verdict" && r["remote"] == *last && r["port"] == 81
    });
    let finished = netwatch.stop();
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(
        judged(&finished),
        expected(&peers),
        "(verdict, reason, requests, settled) per target; kernel counters: {}",
        finished.summary()["kernel"]["counters"]
    );
}

/// A target's verdict, reason, requests, and requests answered or rejected.
type Outcome = (String, Option<String>, u64, u64);

/// Every target of the pings and connections to `peers`, and nothing else: the echo
/// answered twice, port 80 answered, port 81 reset.
fn expected(peers: &[&str]) -> BTreeMap<TargetId, Outcome> {
    peers
        .iter()
        .flat_map(|&peer| {
            let icmp = if peer.contains(':') { "icmpv6" } else { "icmp" };
            [
                ((icmp, peer, None), ("ok", None, 2)),
                (("tcp", peer, Some(80)), ("ok", None, 1)),
                (("tcp", peer, Some(81)), ("rejected", Some("tcp-reset"), 1)),
            ]
        })
        .map(|((proto, peer, port), (verdict, reason, requests))| {
            (
                (proto.to_owned(), peer.to_owned(), port),
                (
                    verdict.to_owned(),
                    reason.map(str::to_owned),
                    requests,
                    requests,
                ),
            )
        })
        .collect()
}

/// The targets netwatch reported at exit.
fn judged(finished: &Finished) -> BTreeMap<TargetId, Outcome> {
    finished
        .targets()
        .into_iter()
        .map(|(id, record)| {
            let count = |field: &str| record[field].as_u64().unwrap_or(0);
            let outcome = (
                record["verdict"].as_str().unwrap_or_default().to_owned(),
                record["reason"].as_str().map(str::to_owned),
                count("requests"),
                count("answered") + count("rejected"),
            );
            (id, outcome)
        })
        .collect()
}

/// `--iface` naming a bond's slave: one line naming the bond, exit 1, nothing attached.
#[test]
#[ignore = "needs the bonding and dummy modules: cargo xtask vm-test runs it in Debian's kernels"]
fn a_bond_slave_is_refused_naming_its_bond() {
    const NAME: &str = "a_bond_slave_is_refused_naming_its_bond";
    if !prerequisites(NAME, &["ip", "modprobe"]) {
        return;
    }
    load_modules();
    let ns = Netns::create(format!("nwbond{}", std::process::id()));
    ns.ok("ip", &["link", "add", "nwbond0", "type", "bond"]);
    ns.ok("ip", &["link", "add", "nwslave0", "type", "dummy"]);
    ns.ok("ip", &["link", "set", "nwslave0", "master", "nwbond0"]);
    let out = ns.run(
        &netwatch_binary().to_string_lossy(),
        &["--iface", "nwslave0"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(
            "cannot watch nwslave0: it is a slave of nwbond0, and a request can leave by one \
             slave while its answer comes back by another; watch nwbond0 instead"
        ),
        "{stderr}"
    );
}
