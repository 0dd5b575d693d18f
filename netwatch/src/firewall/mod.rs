//! This host's own firewall: which ruleset change came before a failure, and which rule drops
//! a target's packets.
//!
//! - **Changes** ([`changes`]): netwatch listens to the `nf_tables` announcements of its network
//!   namespace (netlink, group `NFNLGRP_NFTABLES`, what `nft monitor` reads): every committed
//!   generation's rule and chain changes become a `ruleset` record, with each rule's text as
//!   `nft -a list` prints it (asked of nft, which turns the kernel's expressions into text).
//!   iptables-nft rules are nftables rules and come the same way; legacy iptables announces
//!   nothing (said once when its tables exist).
//! - **Rules** ([`trace`], `--trace-rules`): netwatch adds its own table, which only sets
//!   `meta nftrace` for the flows of targets dropped on this host, and reads the kernel's
//!   trace events (group `NFNLGRP_NFTRACE`): the event that drops a packet names the rule or
//!   the policy.
//!
//! [`netlink`], [`listing`], [`changes`] and [`trace`] are pure; [`Firewall`] is the shell
//! around them: the sockets, the nft runs, the table's life.

pub(crate) mod changes;
pub(crate) mod listing;
pub(crate) mod netlink;
pub(crate) mod trace;

use std::{
    collections::BTreeSet,
    io::{self, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use self::{
    changes::{Assembler, Pacer, RuleTexts, RulesetRecord},
    netlink::{ChainRef, Family, Message, RuleRef},
    trace::{Hit, Tracer},
};
use crate::{lock, target::Target};

/// netwatch's own table (family inet), for `--trace-rules`.
pub(crate) const TRACE_TABLE: &str = "netwatch_trace";
/// The lock a tracing netwatch holds in its network namespace (longer than any interface
/// name, so it never names one).
const TRACE_LOCK: &str = "netwatch_trace_table";
/// How much the kernel may queue for netwatch before announcements are lost.
const RECEIVE_BUFFER: usize = 4 << 20;

/// One rule (or chain policy) that dropped a target's packets, and how many: the
/// `local_drops_rules` of a target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleDrops {
    pub family: Family,
    pub table: String,
    pub chain: String,
    /// `null` for a chain's policy.
    pub handle: Option<u64>,
    /// The rule as `nft -a list` prints it; for a policy, the chain's `type … policy …;` line.
    pub rule: String,
    /// `drop`, `reject` or `policy`.
    pub verdict: &'static str,
    /// Packets of the target it dropped since tracing began for the target.
    pub count: u64,
}

/// Where the nft command is on `PATH`; `None` when it is not installed (or not on it).
fn find_nft() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nft"))
        .find(|candidate| candidate.is_file())
}

/// Runs nft with `args` (and `script` on stdin); its stdout, or its first error line.
fn nft(binary: &Path, args: &[&str], script: Option<&str>) -> Result<String, String> {
    let mut command = Command::new(binary);
    command
        .args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|err| format!("running nft: {err}"))?;
    if let (Some(script), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin
            .write_all(script.as_bytes())
            .map_err(|err| format!("writing to nft: {err}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|err| format!("running nft: {err}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("Error"))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("failed");
    Err(format!("nft: {}", line.trim()))
}

/// A netlink socket listening to one nfnetlink group, read without blocking.
fn listen(group: u32) -> io::Result<AsyncFd<Socket>> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    socket.add_membership(group)?;
    socket.set_non_blocking(true)?;
    let size = libc::c_int::try_from(RECEIVE_BUFFER).unwrap_or(libc::c_int::MAX);
    // SO_RCVBUFFORCE goes past rmem_max with CAP_NET_ADMIN; without it the default stays,
    // and overflows are counted.
    // SAFETY: setsockopt reads `size` (an int) for the length given.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4),
        );
    }
    // SAFETY: the socket owns its descriptor until it is dropped with the AsyncFd, and
    // `as_raw_fd` always returns that one.
    unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// Legacy iptables tables present in this network namespace (they announce no changes).
