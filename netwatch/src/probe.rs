//! The kernel shell: loads the eBPF programs, attaches them to interfaces, reads their maps,
//! and detaches everything when dropped.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    os::fd::{AsFd as _, OwnedFd},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, LinkOrder, RawTracePoint, SchedClassifier,
        TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
};
use netwatch_common::{
    CONNECT4_PROGRAM, CONNECT6_PROGRAM, SENDMSG4_PROGRAM, SENDMSG6_PROGRAM, SOCK_CREATE_PROGRAM,
    SOCK_RELEASE_PROGRAM, SOCKET_OWNERS_MAP, SocketOwner,
};
use netwatch_common::{
    COUNTERS_MAP, DROP_CONFIG_GLOBAL, DROP_PROGRAM, DROP_TRACEPOINT, DropConfig, EGRESS_PROGRAM,
    INGRESS_PROGRAM, KernelCounter, LOCAL_ADDRESSES_CAPACITY, LOCAL_ADDRESSES_MAP,
    LOCAL_DROPS_CAPACITY, LOCAL_DROPS_MAP, LocalDropKey, NEXT_SLOT_MAP, PENDING_CAPACITY,
    PENDING_MAP, PendingRequest, RETRANSMIT_CONFIG_GLOBAL, RETRANSMIT_PROGRAM,
    RETRANSMIT_TRACEPOINT, RETRANSMITS_CAPACITY, RETRANSMITS_MAP, RequestKey, RetransmitConfig,
    Retransmits, SLOT_OWNERS_MAP, TARGET_SLOTS_MAP, TARGETS_CAPACITY, TARGETS_MAP, TIMEOUT_GLOBAL,
    TargetCounters, TargetKey,
};
use netwatch_common::{DNS_PORT, NTP_PORT, UDP_PORT_FLOW, UDP_PORT_NTP, UDP_PORTS, UDP_PORTS_MAP};
use thiserror::Error;

use crate::{
    batch, btf,
    cli::AttachMode,
    drops::DropReasons,
    interfaces::Interface,
    sock_diag::SockDiag,
    target::{ip_from_key, ip_to_key},
};

/// The eBPF programs built by build.rs, for kernels with BPF compare-and-swap (5.12+).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwatch-ebpf"));
/// The same programs for older kernels (the `no-cmpxchg` build): a settled entry is claimed
/// by deleting it, a tombstone put back with an insert.
static EBPF_OBJECT_NO_CMPXCHG: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwatch-ebpf-no-cmpxchg"));

/// Which build of the programs a [`Probe`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Settles entries in place with compare-and-swap (Linux 5.12+).
    CompareAndSwap,
    /// Claims entries by deleting them (Linux 5.10 and 5.11).
    NoCompareAndSwap,
}

impl Build {
    /// The build this kernel can run.
    #[must_use]
    pub fn for_this_kernel() -> Self {
        if crate::features::has_cmpxchg() {
            Self::CompareAndSwap
        } else {
            Self::NoCompareAndSwap
        }
    }

    fn object(self) -> &'static [u8] {
        match self {
            Self::CompareAndSwap => EBPF_OBJECT,
            Self::NoCompareAndSwap => EBPF_OBJECT_NO_CMPXCHG,
        }
    }
}

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("could not load netwatch's eBPF programs: {0}")]
    Load(String),
    /// The verifier rejected a program: `reason` is the end of its log, where it says why.
    #[error(
        "the kernel's verifier refused netwatch's program {program} ({errno}); the end of its \
         log says why:\n{reason}"
    )]
    Refused {
        program: &'static str,
        errno: std::io::Error,
        reason: String,
    },
    /// The kernel cannot load BPF tc classifiers at all.
    #[error(
        "this kernel cannot load BPF tc classifiers ({0}); netwatch needs Linux \
         {MINIMUM_KERNEL} or later built with CONFIG_BPF_SYSCALL and CONFIG_NET_CLS_BPF"
    )]
    Unsupported(String),
    #[error("netwatch needs Linux {MINIMUM_KERNEL} or later; this is Linux {0}")]
    KernelTooOld(String),
    #[error("could not attach to {iface}: {reason}")]
    Attach { iface: String, reason: String },
    #[error("could not read the kernel map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error(
        "could not map the kernel's target counters into memory ({0}); netwatch needs Linux \
         {MINIMUM_KERNEL} or later"
    )]
    Mmap(std::io::Error),
}

/// How one interface ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Tcx,
    /// A clsact qdisc filter; `created_qdisc` when netwatch added the qdisc.
    Clsact {
        created_qdisc: bool,
    },
}

impl Attached {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Clsact { .. } => "clsact",
        }
    }
}

struct Attachment {
    iface: String,
    ifindex: u32,
    via: Attached,
    links: Vec<(&'static str, SchedClassifierLinkId)>,
    /// Held while attached: tells other netwatch processes these filters are not orphans.
    lock: Option<crate::lock::InterfaceLock>,
}

/// The kernel's per-target counter array, mapped read-only into this process: every
/// target's counters are read without a syscall.
struct CounterArray {
    mapping: memmap2::Mmap,
    // Keeps the map alive as long as the mapping.
    _map: MapData,
}

impl CounterArray {
    fn map(map: MapData) -> Result<Self, ProbeError> {
        let len = TARGETS_CAPACITY as usize * size_of::<TargetCounters>();
        // SAFETY: maps a BPF_F_MMAPABLE array read-only and shared, `len` bytes: exactly the
        // array. The kernel writes it meanwhile, so it is only ever read with volatile loads
        // (`read`), never through references to its bytes.
        let mapping = unsafe { memmap2::MmapOptions::new().len(len).map(&map.fd().as_fd()) }
            .map_err(ProbeError::Mmap)?;
        Ok(Self { mapping, _map: map })
    }

    /// The counters at `slot` as they are now. The kernel updates each field atomically;
    /// two fields read a few nanoseconds apart may disagree by an event, which the next
    /// read settles.
    fn read(&self, slot: u32) -> Option<TargetCounters> {
        let slot = usize::try_from(slot)
            .ok()
            .filter(|s| *s < TARGETS_CAPACITY as usize)?;
        #[expect(
            clippy::cast_ptr_alignment,
            reason = "an mmap is page-aligned, more than TargetCounters needs"
        )]
        let base = self.mapping.as_ptr().cast::<TargetCounters>();
        // SAFETY: in bounds of the mapping (page-aligned, so aligned); volatile because the
        // kernel writes it.
        Some(unsafe { std::ptr::read_volatile(base.add(slot)) })
    }
}

