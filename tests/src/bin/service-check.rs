//! The Debian package and its systemd unit as an operator meets them, checked from outside.
//!
//! Runs only inside the guest `cargo xtask service-test` boots: a Debian kernel with the
//! host's own systemd as PID 1, where the build tree, Rust and LLVM are out of sight. It
//! installs the package with `dpkg -i`, runs the packaged binary, then starts the shipped unit
//! (unchanged) and checks what it does with real clients in a namespace lab around the
//! guest's own interface (`Lab::around_this_host`): metrics scraped on loopback, the journal,
//! bpftool, the service's process. Last it removes the package.
//!
//! `service-check --deb PATH --results DIR [--hidden PATH]...`: each check prints
//! `service-check: ok: WHAT (N s)`; the first that fails panics saying why (exit status 101).
//! `systemd-analyze security netwatch` goes to `DIR/security.txt`.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use netwatch_tests::{
    clients::Client,
    lab::{
        DNS_V4, DNS_V6, DNS2_V4, Lab, NetwatchRun, SERVER_V4, bpf_objects_back_to,
        netwatch_bpf_objects, wait_until,
    },
};

/// The unit as the package installs it.
const UNIT: &str = "netwatch.service";

/// Where the unit serves metrics (its `ExecStart=`).
const METRICS_URL: &str = "http://127.0.0.1:9464/metrics";

/// The upstream firewall for this check: DNS to 198.51.100.53 dropped, other DNS let
/// through (the inherited firewall drops all of it), everything else as inherited.
const FIREWALL_DNS: &str = "flush chain inet lab dns\n\
    add rule inet lab dns ip daddr 198.51.100.53 udp dport 53 drop\n\
    add rule inet lab dns udp dport 53 accept\n";

/// This host's own firewall: its output chain drops DNS to 198.51.100.54 (`local_drops`).
const HOST_FIREWALL: &str = "table inet nwhost {\n\
    chain output {\n\
      type filter hook output priority 0; policy accept;\n\
      ip daddr 198.51.100.54 udp dport 53 drop\n\
    }\n\
  }\n";

/// DNS queries dropped by this host's output chain: `local_drops` must count exactly these.
const LOCAL_DROPS: u32 = 3;

/// What the lab's clients (see [`send_traffic`]) must give: (proto, remote, port, verdict).
const EXPECTED: &[(&str, &str, &str, &str)] = &[
    ("udp", DNS_V4, "53", "blackholed"),
    ("udp", DNS_V6, "53", "ok"),
    ("udp", DNS2_V4, "53", "blackholed"),
    ("tcp", SERVER_V4, "80", "ok"),
    ("tcp", SERVER_V4, "9000", "rejected"),
    ("tcp", SERVER_V4, "8443", "rejected"),
    ("icmp", SERVER_V4, "", "blackholed"),
    ("udp", SERVER_V4, "123", "rejected"),
];

/// The rejections among [`EXPECTED`], with the reason the firewall sends.
const REJECTIONS: &[(&str, &str)] = &[
    ("9000", "tcp-reset"),
    ("8443", "icmp-host-prohibited"),
    ("123", "icmp-admin-prohibited"),
];

/// A UDP socket connected to the server's NTP port before the service starts, by a process
/// of another user than the service's (root): it sends one NTP client request when told.
const EARLY_NTP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 123))
print("ready", flush=True)
sys.stdin.readline()
request = bytearray(48)
request[0] = 0x23  # version 4, client mode
request[40:48] = b"netwatch"  # transmit timestamp
s.send(bytes(request))
s.settimeout(2)
try:
    s.recv(512)
except OSError:
    pass
"#;

/// How long a start, a verdict or a stop may take in the emulated guest.
const BOUND: Duration = Duration::from_secs(90);

struct Args {
    deb: PathBuf,
    results: PathBuf,
    hidden: Vec<PathBuf>,
}

impl Args {
    fn from_env() -> Self {
        let mut deb = None;
        let mut results = None;
        let mut hidden = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .unwrap_or_else(|| panic!("{flag} needs a value"));
            match flag.as_str() {
                "--deb" => deb = Some(PathBuf::from(value)),
                "--results" => results = Some(PathBuf::from(value)),
                "--hidden" => hidden.push(PathBuf::from(value)),
                _ => panic!("unknown argument {flag}"),
            }
        }
        Self {
            deb: deb.expect("--deb PATH"),
            results: results.expect("--results DIR"),
            hidden,
        }
    }
}

