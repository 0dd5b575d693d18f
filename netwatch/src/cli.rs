//! The command line. Every bad value is rejected here, before anything touches the kernel,
//! with one line saying what is wrong.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};

use crate::verdict::Verdict;

const ABOUT: &str = "Finds upstream firewall drops passively: which requests this host sends \
                     (DNS and NTP queries, TCP SYNs, pings) never get an answer, per remote port.";

const LONG_ABOUT: &str = "\
Finds upstream firewall drops passively, without sending a single probe.

eBPF programs on tc egress and ingress tag the requests this host already sends (DNS queries \
on UDP/53, NTP client requests on UDP/123, TCP SYNs, ICMP echo requests, and datagrams to the \
--udp-port services) and match what comes back: answers, TCP resets, ICMP unreachables. Each target (proto, remote address, remote port) gets a verdict:

  ok          every recent request was answered
  blackholed  requests go unanswered and nothing comes back (silently dropped)
  rejected    requests are refused (the reason names the TCP reset or ICMP type)
  degraded    some answered, some not
  pending     requests seen, none resolved yet

Needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON. Stop it with Ctrl-C (or SIGTERM); nothing stays \
attached after it exits.";

const AFTER_HELP: &str = "\
Needs Linux 5.10 or later (tcx links from 6.6, clsact filters before).

DUR is a number with a unit: 500ms, 2s, 1m, 1h30m.

Exit status: 0 when it stopped normally (whatever it found), 1 on errors that may pass, 2 on
bad usage, 3 when --fail-on matched a target's final verdict, 4 when this host cannot run
netwatch as asked (kernel too old or without BPF tc support, a missing capability, no such
interface or one that cannot be watched): restarting will not help.";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "netwatch",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Tool>,

    /// Interface to watch: Ethernet, loopback, or a device without a link-layer header
    /// (the kinds tun, wireguard, ppp, ipip, sit, gre, ip6tnl, ip6gre); repeat for several.
    /// Default: the interface(s) holding the default route(s).
    #[arg(short, long = "iface", value_name = "IFACE", value_parser = parse_iface)]
    pub iface: Vec<String>,

    /// A request with no answer and no rejection within this time is unanswered.
    #[arg(long, value_name = "DUR", default_value = "3s", value_parser = parse_timeout, allow_hyphen_values = true)]
    pub timeout: Duration,

    /// Verdicts are judged on the outcomes of this much time before a target's latest one.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_window, allow_hyphen_values = true)]
    pub window: Duration,

    /// Stop after this long (default: run until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "DUR", value_parser = parse_run_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,

    /// Write NDJSON records to stdout instead of the live view: a `verdict` record each
    /// time a target's verdict changes, `diagnosis` records, and a `target` record per
    /// target at exit.
    #[arg(long, conflicts_with = "plain")]
    pub json: bool,

    /// Print the plain table (refreshed when it changes) instead of the full-screen view;
    /// the default when stdout is not a terminal.
    #[arg(long)]
    pub plain: bool,

    /// Serve Prometheus metrics at <http://ADDR/metrics>. A bare port (`9464`) binds to
    /// 127.0.0.1; give an address (`0.0.0.0:9464`) to listen elsewhere.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub metrics: Option<SocketAddr>,

    /// Exit with status 3 when a target of this host's own requests ends with one of these
    /// verdicts (comma-separated, e.g. `blackholed,rejected`): a health check for cron and CI.
    /// Inbound targets never count.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_verdict)]
    pub fail_on: Vec<Verdict>,

    /// Also watch these UDP ports (comma-separated, repeatable, e.g. `51820,5000`) as
    /// request/response services, flow by flow: the first datagram to REMOTE:PORT on a flow
    /// with nothing outstanding is a request, more before anything comes back are
    /// retransmits, any datagram back answers it. DNS (53) and NTP (123) are always watched.
    /// Ports with one-way traffic (syslog 514, SNMP traps 162, NetFlow/IPFIX/sFlow, VXLAN,
    /// Geneve, mDNS, SSDP, DHCP) are refused unless forced with `PORT!` (e.g. `514!`).
    #[arg(long = "udp-port", value_name = "LIST", value_delimiter = ',', value_parser = crate::services::parse_udp_port)]
    pub udp_port: Vec<u16>,

    /// Name the rule (or chain policy) of this host's nftables ruleset that drops each
    /// target's packets. netwatch adds its own table, `inet netwatch_trace`, whose chains only
    /// set `meta nftrace` for the flows of targets dropped on this host (they accept or drop
    /// nothing), reads the kernel's trace events, and removes the table at exit.
    #[arg(long)]
    pub trace_rules: bool,

    /// How to attach to tc: tcx links (kernel 6.6+), clsact filters, or tcx with a clsact
    /// fallback.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,
}