/// `BPF_NOEXIST` from the kernel's UAPI: insert only where the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Removals per sweep made one entry at a time, comparing (see
/// `Probe::remove_pending_all`); more go in batches.
const ONE_BY_ONE_REMOVALS: usize = 1024;

/// Free slots in a row, past the kernel's hint, after which no claim can lie further on.
/// The hint is written without atomics and can move backwards; claims then land at most a
/// few slots past a given-back slot (one per CPU racing), so 64 covers any machine.
const SLOT_PROBE_GAP: u32 = 64;

/// The loaded programs and their maps.
pub struct Probe {
    ebpf: Ebpf,
    pending: HashMap<MapData, RequestKey, PendingRequest>,
    /// The pending table's descriptor again, for the batch operations aya does not wrap;
    /// `None` once they failed (a kernel before 5.6): then a key at a time.
    pending_batch: Option<OwnedFd>,
    /// The batch walk's chunk buffers, kept across polls.
    pending_lookup: batch::Lookup<RequestKey, PendingRequest>,
    target_slots: HashMap<MapData, TargetKey, u32>,
    slot_owners: HashMap<MapData, u32, TargetKey>,
    next_slot: Array<MapData, u32>,
    targets: CounterArray,
    /// Slot → target, for the slots learnt so far.
    known_slots: Vec<(u32, TargetKey)>,
    /// Slots queued for learning whose owner is not confirmed yet.
    unresolved_slots: Vec<u32>,
    /// Slots below this were queued for learning.
    scanned_slots: u32,
    counters: PerCpuArray<MapData, u64>,
    local_addresses: HashMap<MapData, [u8; 16], u8>,
    /// Whether the kernel has lookup-and-delete for hash maps (5.14+); learnt on first use.
    take_supported: bool,
    /// What [`Self::local_addresses`] holds.
    known_local: BTreeSet<[u8; 16]>,
    attachments: Vec<Attachment>,
    /// The `skb:kfree_skb` program's state: its maps and the kernel's reason names, or why
    /// this kernel cannot have it.
    local_drops: Result<LocalDrops, String>,
    /// The socket owner map, once the cgroup socket programs are attached, or why they are
    /// not.
    owners: Result<HashMap<MapData, u64, SocketOwner>, String>,
    /// The `tcp:tcp_retransmit_skb` program's map, or why this kernel cannot have it.
    retransmits: Result<Retransmitting, String>,
    /// Asks stalled connections' sockets whether their head got through; opened on first
    /// use, `Err` (said once at debug level) when it cannot be.
    sock_diag: Option<Result<SockDiag, ()>>,
}

/// The retransmission program's map, once it is loaded.
struct Retransmitting {
    connections: HashMap<MapData, u64, Retransmits>,
    attached: bool,
}

/// The local drop program's maps, once it is loaded.
struct LocalDrops {
    drops: HashMap<MapData, LocalDropKey, u64>,
    reasons: DropReasons,
    attached: bool,
}

/// Read access to the kernel's tables, so the poll loop can run against fakes in tests.
pub trait KernelTables {
    /// Calls `each` with every target's cumulative counters.
    fn read_targets(
        &mut self,
        each: &mut dyn FnMut(&TargetKey, &TargetCounters),
    ) -> Result<(), ProbeError>;
    /// Replaces `entries` with the pending table's entries (a buffer kept across polls).
    fn read_pending_into(
        &mut self,
        entries: &mut Vec<(RequestKey, PendingRequest)>,
    ) -> Result<(), ProbeError>;
    /// The pending table's entries, in a new buffer.
    fn read_pending(&mut self) -> Result<Vec<(RequestKey, PendingRequest)>, ProbeError> {
        let mut entries = Vec::new();
        self.read_pending_into(&mut entries)?;
        Ok(entries)
    }
    /// Removes a pending entry; a missing one is not an error.
    fn remove_pending(&mut self, key: &RequestKey) -> Result<(), ProbeError>;
    /// Removes these pending entries, each only if it still holds the request first sent at
    /// the time given (the kernel may have put a new one under the key since it was read);
    /// missing ones are not an error.
    fn remove_pending_all(&mut self, entries: &[(RequestKey, u64)]) -> Result<(), ProbeError> {
        entries
            .iter()
            .try_for_each(|(key, _)| self.remove_pending(key))
    }
    /// [`KernelCounter`]s, summed over CPUs.
    fn read_counters(&mut self) -> Result<[u64; KernelCounter::COUNT], ProbeError>;
    /// Cumulative local drops: (target, kernel drop reason value, count). Empty when the
    /// drop program is not running.
    fn read_local_drops(&mut self) -> Result<Vec<(TargetKey, u32, u64)>, ProbeError> {
        Ok(Vec::new())
    }
    /// The owner the cgroup socket programs recorded for a socket cookie, if any.
    fn socket_owner(&mut self, _cookie: u64) -> Option<SocketOwner> {
        None
    }
    /// The connections the retransmission program follows: (kernel socket address, what
    /// its retransmissions showed). Empty when the program is not running.
    fn read_retransmits(&mut self) -> Result<Vec<(u64, Retransmits)>, ProbeError> {
        Ok(Vec::new())
    }
    /// Stops following these connections (done with, or gone); missing ones are no error.
    fn forget_retransmits(&mut self, _sockets: &[u64]) {}
    /// Whether the socket of a connection that stalled reports bytes acknowledged since the
    /// retransmission program last saw it (its head got through with no retransmission to
    /// show it). `false` when the socket is gone or cannot be asked.
    fn acked_since(&mut self, _connection: &Retransmits) -> bool {
        false
    }
    /// Whether TCP's black-hole detection (`net.ipv4.tcp_mtu_probing`, IPv4 and IPv6) is on
    /// in netwatch's network namespace: stalls then recover by themselves, mostly.
    fn mtu_probing(&mut self) -> bool {
        false
    }
}

/// The kernel's owner map as the attribution join sees it.
pub struct Owners<'a>(pub &'a mut dyn KernelTables);

impl crate::attribution::OwnerLookup for Owners<'_> {
    fn socket_owner(&mut self, cookie: u64) -> Option<SocketOwner> {
        self.0.socket_owner(cookie)
    }
}