fn main() {
    let args = Args::from_env();
    let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    assert!(
        init.trim() == "systemd" && Path::new("/run/systemd/system").is_dir(),
        "service-check runs only in the guest of `cargo xtask service-test` (PID 1 here is {:?}, \
         not systemd): it installs a package and takes the default route",
        init.trim()
    );
    let started = Instant::now();
    check("no Rust, no LLVM, no build tree on this host", || {
        out_of_sight(&args.hidden);
    });
    check("dpkg -i installs the package", || install(&args.deb));

    let mut lab = Lab::around_this_host();
    lab.nft(FIREWALL_DNS);
    Lab::nft_in(&lab.client, HOST_FIREWALL);
    lab.start_dns();
    lab.start_listener(&sibling("lab-listener"));

    check(
        "the packaged netwatch judges the lab (--json, as root)",
        || packaged_run(&lab),
    );
    let early = EarlySocket::open(&lab);
    let running = check(
        "the unit starts, attaches, and keeps least privilege",
        start_service,
    );
    check(
        "targets, verdicts and local_drops, read from /metrics on loopback",
        || {
            early.send();
            send_traffic(&lab);
            judged_in_metrics();
        },
    );
    check("systemctl stop detaches everything", || {
        stop_service(&running);
    });
    check(
        "the journal's final report names the senders and this host's drops",
        || final_report(&running),
    );
    check(
        "kill -9, then the restart, leave nothing behind",
        kill_and_restart,
    );
    check("systemd-analyze security netwatch", || {
        security(&args.results);
    });
    check(
        "a unit pointed at a missing interface fails once, with one line",
        unusable_system,
    );
    check("dpkg --purge stops the service and leaves nothing", purge);
    Lab::nft_in(&lab.client, "delete table inet nwhost\n");
    drop(lab);
    println!(
        "service-check: all checks passed in {} s",
        started.elapsed().as_secs()
    );
}