fn legacy_tables() -> Vec<String> {
    ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The shell: sockets, nft, the trace table.
pub(crate) struct Firewall {
    monitor: Option<AsyncFd<Socket>>,
    tracing: Option<AsyncFd<Socket>>,
    nft: Option<PathBuf>,
    assembler: Assembler,
    pacer: Pacer,
    texts: RuleTexts,
    tracer: Tracer,
    /// Held while this netwatch's trace table exists.
    trace_lock: Option<lock::Claim>,
    table_added: bool,
    /// The traced set an update failed to install: not tried again every poll.
    refused: Option<BTreeSet<Target>>,
    hits: Vec<Hit>,
    /// `followed`, or `unavailable: <why>`.
    pub ruleset_status: String,
    /// `off`, `available`, or `unavailable: <why>`.
    pub trace_status: String,
    /// Announcements the kernel could not queue (its buffer was full).
    pub lost: u64,
    lost_said: bool,
    legacy_said: bool,
    /// Lines to say once on stderr.
    notes: Vec<String>,
    buffer: Vec<u8>,
}

impl Firewall {
    /// Starts following this namespace's ruleset and, with `trace_rules`, adds the trace
    /// table. Never fails: what does not work is said once ([`Firewall::take_notes`]) and
    /// the rest goes on.
    #[must_use]
    pub(crate) fn start(trace_rules: bool) -> Self {
        let nft_binary = find_nft();
        let mut firewall = Self {
            monitor: None,
            tracing: None,
            nft: nft_binary,
            assembler: Assembler::default(),
            pacer: Pacer::default(),
            texts: RuleTexts::default(),
            tracer: Tracer::default(),
            trace_lock: None,
            table_added: false,
            refused: None,
            hits: Vec::new(),
            ruleset_status: "followed".to_owned(),
            trace_status: "off".to_owned(),
            lost: 0,
            lost_said: false,
            legacy_said: false,
            notes: Vec::new(),
            buffer: vec![0; 256 * 1024],
        };
        match listen(netlink::GROUP_NFTABLES) {
            Ok(socket) => firewall.monitor = Some(socket),
            Err(err) => {
                firewall.ruleset_status = format!("unavailable: listening to nf_tables: {err}");
                firewall.notes.push(format!(
                    "ruleset changes are not followed: listening to nf_tables: {err}"
                ));
            }
        }
        let existing = firewall.list(&["list", "ruleset"]);
        match (&firewall.nft, &existing) {
            (None, _) => firewall.notes.push(
                "nft is not installed: ruleset changes are named by handle, without their text"
                    .to_owned(),
            ),
            (Some(_), Err(err)) => firewall.notes.push(format!(
                "could not list the ruleset ({err}): rule texts are unknown"
            )),
            (Some(_), Ok(_)) => {}
        }
        let existing = existing.unwrap_or_default();
        firewall.texts.absorb(&existing);
        firewall.remove_stale_table(&existing, trace_rules);
        if trace_rules {
            firewall.add_trace_table();
        }
        firewall.check_legacy();
        firewall
    }

    /// A trace table with no live netwatch behind it (one was killed) is removed; a tracing
    /// netwatch keeps the lock that says its table is alive.
    fn remove_stale_table(&mut self, existing: &listing::Listing, trace_rules: bool) {
        let claim = lock::own_netns()
            .and_then(|netns| lock::claim_in(Path::new(lock::LOCK_DIR), TRACE_LOCK, netns));
        let claim = match claim {
            Ok(claim) => claim,
            Err(err) => {
                log::debug!("could not take the trace table's lock: {err}");
                if trace_rules {
                    self.trace_unavailable(&format!(
                        "taking its lock in {}: {err}",
                        lock::LOCK_DIR
                    ));
                }
                return;
            }
        };
        let present = existing
            .tables
            .iter()
            .any(|(family, name)| *family == Family::Inet && name == TRACE_TABLE);
        if claim.alone && present {
            match self.run_nft(&["delete", "table", "inet", TRACE_TABLE], None) {
                Ok(_) => self.notes.push(format!(
                    "removed table inet {TRACE_TABLE}, left behind by a netwatch that was killed"
                )),
                Err(err) => self.notes.push(format!(
                    "could not remove table inet {TRACE_TABLE}, left behind by a netwatch that \
                     was killed: {err}"
                )),
            }
        }
        if trace_rules {
            if claim.alone {
                self.trace_lock = Some(claim);
            } else {
                self.trace_unavailable("another netwatch traces rules in this network namespace");
            }
        }
    }

    fn trace_unavailable(&mut self, why: &str) {
        self.trace_status = format!("unavailable: {why}");
        self.notes.push(format!(
            "rules that drop packets are not named (--trace-rules): {why}"
        ));
    }

    fn add_trace_table(&mut self) {
        if self.trace_lock.is_none() {
            return;
        }
        if self.nft.is_none() {
            self.trace_unavailable("nft is not installed");
            return;
        }
        let socket = match listen(netlink::GROUP_NFTRACE) {
            Ok(socket) => socket,
            Err(err) => {
                self.trace_unavailable(&format!("listening to nf_tables traces: {err}"));
                return;
            }
        };
        match self.run_nft(&["-f", "-"], Some(&trace::table_script())) {
            Ok(_) => {
                self.table_added = true;
                self.tracing = Some(socket);
                "available".clone_into(&mut self.trace_status);
            }
            Err(err) => {
                self.trace_unavailable(&format!("adding table inet {TRACE_TABLE}: {err}"));
            }
        }
    }

    /// Says once that legacy iptables rules exist and their changes are not followed; checked
    /// at start and when the run loop asks (they may appear later).
    pub(crate) fn check_legacy(&mut self) {
        if self.legacy_said {
            return;
        }
        let tables = legacy_tables();
        if !tables.is_empty() {
            self.legacy_said = true;
            self.notes.push(format!(
                "legacy iptables tables are loaded here ({}): their changes are not followed \
                 (only nftables, iptables-nft included, announces changes)",
                tables.join(", ")
            ));
        }
    }

    /// Lines to say once on stderr, since the last call.
    pub(crate) fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn run_nft(&self, args: &[&str], script: Option<&str>) -> Result<String, String> {
        let binary = self.nft.as_deref().ok_or("nft is not installed")?;
        nft(binary, args, script)
    }

    fn list(&self, args: &[&str]) -> Result<listing::Listing, String> {
        let mut full = vec!["-a"];
        full.extend_from_slice(args);
        self.run_nft(&full, None).map(|text| listing::parse(&text))
    }

    /// Resolves when an announcement or a trace event is waiting; never without sockets.
    /// Clears the readiness: [`Firewall::drain`] must follow.
    pub(crate) async fn readable(&self) {
        tokio::select! {
            () = ready(self.monitor.as_ref()) => {}
            () = ready(self.tracing.as_ref()) => {}
        }
    }

    /// Reads everything waiting, at `now_ns`.
    pub(crate) fn drain(&mut self, now_ns: u64) {
        let mut buffer = std::mem::take(&mut self.buffer);
        for which in [Which::Monitor, Which::Tracing] {
            loop {
                let socket = match which {
                    Which::Monitor => self.monitor.as_ref(),
                    Which::Tracing => self.tracing.as_ref(),
                };
                let Some(socket) = socket else { break };
                match socket.get_ref().recv(&mut &mut buffer[..], 0) {
                    Ok(size) => self.take_in(&buffer[..size], now_ns),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                        self.lost += 1;
                        if !self.lost_said {
                            self.lost_said = true;
                            self.notes.push(
                                "the kernel dropped nf_tables announcements netwatch could not \
                                 read in time: some ruleset changes or traced drops are missing"
                                    .to_owned(),
                            );
                        }
                    }
                    Err(err) => {
                        log::warn!("reading nf_tables announcements: {err}");
                        break;
                    }
                }
            }
        }
        self.buffer = buffer;
    }

    fn take_in(&mut self, datagram: &[u8], now_ns: u64) {
        for message in netlink::parse_datagram(datagram) {
            match message {
                Ok(Message::Trace(event)) => {
                    if let Some(hit) = self.tracer.event(&event) {
                        self.hits.push(hit);
                    }
                }
                Ok(message) => {
                    if let Some(commit) = self.assembler.push(message, now_ns) {
                        self.pacer.offer(commit);
                    }
                }
                Err(err) => log::debug!("{err}"),
            }
        }
    }

    /// The `ruleset` records due at `now_ns`, with the texts of added rules asked of nft.
    pub(crate) fn flush(&mut self, now_ns: u64) -> Vec<RulesetRecord> {
        let groups = self.pacer.flush(now_ns);
        // Chains with rules added, and chains added or given a new policy.
        let chains: BTreeSet<ChainRef> = groups
            .iter()
            .flatten()
            .flat_map(|commit| {
                let rules = commit
                    .rules
                    .iter()
                    .filter(|(op, _)| *op == netlink::Op::Add)
                    .map(|(_, rule)| &rule.chain);
                let chains = commit
                    .chains
                    .iter()
                    .filter(|(op, _, _)| *op == netlink::Op::Add)
                    .map(|(_, chain, _)| chain);
                rules.chain(chains)
            })
            .cloned()
            .collect();
        // Bounded: one listing per chain changed, at most a handful per flush.
        for chain in chains.iter().take(8) {
            self.refresh(chain);
        }
        self.texts.records(groups)
    }

    /// Reads one chain's rules again.
    fn refresh(&mut self, chain: &ChainRef) {
        let family = chain.family.as_str();
        match self.list(&["list", "chain", family, &chain.table, &chain.chain]) {
            Ok(listing) => self.texts.absorb(&listing),
            Err(err) => log::debug!("listing {chain}: {err}"),
        }
    }

    /// The drops traced since the last call, each with its rule's text.
    pub(crate) fn take_drops(&mut self) -> Vec<(Target, RuleDrops)> {
        let hits = std::mem::take(&mut self.hits);
        let mut drops = Vec::with_capacity(hits.len());
        for hit in hits {
            let text = if let Some(handle) = hit.handle {
                let rule = RuleRef {
                    chain: hit.chain.clone(),
                    handle,
                };
                if self.texts.get(&rule).is_none() {
                    self.refresh(&hit.chain);
                }
                self.texts
                    .get(&rule)
                    .unwrap_or(changes::UNKNOWN_TEXT)
                    .to_owned()
            } else {
                if self.texts.policy_line(&hit.chain).is_none() {
                    self.refresh(&hit.chain);
                }
                self.texts
                    .policy_line(&hit.chain)
                    .unwrap_or("policy drop")
                    .to_owned()
            };
            drops.push((
                hit.target,
                RuleDrops {
                    family: hit.chain.family,
                    table: hit.chain.table,
                    chain: hit.chain.chain,
                    handle: hit.handle,
                    verdict: trace::verdict_word(hit.handle, &text),
                    rule: text,
                    count: 1,
                },
            ));
        }
        drops
    }

    /// Traces exactly `wanted` (see [`trace::wanted`]) from now on.
    pub(crate) fn trace(&mut self, wanted: BTreeSet<Target>) {
        if !self.table_added || self.refused.as_ref() == Some(&wanted) {
            return;
        }
        let Some(script) = trace::update_script(&self.tracer.traced, &wanted) else {
            return;
        };
        match self.run_nft(&["-f", "-"], Some(&script)) {
            Ok(_) => {
                self.tracer.traced = wanted;
                self.refused = None;
            }
            Err(err) => {
                log::warn!("updating what is traced: {err}");
                self.refused = Some(wanted);
            }
        }
    }

    /// Whether `--trace-rules` works in this run.
    #[must_use]
    pub(crate) fn tracing(&self) -> bool {
        self.table_added
    }
}

/// Resolves when `socket` has something to read (clearing the readiness); never without one.
async fn ready(socket: Option<&AsyncFd<Socket>>) {
    match socket {
        Some(socket) => {
            if let Ok(mut guard) = socket.readable().await {
                guard.clear_ready();
            }
        }
        None => std::future::pending().await,
    }
}

#[derive(Clone, Copy)]
enum Which {
    Monitor,
    Tracing,
}

impl Drop for Firewall {
    /// The trace table goes with netwatch (a killed one's goes at the next start).
    fn drop(&mut self) {
        if self.table_added
            && let Err(err) = self.run_nft(&["delete", "table", "inet", TRACE_TABLE], None)
        {
            eprintln!("netwatch: could not remove table inet {TRACE_TABLE}: {err}");
        }
    }
}