/// Claims `iface` for this netwatch (see [`crate::lock`]) and, when no other live netwatch
/// watches it, removes filters of netwatch's programs a killed one left there. Without a
/// claim (no /run/netwatch, say, when running unprivileged with capabilities) it cannot
/// tell, and removes nothing.
fn claim_and_remove_orphans(iface: &str) -> Option<crate::lock::InterfaceLock> {
    let claim = match crate::lock::claim(iface) {
        Ok(claim) => claim,
        Err(err) => {
            log::info!(
                "cannot lock {iface} under {} ({err}): filters a killed netwatch left there stay",
                crate::lock::LOCK_DIR
            );
            return None;
        }
    };
    if claim.alone {
        for (name, direction) in [
            (EGRESS_PROGRAM, TcAttachType::Egress),
            (INGRESS_PROGRAM, TcAttachType::Ingress),
        ] {
            match tc::qdisc_detach_program(iface, direction, name) {
                Ok(()) => eprintln!(
                    "netwatch: removed a {name} filter left on {iface} by a netwatch that was killed"
                ),
                Err(err) => log::debug!("no orphaned {name} filter on {iface}: {err}"),
            }
        }
    }
    Some(claim.lock)
}

fn first_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches(['.', ':'])
        .to_owned()
}

/// The oldest kernel netwatch runs on: the oldest `cargo xtask vm-test` proves.
pub const MINIMUM_KERNEL: &str = "5.10";

/// Lines from the end of a verifier log shown in an error: the rejection and the
/// instructions just before it (the last line is the verifier's statistics).
const VERIFIER_LOG_LINES: usize = 6;

/// A program that failed to load: the verifier's own reason when it refused it, a missing
/// feature only when the kernel really cannot load tc classifiers.
fn load_error(program: &'static str, err: aya::programs::ProgramError) -> ProbeError {
    use aya::programs::{ProgramError, ProgramType};
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if matches!(
                aya::sys::is_program_supported(ProgramType::SchedClassifier),
                Ok(false)
            ) {
                return ProbeError::Unsupported(io_error.to_string());
            }
            let log = verifier_log.to_string();
            let reason = log_tail(&log, VERIFIER_LOG_LINES);
            ProbeError::Refused {
                program,
                errno: io_error,
                reason: if reason.is_empty() {
                    "  (the verifier left no log)".to_owned()
                } else {
                    reason
                },
            }
        }
        other => ProbeError::Load(first_line(&other)),
    }
}

/// The last `n` non-empty lines of `log`, indented.
fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `major.minor` of a kernel release such as `6.1.0-56-cloud-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK` rather than to the cgroup: with
/// a small limit (64 KiB by default) and no `CAP_SYS_RESOURCE` to raise it, map creation
/// fails with EPERM. Says so, and what to do, instead of only EPERM.
fn with_memlock_hint(error: String) -> String {
    let old_kernel = running_kernel().is_some_and(|(_, version)| version < (5, 11));
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut limit) } == 0;
    if !(old_kernel
        && read
        && limit.rlim_cur != libc::RLIM_INFINITY
        && error.contains("Operation not permitted"))
    {
        return error;
    }
    format!(
        "{error}; Linux before 5.11 charges BPF maps to the locked-memory limit, {} KiB here: \
         raise it (`ulimit -l unlimited`, or LimitMEMLOCK=infinity in a systemd unit) or run \
         as root",
        limit.rlim_cur / 1024
    )
}

/// The first kernel with tcx (BPF links on tc hooks).
const TCX_KERNEL: (u32, u32) = (6, 6);

/// The running kernel's release and `major.minor`, when it can be read.
fn running_kernel() -> Option<(String, (u32, u32))> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim().to_owned();
    let version = kernel_version(&release)?;
    Some((release, version))
}

/// `Err` with one line naming the minimum on a kernel older than [`MINIMUM_KERNEL`].
fn check_kernel_version() -> Result<(), ProbeError> {
    // Cannot tell: let the load say what is wrong.
    match (running_kernel(), kernel_version(MINIMUM_KERNEL)) {
        (Some((release, found)), Some(minimum)) if found < minimum => {
            Err(ProbeError::KernelTooOld(release))
        }
        _ => Ok(()),
    }
}

impl Probe {
    /// Loads (but does not attach) the programs, with `timeout` compiled in.
    pub fn load(timeout: Duration) -> Result<Self, ProbeError> {
        Self::load_build(timeout, Build::for_this_kernel())
    }

    /// [`Probe::load`] with the build of the programs the tests choose (both builds run on a
    /// kernel with compare-and-swap).
    #[cfg(feature = "test-helpers")]
    pub fn load_for_tests(timeout: Duration, build: Build) -> Result<Self, ProbeError> {
        Self::load_build(timeout, build)
    }

    fn load_build(timeout: Duration, build: Build) -> Result<Self, ProbeError> {
        check_kernel_version()?;
        log::debug!("loading the {build:?} build of the eBPF programs");
        let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // Parsing the kernel's BTF takes tens of MiB for a moment: a child process does it
        // (not even netwatch's peak memory counts them). Where it cannot run, a thread of
        // this process, with large blocks mapped apart and the heap trimmed after.
        let layout = btf::layout_in_child().unwrap_or_else(parse_layout_here);
        let drop_config = layout
            .drops
            .as_ref()
            .map_or(DropConfig::disabled(), |(config, _)| *config);
        let retransmit_config = layout
            .retransmits
            .as_ref()
            .map_or(RetransmitConfig::disabled(), |config| *config);
        // Named here: the names live as long as netwatch, not in the parser's arena.
        let reasons = layout.drops.map(|(_, enumerators)| {
            DropReasons::from_enumerators(
                enumerators
                    .iter()
                    .map(|(name, value)| (name.as_str(), *value)),
            )
        });
        let mut loader = EbpfLoader::new();
        loader
            .override_global(TIMEOUT_GLOBAL, &timeout_ns, true)
            .override_global(DROP_CONFIG_GLOBAL, &drop_config, true)
            .override_global(RETRANSMIT_CONFIG_GLOBAL, &retransmit_config, true);
        let mut ebpf = loader.load(build.object()).map_err(|err| {
            log::debug!("eBPF object load failed: {err:?}");
            ProbeError::Load(with_memlock_hint(first_line(&err)))
        })?;
        for name in [EGRESS_PROGRAM, INGRESS_PROGRAM] {
            let program = classifier(&mut ebpf, name)?;
            program.load().map_err(|err| {
                log::debug!("{name} failed to load: {err:?}");
                load_error(name, err)
            })?;
        }
        let pending_map = take_map(&mut ebpf, PENDING_MAP)?;
        let pending_batch = match &pending_map {
            aya::maps::Map::HashMap(data) => data.fd().as_fd().try_clone_to_owned().ok(),
            _ => None,
        };
        let pending = HashMap::try_from(pending_map).map_err(|source| ProbeError::Map {
            map: PENDING_MAP,
            source,
        })?;
        let target_slots = typed_map(&mut ebpf, TARGET_SLOTS_MAP)?;
        let slot_owners = typed_map(&mut ebpf, SLOT_OWNERS_MAP)?;
        let next_slot = typed_map(&mut ebpf, NEXT_SLOT_MAP)?;
        let targets = match take_map(&mut ebpf, TARGETS_MAP)? {
            aya::maps::Map::Array(data) => CounterArray::map(data)?,
            _ => return Err(ProbeError::Load(format!("{TARGETS_MAP} is not an array"))),
        };
        let local_addresses = typed_map(&mut ebpf, LOCAL_ADDRESSES_MAP)?;
        let counters = typed_map(&mut ebpf, COUNTERS_MAP)?;
        let local_drops = reasons.and_then(|reasons| load_drops(&mut ebpf, reasons));
        let retransmits = layout.retransmits.and_then(|_| load_retransmits(&mut ebpf));
        // NTP is watched by default, like DNS (which needs no entry: the programs know 53).
        set_udp_ports(&mut ebpf, &[(NTP_PORT, UDP_PORT_NTP)])?;
        Ok(Self {
            local_drops,
            ebpf,
            pending,
            pending_batch,
            pending_lookup: batch::Lookup::new(),
            target_slots,
            slot_owners,
            next_slot,
            targets,
            known_slots: Vec::new(),
            unresolved_slots: Vec::new(),
            scanned_slots: 0,
            counters,
            local_addresses,
            take_supported: true,
            known_local: BTreeSet::new(),
            attachments: Vec::new(),
            owners: Err("not attached yet".to_owned()),
            retransmits,
            sock_diag: None,
        })
    }