/// Runs one check, saying how long it took.
fn check<T>(what: &str, run: impl FnOnce() -> T) -> T {
    println!("service-check: {what} ...");
    let started = Instant::now();
    let result = run();
    println!(
        "service-check: ok: {what} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    result
}

/// A binary built beside this one (copied into the guest with it).
fn sibling(name: &str) -> String {
    let exe = std::env::current_exe().expect("current_exe");
    exe.with_file_name(name).to_string_lossy().into_owned()
}

fn out_of_sight(hidden: &[PathBuf]) {
    assert!(!hidden.is_empty(), "the guest names what it hid");
    for path in hidden {
        let entries = std::fs::read_dir(path).map_or(0, Iterator::count);
        assert_eq!(entries, 0, "{} is visible in the guest", path.display());
    }
    for tool in ["rustc", "cargo", "bpf-linker", "clang", "llc"] {
        assert!(
            !netwatch_tests::on_path(tool),
            "{tool} is on PATH in the guest"
        );
    }
    // LLVM's directories (`/usr/lib/llvm-N`) are among the hidden ones: empty.
    let llvm: Vec<PathBuf> = ["/usr/lib", "/usr/lib/x86_64-linux-gnu"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("libLLVM")
                || (name.starts_with("llvm-")
                    && std::fs::read_dir(path).map_or(0, Iterator::count) > 0)
        })
        .collect();
    assert!(llvm.is_empty(), "LLVM is visible in the guest: {llvm:?}");
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("could not run {program}: {err}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn install(deb: &Path) {
    let started = Instant::now();
    ok("dpkg", &["-i", &deb.to_string_lossy()]);
    println!(
        "service-check: dpkg -i took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let files = ok("dpkg", &["-L", "netwatch"]);
    for wanted in [
        "/usr/bin/netwatch",
        "/lib/systemd/system/netwatch.service",
        "/usr/share/man/man1/netwatch.1.gz",
        "/usr/share/bash-completion/completions/netwatch",
        "/usr/share/zsh/vendor-completions/_netwatch",
        "/usr/share/fish/vendor_completions.d/netwatch.fish",
        "/usr/share/netwatch/prometheus/netwatch-alerts.yml",
        "/usr/share/netwatch/grafana/netwatch-dashboard.json",
    ] {
        assert!(
            files.lines().any(|line| line == wanted),
            "the package installed no {wanted}:\n{files}"
        );
    }
    // man finds the page by name, and formats it (`-l`: no cat page is written).
    let page = ok("man", &["-w", "netwatch"]);
    assert_eq!(page.trim(), "/usr/share/man/man1/netwatch.1.gz");
    let man = ok("man", &["-P", "cat", "-l", page.trim()]);
    assert!(man.contains("--fail-on"), "man netwatch:\n{man}");
    // Installed, not enabled, not started: the operator chooses.
    assert_eq!(show("UnitFileState"), "disabled");
    assert_eq!(show("ActiveState"), "inactive");
}

/// `netwatch` from the package, as root, watching the lab around this host.
fn packaged_run(lab: &Lab) {
    let mut command = Command::new("/usr/bin/netwatch");
    command.args(["--json", "--timeout", "1s", "--duration", "120s"]);
    let netwatch = NetwatchRun::start(command);
    Client::dig(DNS_V4, "packaged.example").run(&lab.client);
    Client::curl(SERVER_V4, 80).run(&lab.client);
    Client::nc(SERVER_V4, 9000, 1).run(&lab.client);
    for (port, verdict) in [
        (Some(53), "blackholed"),
        (Some(80), "ok"),
        (Some(9000), "rejected"),
    ] {
        netwatch.wait_for(BOUND, &format!("{port:?} {verdict}"), |r| {
            r["type"] == "verdict"
                && r["remote"]
                    .as_str()
                    .is_some_and(|a| a == DNS_V4 || a == SERVER_V4)
                && r["port"].as_u64() == port
                && r["verdict"] == verdict
        });
    }
    let finished = netwatch.stop();
    assert!(finished.status.success(), "{}", finished.stderr);
    let summary = finished.summary();
    assert_eq!(summary["local_drops"], "available", "{summary}");
    assert_eq!(summary["attribution"], "available", "{summary}");
    let targets = finished.targets();
    let dns = &targets[&("udp".to_owned(), DNS_V4.to_owned(), Some(53))];
    let senders: Vec<&str> = dns["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["comm"].as_str())
        .collect();
    assert_eq!(senders, ["dig"], "{dns}");
    let rejected = &targets[&("tcp".to_owned(), SERVER_V4.to_owned(), Some(9000))];
    assert_eq!(rejected["reason"], "tcp-reset", "{rejected}");
    wait_until(BOUND, "the packaged run's programs to go", || {
        bpf_objects_back_to((0, 0))
    });
}

/// `systemctl show -p PROPERTY --value netwatch`.
fn show(property: &str) -> String {
    ok("systemctl", &["show", "-p", property, "--value", UNIT])
        .trim()
        .to_owned()
}

/// What the service's processes wrote in one invocation (stdout and stderr, in order).
fn service_output(invocation: &str) -> String {
    ok(
        "journalctl",
        &[
            "--no-pager",
            "-o",
            "cat",
            &format!("_SYSTEMD_INVOCATION_ID={invocation}"),
        ],
    )
}

/// A started service: its invocation and main process, and its BPF objects (links,
/// programs).
struct Running {
    invocation: String,
    attached: (usize, usize),
}

/// Waits for the current invocation to say it watches, and returns it.
fn watching() -> Running {
    let mut invocation = String::new();
    wait_until(BOUND, "netwatch.service to say it watches c0", || {
        invocation = show("InvocationID");
        !invocation.is_empty() && service_output(&invocation).contains("netwatch: watching c0 (")
    });
    assert_eq!(show("ActiveState"), "active");
    let attached = netwatch_bpf_objects();
    assert!(
        attached.0 > 0 && attached.1 > 0,
        "nothing attached: {attached:?}"
    );
    Running {
        invocation,
        attached,
    }
}

fn start_service() -> Running {
    ok("systemctl", &["start", UNIT]);
    let running = watching();
    let output = service_output(&running.invocation);
    assert!(
        output.contains("netwatch: metrics at http://127.0.0.1:9464/metrics"),
        "{output}"
    );
    let pid = show("MainPID");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .map_or_else(
                || panic!("no {name} in /proc/{pid}/status"),
                |value| value.trim().to_owned(),
            )
    };
    let uid = field("Uid");
    assert!(
        uid.split_whitespace().all(|id| id != "0"),
        "runs as root: Uid {uid}"
    );
    // Once attached only CAP_NET_ADMIN (bit 12) is left; the bounding set is the three.
    assert_eq!(
        field("CapEff"),
        "0000000000001000",
        "effective capabilities"
    );
    let three = (1u64 << 12) | (1 << 38) | (1 << 39);
    assert_eq!(
        field("CapBnd"),
        format!("{three:016x}"),
        "bounding set: CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF"
    );
    assert_eq!(field("NoNewPrivs"), "1");
    running
}

/// [`EARLY_NTP_CLIENT`], waiting to send.
struct EarlySocket {
    child: Child,
}

impl EarlySocket {
    fn open(lab: &Lab) -> Self {
        let mut child = lab
            .client
            .command("python3")
            .args(["-c", EARLY_NTP_CLIENT, SERVER_V4])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut ready = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut ready)
            .expect("the early client says it is ready");
        assert_eq!(ready.trim(), "ready");
        Self { child }
    }

    /// Sends the request and waits for the client to end (its own 2 s bound).
    fn send(mut self) {
        writeln!(self.child.stdin.take().expect("stdin")).expect("telling the client");
        let status = self.child.wait().expect("the early client");
        assert!(status.success(), "the early client failed: {status}");
    }
}

/// The lab's clients, from this host. See [`EXPECTED`].
fn send_traffic(lab: &Lab) {
    for i in 0..LOCAL_DROPS {
        Client::dig(DNS_V4, &format!("blocked{i}.example")).run(&lab.client);
        Client::dig(DNS2_V4, &format!("local{i}.example")).run(&lab.client);
        Client::dig(DNS_V6, &format!("open{i}.example")).run(&lab.client);
    }
    Client::curl(SERVER_V4, 80).run(&lab.client);
    Client::nc(SERVER_V4, 9000, 1).run(&lab.client);
    Client::nc(SERVER_V4, 8443, 1).run(&lab.client);
    Client::ping(SERVER_V4, 2).run(&lab.client);
}

/// One scrape of the unit's metrics, from this host's loopback.
fn scrape() -> Option<String> {
    let out = run("curl", &["-sf", "-m", "5", METRICS_URL]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Samples of `name` in a scrape: their labels and values.
fn samples(scrape: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name).then_some(())?;
            let labels = labels
                .trim_end_matches('}')
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (key, value) = pair.split_once("=\"")?;
                    Some((key.to_owned(), value.trim_end_matches('"').to_owned()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The value of the sample of `name` whose labels include `wanted`.
fn sample(scrape: &str, name: &str, wanted: &[(&str, &str)]) -> Option<f64> {
    samples(scrape, name)
        .into_iter()
        .find(|(labels, _)| {
            wanted
                .iter()
                .all(|(key, value)| labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|(_, value)| value)
}

fn judged_in_metrics() {
    let mut last = String::new();
    let judged = |scrape: &str| {
        EXPECTED.iter().all(|&(proto, remote, port, verdict)| {
            sample(
                scrape,
                "netwatch_target_verdict",
                &[
                    ("direction", "egress"),
                    ("proto", proto),
                    ("remote", remote),
                    ("port", port),
                    ("verdict", verdict),
                ],
            ) == Some(1.0)
        })
    };
    let start = Instant::now();
    loop {
        if let Some(body) = scrape() {
            if judged(&body) {
                last = body;
                break;
            }
            last = body;
        }
        assert!(
            start.elapsed() < BOUND,
            "the metrics did not show {EXPECTED:?} within {BOUND:?}; last scrape:\n{last}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for (port, reason) in REJECTIONS {
        assert_eq!(
            sample(
                &last,
                "netwatch_rejected_total",
                &[("remote", SERVER_V4), ("port", port), ("reason", reason)],
            ),
            Some(1.0),
            "tcp/{port} rejected with {reason}:\n{last}"
        );
    }
    assert_eq!(
        sample(
            &last,
            "netwatch_local_drops_total",
            &[("reason", "NETFILTER_DROP")]
        ),
        Some(f64::from(LOCAL_DROPS)),
        "this host's output chain dropped {LOCAL_DROPS} queries:\n{last}"
    );
    assert_eq!(
        sample(&last, "netwatch_watched_interfaces", &[("interface", "c0")]),
        Some(1.0),
        "{last}"
    );
    // Loopback only.
    let listening = ok("ss", &["-Htln", "sport = :9464"]);
    let addresses: Vec<&str> = listening
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .collect();
    assert_eq!(addresses, ["127.0.0.1:9464"], "{listening}");
}

/// Stops the service and waits until none of its processes or BPF objects is left.
fn stop_and_check_nothing_left() {
    ok("systemctl", &["stop", UNIT]);
    assert_eq!(show("ActiveState"), "inactive");
    wait_until(BOUND, "netwatch's links and programs to go", || {
        bpf_objects_back_to((0, 0))
    });
    let left = run("pgrep", &["-x", "netwatch"]);
    assert!(
        !left.status.success(),
        "netwatch processes left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let filters = ok("tc", &["filter", "show", "dev", "c0", "ingress"])
        + &ok("tc", &["filter", "show", "dev", "c0", "egress"]);
    assert!(
        filters.trim().is_empty(),
        "tc filters left on c0: {filters}"
    );
}

fn stop_service(running: &Running) {
    stop_and_check_nothing_left();
    let output = service_output(&running.invocation);
    assert!(
        !output.contains("error") && !output.contains("warn"),
        "the service complained:\n{output}"
    );
}

/// The cgroup path of this process (the unit it runs in).
fn own_unit() -> String {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .and_then(|path| path.rsplit('/').next())
        .expect("a cgroup2 path")
        .to_owned()
}

/// The report the service printed when it stopped: the last table, diagnosis and requests.
fn final_report(running: &Running) {
    let output = service_output(&running.invocation);
    let report = output.rfind("VERDICT ").map_or_else(
        || panic!("no table in the service's output:\n{output}"),
        |at| &output[at..],
    );
    let row = |remote: &str, port: &str| {
        report
            .lines()
            .find(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(1) == Some(&"out")
                    && fields.get(3) == Some(&remote)
                    && fields.get(4) == Some(&port)
            })
            .unwrap_or_else(|| panic!("no row for {remote} {port}:\n{report}"))
    };
    for &(_, remote, port, verdict) in EXPECTED {
        let line = row(remote, if port.is_empty() { "-" } else { port });
        assert!(line.starts_with(verdict), "{remote} {port}: {line}");
    }
    let local = row(DNS2_V4, "53");
    assert!(
        local.contains(&format!("(dropped here: NETFILTER_DROP {LOCAL_DROPS})")),
        "{local}"
    );
    // dig sends from a thread named isc-net-0000: only /proc/PID/comm says "dig". (Answered
    // requests settle in the kernel before the pending table is read: no names for them.)
    let unit = own_unit();
    for sender in ["dig", "nc"] {
        assert!(
            report.contains(&format!("Sent by {sender} ({unit})")),
            "the diagnosis does not name {sender} ({unit}):\n{report}"
        );
    }
    // A socket another user opened before the service started: its /proc/PID/fd is closed
    // to the service (no CAP_SYS_PTRACE), so nobody is named, as README says.
    let early = row(SERVER_V4, "123");
    assert_eq!(early.split_whitespace().nth(10), Some("-"), "{report}");
    let who = row(SERVER_V4, "-")
        .split_whitespace()
        .nth(10)
        .unwrap_or("-");
    assert!(
        unit.starts_with(who.trim_end_matches('~')),
        "WHO of the pings is {who}, not {unit}:\n{report}"
    );
}

fn kill_and_restart() {
    ok("systemctl", &["start", UNIT]);
    let first = watching();
    let pid = show("MainPID");
    ok("systemctl", &["kill", "--signal=SIGKILL", UNIT]);
    // Restart=on-failure brings it back after RestartSec=.
    wait_until(BOUND, "netwatch.service to restart after SIGKILL", || {
        show("NRestarts") == "1" && show("MainPID") != pid && show("MainPID") != "0"
    });
    let second = watching();
    assert_ne!(second.invocation, first.invocation);
    // The killed one's links and programs went with it: one netwatch's worth is left.
    wait_until(BOUND, "the killed netwatch's objects to go", || {
        bpf_objects_back_to(first.attached)
    });
    assert_eq!(netwatch_bpf_objects(), first.attached);
    stop_and_check_nothing_left();
}

fn security(results: &Path) {
    let report = ok("systemd-analyze", &["security", "--no-pager", UNIT]);
    std::fs::write(results.join("security.txt"), &report).expect("writing security.txt");
    let score = report
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for netwatch.service: "))
        .map_or_else(
            || panic!("no overall exposure level:\n{report}"),
            |(_, score)| score.trim().to_owned(),
        );
    println!("service-check: systemd-analyze security: {score}");
}

/// A drop-in pointing the unit at an interface that does not exist: it must fail with
/// netwatch's one line and stay failed (no restart loop).
fn unusable_system() {
    let dir = Path::new("/run/systemd/system/netwatch.service.d");
    std::fs::create_dir_all(dir).expect("drop-in dir");
    let drop_in = dir.join("missing-interface.conf");
    std::fs::write(
        &drop_in,
        "[Service]\nExecStart=\nExecStart=/usr/bin/netwatch --plain --metrics 127.0.0.1:9464 \
         --iface nosuch0\n",
    )
    .expect("drop-in");
    ok("systemctl", &["daemon-reload"]);
    // Type=exec: the start itself succeeds once the binary runs.
    let _ = run("systemctl", &["start", UNIT]);
    wait_until(BOUND, "netwatch.service to fail", || {
        show("ActiveState") == "failed"
    });
    let invocation = show("InvocationID");
    let (restarts, status, result) = (show("NRestarts"), show("ExecMainStatus"), show("Result"));
    std::fs::remove_file(&drop_in).expect("removing the drop-in");
    ok("systemctl", &["daemon-reload"]);
    ok("systemctl", &["reset-failed", UNIT]);
    assert_eq!(restarts, "0", "restarted {restarts} times");
    assert_eq!(result, "exit-code");
    assert_eq!(
        status, "4",
        "netwatch's exit status for a host it cannot run on"
    );
    let output = service_output(&invocation);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(
        lines,
        [
            "netwatch: error: no such interface: nosuch0 (see `ip link`; interfaces in other \
          network namespaces are not visible)"
        ],
        "one line, the cause"
    );
    assert!(bpf_objects_back_to((0, 0)), "{:?}", netwatch_bpf_objects());
}

fn purge() {
    ok("systemctl", &["start", UNIT]);
    watching();
    ok("dpkg", &["--purge", "netwatch"]);
    wait_until(BOUND, "netwatch's links and programs to go", || {
        bpf_objects_back_to((0, 0))
    });
    let left = run("pgrep", &["-x", "netwatch"]);
    assert!(!left.status.success(), "netwatch still runs after purge");
    assert_eq!(show("LoadState"), "not-found");
    assert!(!Path::new("/usr/bin/netwatch").exists());
    assert!(!run("dpkg", &["-s", "netwatch"]).status.success());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_by_labels() {
        let body = "# HELP x\nnetwatch_target_verdict{direction=\"egress\",proto=\"icmp\",remote=\"198.51.100.10\",port=\"\",verdict=\"ok\"} 0\n\
                    netwatch_target_verdict{direction=\"egress\",proto=\"icmp\",remote=\"198.51.100.10\",port=\"\",verdict=\"blackholed\"} 1\n\
                    netwatch_local_drops_total{reason=\"NETFILTER_DROP\"} 3\n\
                    netwatch_uptime_seconds 12.5\n";
        assert_eq!(
            sample(
                body,
                "netwatch_target_verdict",
                &[("port", ""), ("verdict", "blackholed")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                body,
                "netwatch_local_drops_total",
                &[("reason", "NETFILTER_DROP")]
            ),
            Some(3.0)
        );
        assert_eq!(sample(body, "netwatch_uptime_seconds", &[]), Some(12.5));
        assert_eq!(
            sample(body, "netwatch_target_verdict", &[("verdict", "rejected")]),
            None
        );
    }
}