/// Helpers generated from this command line's own definition.
#[derive(Debug, Clone, Subcommand)]
pub enum Tool {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// How the programs are attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttachMode {
    /// tcx where the kernel has it, a clsact qdisc filter otherwise.
    Auto,
    /// tcx links only (Linux 6.6+): detached by the kernel when netwatch exits, however.
    Tcx,
    /// clsact qdisc filters (any kernel with tc BPF); the qdisc is created if missing and
    /// removed again at exit if netwatch created it.
    Clsact,
}

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const MAX_IFACE_LEN: usize = 15;

fn parse_iface(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("interface name is empty".into());
    }
    if value.len() > MAX_IFACE_LEN {
        return Err(format!(
            "interface names have at most {MAX_IFACE_LEN} bytes"
        ));
    }
    if value.contains(['/', ' ', '\0']) || value == "." || value == ".." {
        return Err("not a valid interface name".into());
    }
    Ok(value.to_owned())
}

fn parse_verdict(value: &str) -> Result<Verdict, String> {
    Verdict::from_name(value.trim()).ok_or_else(|| {
        let names: Vec<&str> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
        format!("not a verdict (one of {})", names.join(", "))
    })
}

/// `9464`, `:9464` → 127.0.0.1:9464 (loopback unless told otherwise); `HOST:PORT` as given.
fn parse_listen_addr(value: &str) -> Result<SocketAddr, String> {
    let port_only = value.strip_prefix(':').unwrap_or(value);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    value.parse::<SocketAddr>().map_err(|_| {
        "expected PORT or ADDRESS:PORT, like 9464, 127.0.0.1:9464 or [::1]:9464".to_owned()
    })
}

fn parse_bounded(value: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value)
        .map_err(|err| format!("{err} (expected a number with a unit, like 500ms, 2s or 1m)"))?;
    if duration.is_zero() {
        return Err("must be greater than zero".into());
    }
    if duration < min {
        return Err(format!(
            "must be at least {}",
            humantime::format_duration(min)
        ));
    }
    if duration > max {
        return Err(format!(
            "must be at most {}",
            humantime::format_duration(max)
        ));
    }
    Ok(duration)
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    parse_bounded(value, Duration::from_millis(10), Duration::from_hours(1))
}

fn parse_window(value: &str) -> Result<Duration, String> {
    parse_bounded(value, Duration::from_millis(100), Duration::from_hours(168))
}

fn parse_run_duration(value: &str) -> Result<Duration, String> {
    parse_bounded(value, Duration::from_millis(1), Duration::from_hours(8784))
}

/// Parse outcome of the command line.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Args>),
    /// `--help` or `--version`: print this to stdout and exit 0.
    Info(String),
    /// Bad usage: one line for stderr, exit 2.
    Usage(String),
}

/// Parses the command line, turning clap's multi-line usage errors into a single line.
pub fn parse<I, T>(command_line: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Args::try_parse_from(command_line) {
        Ok(args) => Parsed::Run(Box::new(args)),
        Err(err) => {
            use clap::error::ErrorKind;
            match err.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    Parsed::Info(err.render().to_string())
                }
                _ => Parsed::Usage(one_line_usage_error(&err.render().to_string())),
            }
        }
    }
}