    /// Tells the programs this host's addresses: a request arriving is one asked of this
    /// host only when sent to one of them. Adds the new ones, removes the gone ones; at most
    /// [`LOCAL_ADDRESSES_CAPACITY`] are kept (more is one debug line).
    pub fn set_local_addresses(
        &mut self,
        addresses: impl IntoIterator<Item = IpAddr>,
    ) -> Result<(), ProbeError> {
        let wanted: BTreeSet<[u8; 16]> = addresses.into_iter().map(ip_to_key).collect();
        let map_error = |source| ProbeError::Map {
            map: LOCAL_ADDRESSES_MAP,
            source,
        };
        for gone in self.known_local.difference(&wanted) {
            match self.local_addresses.remove(gone) {
                Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
                Err(source) => return Err(map_error(source)),
            }
        }
        self.known_local.retain(|address| wanted.contains(address));
        for new in wanted.difference(&self.known_local.clone()) {
            if self.known_local.len() >= LOCAL_ADDRESSES_CAPACITY as usize {
                log::debug!(
                    "more than {LOCAL_ADDRESSES_CAPACITY} local addresses; the rest are not watched for inbound requests"
                );
                break;
            }
            self.local_addresses.insert(new, 1, 0).map_err(map_error)?;
            self.known_local.insert(*new);
        }
        Ok(())
    }

    /// Watches `ports` (`--udp-port`) as request/response services matched flow by flow.
    /// DNS and NTP keep their own matching: 53 and 123 are left as they are.
    pub fn watch_udp_ports(&mut self, ports: &[u16]) -> Result<(), ProbeError> {
        let flows: Vec<(u16, u8)> = ports
            .iter()
            .filter(|&&port| port != DNS_PORT && port != NTP_PORT)
            .map(|&port| (port, UDP_PORT_FLOW))
            .collect();
        set_udp_ports(&mut self.ebpf, &flows)
    }

    /// Attaches both programs to `iface`.
    pub fn attach(&mut self, iface: &Interface, mode: AttachMode) -> Result<Attached, ProbeError> {
        // Whatever this run's mode, an earlier clsact run may have been killed here.
        let lock = claim_and_remove_orphans(&iface.name);
        let attached = match mode {
            AttachMode::Tcx => self.attach_tcx(iface).map_err(|err| {
                match running_kernel().filter(|(_, version)| *version < TCX_KERNEL) {
                    Some((release, _)) => ProbeError::Attach {
                        iface: iface.name.clone(),
                        reason: format!(
                            "tcx needs Linux {}.{} or later, this is Linux {release}; \
                             --attach clsact (or auto) works here",
                            TCX_KERNEL.0, TCX_KERNEL.1
                        ),
                    },
                    None => err,
                }
            }),
            AttachMode::Clsact => self.attach_clsact(iface),
            AttachMode::Auto => self.attach_tcx(iface).or_else(|tcx_err| {
                log::info!(
                    "tcx unavailable on {} ({tcx_err}); using a clsact filter",
                    iface.name
                );
                self.attach_clsact(iface)
                    .map_err(|clsact_err| ProbeError::Attach {
                        iface: iface.name.clone(),
                        reason: format!(
                            "tcx failed ({tcx_err}) and so did clsact ({clsact_err}); the kernel \
                         needs tcx (Linux 6.6+) or CONFIG_NET_SCH_INGRESS and CONFIG_NET_CLS_BPF"
                        ),
                    })
            }),
        }?;
        if let Some(attachment) = self.attachments.last_mut() {
            attachment.lock = lock;
        }
        Ok(attached)
    }

    fn attach_tcx(&mut self, iface: &Interface) -> Result<Attached, ProbeError> {
        // First in the chain: a program before netwatch that returns TCX_PASS (TC_ACT_OK,
        // as Cilium's and Calico's dataplanes do) ends the chain, and netwatch would never see
        // those packets. netwatch itself always returns TCX_NEXT, so going first changes
        // nothing for the others. (clsact needs nothing of the sort: a filter added without a
        // priority gets one below the first existing filter's, and so runs first.)
        self.attach_both(iface, Attached::Tcx, || {
            TcAttachOptions::TcxOrder(LinkOrder::first())
        })
    }

    fn attach_clsact(&mut self, iface: &Interface) -> Result<Attached, ProbeError> {
        let created_qdisc = match tc::qdisc_add_clsact(&iface.name) {
            Ok(()) => true,
            Err(TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => false,
            Err(err) => {
                return Err(ProbeError::Attach {
                    iface: iface.name.clone(),
                    reason: format!("could not add a clsact qdisc: {}", first_line(&err)),
                });
            }
        };
        let via = Attached::Clsact { created_qdisc };
        let result = self.attach_both(
            iface,
            via,
            || TcAttachOptions::Netlink(NlOptions::default()),
        );
        if result.is_err() && created_qdisc {
            delete_clsact_if_empty(&iface.name, iface.index);
        }
        result
    }

    fn attach_both(
        &mut self,
        iface: &Interface,
        via: Attached,
        options: impl Fn() -> TcAttachOptions,
    ) -> Result<Attached, ProbeError> {
        let mut links = Vec::new();
        for (name, direction) in [
            (EGRESS_PROGRAM, TcAttachType::Egress),
            (INGRESS_PROGRAM, TcAttachType::Ingress),
        ] {
            let program = classifier(&mut self.ebpf, name)?;
            match program.attach_with_options(&iface.name, direction, options()) {
                Ok(link) => links.push((name, link)),
                Err(err) => {
                    // Leave nothing half-attached.
                    self.detach_links(&iface.name, links);
                    return Err(ProbeError::Attach {
                        iface: iface.name.clone(),
                        reason: first_line(&err),
                    });
                }
            }
        }
        self.attachments.push(Attachment {
            iface: iface.name.clone(),
            ifindex: iface.index,
            via,
            links,
            lock: None,
        });
        Ok(via)
    }

    fn detach_links(&mut self, iface: &str, links: Vec<(&'static str, SchedClassifierLinkId)>) {
        for (name, link) in links {
            let detached = classifier(&mut self.ebpf, name).and_then(|program| {
                program.detach(link).map_err(|err| ProbeError::Attach {
                    iface: iface.to_owned(),
                    reason: first_line(&err),
                })
            });
            if let Err(err) = detached {
                log::warn!("detaching {name} from {iface}: {err}");
            }
        }
    }

    /// Drops the attachment to `iface` (detaching what is still attached: an interface that
    /// was deleted took its tcx links and filters with it, which is not an error).
    pub fn forget(&mut self, iface: &str) {
        let (gone, kept): (Vec<Attachment>, Vec<Attachment>) =
            std::mem::take(&mut self.attachments)
                .into_iter()
                .partition(|a| a.iface == iface);
        self.attachments = kept;
        for attachment in gone {
            let still_there = crate::interfaces::probe_link(iface)
                .is_some_and(|(index, _)| index == attachment.ifindex);
            if still_there {
                self.detach_links(&attachment.iface, attachment.links);
                if attachment.via
                    == (Attached::Clsact {
                        created_qdisc: true,
                    })
                {
                    delete_clsact_if_empty(&attachment.iface, attachment.ifindex);
                }
            } else {
                // The kernel already detached everything with the device; just release the
                // link handles without netlink calls that would fail.
                for (name, link) in attachment.links {
                    if let Ok(program) = classifier(&mut self.ebpf, name)
                        && let Ok(owned) = program.take_link(link)
                    {
                        drop(owned);
                    }
                }
            }
        }
    }

    /// The interface index `iface` was attached at, if attached.
    #[must_use]
    pub fn attached_index(&self, iface: &str) -> Option<u32> {
        self.attachments
            .iter()
            .find(|a| a.iface == iface)
            .map(|a| a.ifindex)
    }

    /// Detaches from every interface (and removes clsact qdiscs netwatch created).
    pub fn detach_all(&mut self) {
        for attachment in std::mem::take(&mut self.attachments) {
            self.detach_links(&attachment.iface, attachment.links);
            if attachment.via
                == (Attached::Clsact {
                    created_qdisc: true,
                })
            {
                delete_clsact_if_empty(&attachment.iface, attachment.ifindex);
            }
        }
    }

    /// A loaded classifier ([`EGRESS_PROGRAM`] or [`INGRESS_PROGRAM`]), for running it on
    /// crafted packets with `BPF_PROG_TEST_RUN` in tests and benchmarks.
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier, ProbeError> {
        classifier(&mut self.ebpf, name)
    }

    /// Attaches the local drop program to `skb:kfree_skb`. `Err` says, for the operator, what
    /// netwatch cannot see and why; everything else works without it.
    pub fn attach_drops(&mut self) -> Result<(), String> {
        let drops = self.local_drops.as_mut().map_err(|why| why.clone())?;
        if drops.attached {
            return Ok(());
        }
        let program: &mut RawTracePoint = self
            .ebpf
            .program_mut(DROP_PROGRAM)
            .ok_or_else(|| format!("program {DROP_PROGRAM} missing from the object"))?
            .try_into()
            .map_err(|err: aya::programs::ProgramError| first_line(&err))?;
        match program.attach(DROP_TRACEPOINT) {
            Ok(_link) => {
                drops.attached = true;
                Ok(())
            }
            Err(err) => {
                let why = format!(
                    "could not attach to the {DROP_TRACEPOINT} tracepoint ({}); it needs \
                     CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) and a kernel with drop \
                     reasons (5.17+)",
                    first_line(&err)
                );
                self.local_drops = Err(why.clone());
                Err(why)
            }
        }
    }

    /// Attaches the retransmission program to `tcp:tcp_retransmit_skb`. `Err` says, for the
    /// operator, what netwatch cannot see and why; everything else works without it.
    pub fn attach_retransmits(&mut self) -> Result<(), String> {
        let retransmits = self.retransmits.as_mut().map_err(|why| why.clone())?;
        if retransmits.attached {
            return Ok(());
        }
        let program: &mut RawTracePoint = self
            .ebpf
            .program_mut(RETRANSMIT_PROGRAM)
            .ok_or_else(|| format!("program {RETRANSMIT_PROGRAM} missing from the object"))?
            .try_into()
            .map_err(|err: aya::programs::ProgramError| first_line(&err))?;
        match program.attach(RETRANSMIT_TRACEPOINT) {
            Ok(_link) => {
                retransmits.attached = true;
                Ok(())
            }
            Err(err) => {
                let why = format!(
                    "could not attach to the {RETRANSMIT_TRACEPOINT} tracepoint ({}); it needs \
                     CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)",
                    first_line(&err)
                );
                self.retransmits = Err(why.clone());
                Err(why)
            }
        }
    }

    /// Loads the socket owner programs and attaches them to the cgroup2 root at `cgroup2`
    /// (alongside any others there: `AllowMultiple`). They are links held by this process: the
    /// kernel detaches them when it exits. `Err` says, for the operator, why processes
    /// cannot be named; everything else works without them.
    pub fn attach_owners(&mut self, cgroup2: Option<&std::path::Path>) -> Result<(), String> {
        let result = self.try_attach_owners(cgroup2);
        if let Err(why) = &result {
            self.owners = Err(why.clone());
        }
        result
    }

    fn try_attach_owners(&mut self, cgroup2: Option<&std::path::Path>) -> Result<(), String> {
        if self.owners.is_ok() {
            return Ok(());
        }
        let root = cgroup2.ok_or_else(|| {
            "no cgroup2 mount in /proc/mounts (`ip netns exec` hides it: mount it there with \
             `mount -t cgroup2 none /sys/fs/cgroup`)"
                .to_owned()
        })?;
        let cgroup = std::fs::File::open(root)
            .map_err(|err| format!("cannot open the cgroup2 root {}: {err}", root.display()))?;
        let refused = |name: &str, err: &aya::programs::ProgramError| {
            log::debug!("{name}: {err:?}");
            format!(
                "the kernel refused the socket owner program {name} ({}); it needs cgroup \
                 socket programs (CONFIG_CGROUP_BPF, Linux 5.9+) and CAP_BPF with \
                 CAP_NET_ADMIN (or CAP_SYS_ADMIN)",
                first_line(err)
            )
        };
        // The socket and the socket-address programs are different aya types, with the
        // same three steps.
        macro_rules! load_and_attach {
            ($probe:expr, $kind:ty, $names:expr) => {
                for name in $names {
                    let program: &mut $kind = $probe
                        .ebpf
                        .program_mut(name)
                        .ok_or_else(|| format!("program {name} missing from the object"))?
                        .try_into()
                        .map_err(|err| refused(name, &err))?;
                    program.load().map_err(|err| refused(name, &err))?;
                    program
                        .attach(&cgroup, CgroupAttachMode::Single)
                        .map_err(|err| refused(name, &err))?;
                }
            };
        }
        load_and_attach!(
            self,
            CgroupSock,
            [SOCK_CREATE_PROGRAM, SOCK_RELEASE_PROGRAM]
        );
        load_and_attach!(
            self,
            CgroupSockAddr,
            [
                CONNECT4_PROGRAM,
                CONNECT6_PROGRAM,
                SENDMSG4_PROGRAM,
                SENDMSG6_PROGRAM
            ]
        );
        let map = self
            .ebpf
            .take_map(SOCKET_OWNERS_MAP)
            .ok_or_else(|| format!("map {SOCKET_OWNERS_MAP} missing from the object"))?;
        self.owners = Ok(HashMap::try_from(map).map_err(|err| err.to_string())?);
        Ok(())
    }

    /// Whether processes are named, and if not, why: `available`, or `unavailable: <why>`.
    #[must_use]
    pub fn attribution_status(&self) -> String {
        match &self.owners {
            Ok(_) => "available".to_owned(),
            Err(why) => format!("unavailable: {why}"),
        }
    }

    /// Whether local drops are counted, and if not, why: `available`, or
    /// `unavailable: <why>`.
    #[must_use]
    pub fn local_drops_status(&self) -> String {
        match &self.local_drops {
            Ok(drops) if drops.attached => "available".to_owned(),
            Ok(_) => "unavailable: the drop program is not attached".to_owned(),
            Err(why) => format!("unavailable: {why}"),
        }
    }

    /// Whether connections that stall after the handshake are followed, and if not, why:
    /// `available`, or `unavailable: <why>`.
    #[must_use]
    pub fn path_mtu_status(&self) -> String {
        match &self.retransmits {
            Ok(retransmits) if retransmits.attached => "available".to_owned(),
            Ok(_) => "unavailable: the retransmission program is not attached".to_owned(),
            Err(why) => format!("unavailable: {why}"),
        }
    }

    /// The running kernel's drop reason names (empty without drop reasons).
    #[must_use]
    pub fn drop_reasons(&self) -> DropReasons {
        self.local_drops
            .as_ref()
            .map(|drops| drops.reasons.clone())
            .unwrap_or_default()
    }

    /// The capacity of the pending table.
    #[must_use]
    pub fn pending_capacity(&self) -> usize {
        PENDING_CAPACITY as usize
    }
}

impl Probe {
    /// Learns the owners of slots claimed since the last read: one lookup per new target,
    /// and [`SLOT_PROBE_GAP`] lookups past the last claim found.
    ///
    /// The kernel's hint of the next free slot is a plain store from every CPU: two claims
    /// racing can leave it below slots already claimed. Reading only below it would leave
    /// those targets' counters unread (requests seen, answers never: a false blackholed), so
    /// the slots past it are probed too. A slot whose owner is not confirmed yet stays queued:
    /// it may be a claim in progress, or one given back that a later claim takes again.
    fn learn_new_slots(&mut self) -> Result<(), ProbeError> {
        let hint = self
            .next_slot
            .get(&0, 0)
            .map_err(|source| ProbeError::Map {
                map: NEXT_SLOT_MAP,
                source,
            })?
            .min(TARGETS_CAPACITY);
        let mut claimed_upto = hint.max(self.scanned_slots);
        let mut probe = claimed_upto;
        while probe < TARGETS_CAPACITY && probe - claimed_upto < SLOT_PROBE_GAP {
            if self.slot_owner(probe)?.is_some() {
                claimed_upto = probe + 1;
            }
            probe += 1;
        }
        while self.scanned_slots < claimed_upto {
            self.unresolved_slots.push(self.scanned_slots);
            self.scanned_slots += 1;
        }
        let mut still = Vec::new();
        for slot in std::mem::take(&mut self.unresolved_slots) {
            // A claim counts once the target points back at it (the kernel inserts the
            // target right after claiming, and gives the slot back if it lost a race).
            let confirmed = self.slot_owner(slot)?.filter(|owner| {
                self.target_slots
                    .get(owner, 0)
                    .is_ok_and(|confirmed| confirmed == slot)
            });
            match confirmed {
                Some(owner) => self.known_slots.push((slot, owner)),
                None => still.push(slot),
            }
        }
        self.unresolved_slots = still;
        Ok(())
    }

    /// Sets the kernel's next-slot hint to `slot`: what two CPUs claiming slots at once
    /// can leave behind (a plain store from the slower one). For tests of
    /// [`Self::learn_new_slots`]; nothing else writes the hint from userspace.
    #[cfg(feature = "test-helpers")]
    pub fn rewind_slot_hint_for_tests(&mut self, slot: u32) -> Result<(), ProbeError> {
        self.next_slot
            .set(0, slot, 0)
            .map_err(|source| ProbeError::Map {
                map: NEXT_SLOT_MAP,
                source,
            })
    }

    /// Takes each entry out with its value (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`) and puts it
    /// back if it is not the request the sweep read. `false` when the kernel cannot (hash
    /// maps before 5.14), and then nothing was removed after the first refusal.
    fn take_compared(&mut self, entries: &[(RequestKey, u64)]) -> Result<bool, ProbeError> {
        let Some(fd) = &self.pending_batch else {
            return Ok(false);
        };
        for (key, first_sent_ns) in entries {
            // SAFETY: the PENDING map's key and value types.
            match unsafe { batch::take::<RequestKey, PendingRequest>(fd.as_fd(), key) } {
                Ok(Some(taken)) if taken.first_sent_ns != *first_sent_ns => {
                    // Not the request the sweep judged: put it back, unless the kernel has
                    // put yet another there meanwhile.
                    match self.pending.insert(key, taken, BPF_NOEXIST) {
                        Ok(()) => {}
                        Err(MapError::SyscallError(err))
                            if err.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(source) => {
                            return Err(ProbeError::Map {
                                map: PENDING_MAP,
                                source,
                            });
                        }
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    log::debug!("lookup-and-delete failed ({err}): look, then delete");
                    self.take_supported = false;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn slot_owner(&self, slot: u32) -> Result<Option<TargetKey>, ProbeError> {
        match self.slot_owners.get(&slot, 0) {
            Ok(owner) => Ok(Some(owner)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(ProbeError::Map {
                map: SLOT_OWNERS_MAP,
                source,
            }),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.detach_all();
    }
}

impl KernelTables for Probe {
    fn read_targets(
        &mut self,
        each: &mut dyn FnMut(&TargetKey, &TargetCounters),
    ) -> Result<(), ProbeError> {
        self.learn_new_slots()?;
        for (slot, key) in &self.known_slots {
            if let Some(counters) = self.targets.read(*slot) {
                each(key, &counters);
            }
        }
        Ok(())
    }

    fn read_pending_into(
        &mut self,
        entries: &mut Vec<(RequestKey, PendingRequest)>,
    ) -> Result<(), ProbeError> {
        if let Some(fd) = &self.pending_batch {
            let limit = PENDING_CAPACITY as usize;
            // SAFETY: the PENDING map's key and value types.
            match unsafe { self.pending_lookup.all(fd.as_fd(), limit, entries) } {
                Ok(()) => return Ok(()),
                Err(err) => {
                    log::debug!("batch lookup failed ({err}); reading a key at a time");
                    self.pending_batch = None;
                }
            }
        }
        entries.clear();
        for entry in &self.pending {
            entries.push(entry.map_err(|source| ProbeError::Map {
                map: PENDING_MAP,
                source,
            })?);
            // Deletions during the walk can restart it from the first key; never loop forever.
            if entries.len() > 2 * PENDING_CAPACITY as usize {
                break;
            }
        }
        Ok(())
    }

    fn remove_pending(&mut self, key: &RequestKey) -> Result<(), ProbeError> {
        match self.pending.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(ProbeError::Map {
                map: PENDING_MAP,
                source,
            }),
        }
    }

    /// A few entries go one at a time, each taken out with its value and put back if the
    /// kernel replaced it since the sweep read it (a new connection on that exact 4-tuple,
    /// a new question on that port and id): a batch delete cannot compare. Many at once (a
    /// storm, the table under pressure) go in batches: a syscall per entry would cost more
    /// than the rare replacement it guards, which then loses its entry (`in_flight` is read
    /// from the table, so nothing is left counting it).
    fn remove_pending_all(&mut self, entries: &[(RequestKey, u64)]) -> Result<(), ProbeError> {
        if entries.len() <= ONE_BY_ONE_REMOVALS {
            if self.take_supported && self.take_compared(entries)? {
                return Ok(());
            }
            // Look, compare, delete: the same check, with a window of a syscall between.
            for (key, first_sent_ns) in entries {
                match self.pending.get(key, 0) {
                    Ok(entry) if entry.first_sent_ns != *first_sent_ns => {}
                    Ok(_) => self.remove_pending(key)?,
                    Err(MapError::KeyNotFound) => {}
                    Err(source) => {
                        return Err(ProbeError::Map {
                            map: PENDING_MAP,
                            source,
                        });
                    }
                }
            }
            return Ok(());
        }
        let keys: Vec<RequestKey> = entries.iter().map(|(key, _)| *key).collect();
        if let Some(fd) = &self.pending_batch {
            // SAFETY: the PENDING map's key type.
            match unsafe { batch::delete_all(fd.as_fd(), &keys) } {
                Ok(()) => return Ok(()),
                Err(err) => log::debug!("batch delete failed ({err}); a key at a time"),
            }
        }
        keys.iter().try_for_each(|key| self.remove_pending(key))
    }

    fn read_counters(&mut self) -> Result<[u64; KernelCounter::COUNT], ProbeError> {
        let mut values = [0u64; KernelCounter::COUNT];
        for (index, value) in values.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .get(&u32::try_from(index).unwrap_or(u32::MAX), 0)
                .map_err(|source| ProbeError::Map {
                    map: COUNTERS_MAP,
                    source,
                })?;
            *value = per_cpu.iter().fold(0u64, |sum, v| sum.saturating_add(*v));
        }
        Ok(values)
    }

    fn socket_owner(&mut self, cookie: u64) -> Option<SocketOwner> {
        self.owners.as_ref().ok()?.get(&cookie, 0).ok()
    }

    fn read_retransmits(&mut self) -> Result<Vec<(u64, Retransmits)>, ProbeError> {
        let Ok(retransmits) = &self.retransmits else {
            return Ok(Vec::new());
        };
        // A walk restarted by concurrent deletions must still end.
        retransmits
            .connections
            .iter()
            .take(2 * RETRANSMITS_CAPACITY as usize)
            .map(|entry| {
                entry.map_err(|source| ProbeError::Map {
                    map: RETRANSMITS_MAP,
                    source,
                })
            })
            .collect()
    }

    fn acked_since(&mut self, connection: &Retransmits) -> bool {
        let diag = self.sock_diag.get_or_insert_with(|| {
            SockDiag::new().map_err(|err| log::debug!("no sock_diag socket: {err}"))
        });
        let Ok(diag) = diag else {
            return false;
        };
        let local = (ip_from_key(connection.local), connection.local_port);
        let remote = (ip_from_key(connection.remote), connection.remote_port);
        match diag.tcp(local, remote) {
            Ok(Some(state)) => state.bytes_acked > connection.bytes_acked,
            Ok(None) => false,
            Err(err) => {
                log::debug!("sock_diag: {err}");
                false
            }
        }
    }

    fn mtu_probing(&mut self) -> bool {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mtu_probing")
            .is_ok_and(|value| value.trim() != "0")
    }

    fn forget_retransmits(&mut self, sockets: &[u64]) {
        if let Ok(retransmits) = &mut self.retransmits {
            for socket in sockets {
                // Already gone is fine; anything else only delays the forgetting.
                if let Err(err) = retransmits.connections.remove(socket) {
                    log::debug!("could not forget connection {socket:#x}: {err}");
                }
            }
        }
    }

    fn read_local_drops(&mut self) -> Result<Vec<(TargetKey, u32, u64)>, ProbeError> {
        let Ok(drops) = &self.local_drops else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for entry in drops.drops.iter().take(2 * LOCAL_DROPS_CAPACITY as usize) {
            let (key, count) = entry.map_err(|source| ProbeError::Map {
                map: LOCAL_DROPS_MAP,
                source,
            })?;
            entries.push((key, count));
        }
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // Slots the kernel created since the last read of the targets are learnt then.
        let owners: std::collections::HashMap<u32, TargetKey> =
            self.known_slots.iter().copied().collect();
        Ok(entries
            .into_iter()
            .filter_map(|(key, count)| {
                owners
                    .get(&key.slot)
                    .map(|target| (*target, key.reason, count))
            })
            .collect())
    }
}

/// [`btf::read_and_parse`] in this process, on a thread of its own (its own allocator
/// arena), with large blocks mapped apart (unmapped when freed) and the heap trimmed after:
/// the parser's memory neither stays resident nor fragments the heap the run uses.
fn parse_layout_here() -> btf::Layout {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
    let parsed = std::thread::spawn(btf::read_and_parse)
        .join()
        .unwrap_or_else(|_| btf::Layout::unavailable("parsing the kernel's BTF panicked"));
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory; mallopt puts the threshold where
    // glibc's own adjustment takes it (32 MiB), so large buffers are reused as before.
    unsafe {
        libc::malloc_trim(0);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
    }
    parsed
}

/// Loads the drop program and takes its maps; `Err` says why it cannot run here.
fn load_drops(ebpf: &mut Ebpf, reasons: DropReasons) -> Result<LocalDrops, String> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(DROP_PROGRAM)
        .ok_or_else(|| format!("program {DROP_PROGRAM} missing from the object"))?
        .try_into()
        .map_err(|err: aya::programs::ProgramError| first_line(&err))?;
    program.load().map_err(|err| {
        log::debug!("{DROP_PROGRAM} failed to load: {err:?}");
        format!(
            "the kernel refused the drop program ({}); it needs raw tracepoint support \
             (CONFIG_BPF_EVENTS)",
            first_line(&err)
        )
    })?;
    let take = |ebpf: &mut Ebpf, name: &'static str| {
        ebpf.take_map(name)
            .ok_or_else(|| format!("map {name} missing from the object"))
    };
    let drops = HashMap::try_from(take(ebpf, LOCAL_DROPS_MAP)?).map_err(|err| err.to_string())?;
    Ok(LocalDrops {
        drops,
        reasons,
        attached: false,
    })
}

/// Loads the retransmission program and takes its map; `Err` says why it cannot run here.
fn load_retransmits(ebpf: &mut Ebpf) -> Result<Retransmitting, String> {
    let program: &mut RawTracePoint = ebpf
        .program_mut(RETRANSMIT_PROGRAM)
        .ok_or_else(|| format!("program {RETRANSMIT_PROGRAM} missing from the object"))?
        .try_into()
        .map_err(|err: aya::programs::ProgramError| first_line(&err))?;
    program.load().map_err(|err| {
        log::debug!("{RETRANSMIT_PROGRAM} failed to load: {err:?}");
        format!(
            "the kernel refused the retransmission program ({}); it needs raw tracepoint \
             support (CONFIG_BPF_EVENTS)",
            first_line(&err)
        )
    })?;
    let map = ebpf
        .take_map(RETRANSMITS_MAP)
        .ok_or_else(|| format!("map {RETRANSMITS_MAP} missing from the object"))?;
    Ok(Retransmitting {
        connections: HashMap::try_from(map).map_err(|err| err.to_string())?,
        attached: false,
    })
}

/// Marks each UDP port of `ports` as watched the way given, in the programs' port array.
fn set_udp_ports(ebpf: &mut Ebpf, ports: &[(u16, u8)]) -> Result<(), ProbeError> {
    let map_error = |source| ProbeError::Map {
        map: UDP_PORTS_MAP,
        source,
    };
    let map = ebpf
        .map_mut(UDP_PORTS_MAP)
        .ok_or_else(|| ProbeError::Load(format!("map {UDP_PORTS_MAP} missing from the object")))?;
    let mut array: Array<&mut MapData, [u8; UDP_PORTS]> =
        Array::try_from(map).map_err(map_error)?;
    let mut kinds = array.get(&0, 0).map_err(map_error)?;
    for &(port, kind) in ports {
        kinds[usize::from(port)] = kind;
    }
    array.set(0, kinds, 0).map_err(map_error)
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, ProbeError> {
    ebpf.program_mut(name)
        .ok_or_else(|| ProbeError::Load(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|err: aya::programs::ProgramError| ProbeError::Load(first_line(&err)))
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name)
        .ok_or_else(|| ProbeError::Load(format!("map {name} missing from the object")))
}

/// The map `name`, taken out of the object as the typed map `T`.
fn typed_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    T::try_from(take_map(ebpf, name)?).map_err(|source| ProbeError::Map { map: name, source })
}

/// Removes the clsact qdisc netwatch added, unless someone attached other filters since.
fn delete_clsact_if_empty(iface: &str, ifindex: u32) {
    match crate::clsact::has_filters(ifindex) {
        Ok(false) => {}
        Ok(true) => {
            log::info!("leaving the clsact qdisc on {iface}: other filters use it");
            return;
        }
        Err(err) => {
            log::warn!("leaving the clsact qdisc on {iface}: could not list its filters: {err}");
            return;
        }
    }
    if let Err(err) = crate::clsact::delete(ifindex) {
        log::warn!("could not remove the clsact qdisc from {iface}: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::{MINIMUM_KERNEL, kernel_version, log_tail};

    #[test]
    fn the_end_of_a_verifier_log_is_where_the_reason_is() {
        let log = "func#0 @0\n0: R1=ctx() R10=fp0\n; many lines\n12: (85) call pc+40\n\
                   R1 type=fp expected=ctx\nCaller passes invalid args into func#1\n\
                   processed 94 insns (limit 1000000)\n\n";
        let tail = log_tail(log, 3);
        assert_eq!(
            tail,
            "  R1 type=fp expected=ctx\n  Caller passes invalid args into func#1\n  \
             processed 94 insns (limit 1000000)"
        );
        assert_eq!(log_tail("", 3), "");
    }

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert_eq!(kernel_version("6.1.0-56-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.10.223"), Some((5, 10)));
        assert_eq!(kernel_version("6.12.117+deb12-cloud-amd64"), Some((6, 12)));
        assert!(kernel_version("5.4.0-150-generic") < kernel_version(MINIMUM_KERNEL));
        assert!(kernel_version("5.10.0-32-cloud-amd64") >= kernel_version(MINIMUM_KERNEL));
        assert_eq!(kernel_version("garbage"), None);
    }
}