/// `error: invalid value ...\n\nUsage: ...` → `invalid value ... (see --help)`.
fn one_line_usage_error(rendered: &str) -> String {
    let first = rendered
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("bad usage");
    let message = first.strip_prefix("error: ").unwrap_or(first).trim();
    // clap lists the accepted values on a line of their own; keep them on this one.
    match rendered
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("[possible values:"))
    {
        Some(values) => format!("{message} {values} (see --help)"),
        None => format!("{message} (see --help)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The minimum kernel is the one `cargo xtask vm-test` proves, stated alike in `--help`,
    /// the error text (`probe::MINIMUM_KERNEL`), the README and the deploy files.
    #[test]
    fn the_minimum_kernel_is_stated_alike_everywhere() {
        let minimum = format!("Linux {}", crate::probe::MINIMUM_KERNEL);
        assert!(
            AFTER_HELP.contains(&format!("{minimum} or later")),
            "--help"
        );
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for file in [
            "README.md",
            "deploy/README.md",
            "deploy/systemd/netwatch.service",
        ] {
            let text = std::fs::read_to_string(root.join(file)).expect(file);
            assert!(
                text.contains(&format!("{minimum} or later")),
                "{file} states the minimum kernel as \"{minimum} or later\""
            );
            for stale in ["5.5 or later", "Linux 5.8+", "5.8 or later"] {
                assert!(!text.contains(stale), "{file} still says {stale}");
            }
        }
    }

    fn parse_ok(args: &[&str]) -> Args {
        match parse(std::iter::once("netwatch").chain(args.iter().copied())) {
            Parsed::Run(args) => *args,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    fn usage(args: &[&str]) -> String {
        match parse(std::iter::once("netwatch").chain(args.iter().copied())) {
            Parsed::Usage(line) => line,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let args = parse_ok(&[]);
        assert!(args.iface.is_empty());
        assert_eq!(args.timeout, Duration::from_secs(3));
        assert_eq!(args.window, Duration::from_mins(1));
        assert_eq!(args.duration, None);
        assert!(!args.json);
        assert!(!args.plain);
        assert_eq!(args.metrics, None);
        assert!(args.fail_on.is_empty());
        assert_eq!(args.attach, AttachMode::Auto);
        assert!(args.command.is_none());
    }

    #[test]
    fn udp_ports_are_listed_repeated_and_checked_in_one_line() {
        assert!(parse_ok(&[]).udp_port.is_empty());
        assert_eq!(
            parse_ok(&["--udp-port", "51820,5000", "--udp-port", "514!"]).udp_port,
            vec![51820, 5000, 514]
        );
        for (bad, says) in [
            ("0", "0 is not a UDP port"),
            ("70000", "70000 is not a UDP port"),
            ("wireguard", "'wireguard' is not a UDP port"),
            ("514", "port 514 carries one-way traffic"),
        ] {
            let line = usage(&["--udp-port", bad]);
            assert!(line.contains(says), "{bad}: {line}");
            assert!(!line.contains('\n'), "{bad}: {line}");
        }
    }

    #[test]
    fn metrics_bind_to_loopback_unless_told_otherwise() {
        assert_eq!(
            parse_ok(&["--metrics", "9464"]).metrics,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            parse_ok(&["--metrics", ":9464"]).metrics,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            parse_ok(&["--metrics", "0.0.0.0:1"]).metrics,
            Some("0.0.0.0:1".parse().unwrap())
        );
        assert_eq!(
            parse_ok(&["--metrics", "[::1]:9"]).metrics,
            Some("[::1]:9".parse().unwrap())
        );
        assert!(usage(&["--metrics", "localhost"]).contains("PORT"));
    }

    #[test]
    fn fail_on_takes_verdict_names() {
        let args = parse_ok(&["--duration", "5s", "--fail-on", "blackholed,rejected"]);
        assert_eq!(args.fail_on, vec![Verdict::Blackholed, Verdict::Rejected]);
        assert!(usage(&["--fail-on", "broken"]).contains("not a verdict"));
    }

    #[test]
    fn tools_are_subcommands() {
        assert!(matches!(
            parse_ok(&["completions", "bash"]).command,
            Some(Tool::Completions { .. })
        ));
        assert!(matches!(parse_ok(&["man"]).command, Some(Tool::Man)));
        assert!(usage(&["--json", "--plain"]).contains("cannot be used with"));
    }

    #[test]
    fn durations_take_units() {
        let args = parse_ok(&[
            "--timeout",
            "500ms",
            "--window",
            "2s",
            "--duration",
            "1m",
            "--json",
        ]);
        assert_eq!(args.timeout, Duration::from_millis(500));
        assert_eq!(args.window, Duration::from_secs(2));
        assert_eq!(args.duration, Some(Duration::from_mins(1)));
        assert!(args.json);
    }

    #[test]
    fn iface_repeats() {
        let args = parse_ok(&["--iface", "eth0", "-i", "eth1"]);
        assert_eq!(args.iface, vec!["eth0", "eth1"]);
    }

    #[test]
    fn bad_values_give_one_line() {
        for (args, expected) in [
            (vec!["--timeout", "0s"], "greater than zero"),
            (vec!["--timeout", "5"], "unit"),
            (vec!["--timeout", "-1s"], "--timeout"),
            (vec!["--window", "banana"], "--window"),
            (vec!["--duration", "99999999999999999999y"], "--duration"),
            (vec!["--timeout", "2h"], "at most 1h"),
            (vec!["--iface", ""], "empty"),
            (vec!["--iface", "a-very-long-interface-name"], "at most 15"),
            (vec!["--frobnicate"], "--frobnicate"),
            (
                vec!["--attach", "xdp"],
                "'xdp' for '--attach <MODE>' [possible values: auto, tcx, clsact]",
            ),
        ] {
            let line = usage(&args);
            assert!(!line.contains('\n'), "{args:?}: {line:?}");
            assert!(
                line.contains(expected),
                "{args:?}: {line:?} lacks {expected:?}"
            );
            assert!(line.ends_with("(see --help)"));
        }
    }

    #[test]
    fn help_and_version_are_info() {
        assert!(
            matches!(parse(["netwatch", "--help"]), Parsed::Info(text) if text.contains("--timeout"))
        );
        assert!(matches!(parse(["netwatch", "--version"]), Parsed::Info(_)));
    }
}
