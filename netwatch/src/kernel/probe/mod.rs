//! The probe: netwatch's eBPF programs loaded into the kernel, attached to the watched
//! interfaces, hooks and cgroups, and their maps read; everything detached when it is dropped.
//! Loading here; attaching to interfaces in [`attach`], the tracepoint and cgroup programs in
//! [`programs`], the maps in [`tables`], what goes wrong and how it is said in [`errors`].

mod attach;
mod errors;
mod programs;
mod tables;

use std::{
    collections::BTreeSet,
    os::fd::{AsFd as _, OwnedFd},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    programs::SchedClassifier,
};
use netwatch_common::SocketOwner;
use netwatch_common::{
    COUNTERS_MAP, DROP_CONFIG_GLOBAL, DropConfig, LOCAL_ADDRESSES_MAP, LocalDropKey, NEXT_SLOT_MAP,
    PENDING_CAPACITY, PENDING_MAP, PendingRequest, RETRANSMIT_CONFIG_GLOBAL, RequestKey,
    RetransmitConfig, Retransmits, SLOT_OWNERS_MAP, TARGET_SLOTS_MAP, TARGETS_MAP, TIMEOUT_GLOBAL,
    TargetKey,
};
use netwatch_common::{NTP_PORT, UDP_PORT_NTP};

use crate::{batch, btf, drops::DropReasons, sock_diag::SockDiag};

use attach::Attachment;
pub use attach::{Attached, Classifiers};
pub use errors::{MINIMUM_KERNEL, ProbeError};
use errors::{check_kernel_version, first_line, load_error, with_memlock_hint};
use programs::{load_drops, load_retransmits};
use tables::{CounterArray, set_udp_ports};
pub use tables::{KernelTables, Owners};

/// The kernel's drop reason for a datagram whose fragments never all arrived.
const FRAGMENT_REASON: &str = "FRAG_REASM_TIMEOUT";

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
    /// The classifier pairs loaded.
    classifiers: Classifiers,
    /// The `skb:kfree_skb` program's state: its maps and the kernel's reason names, or why
    /// this kernel cannot have it.
    local_drops: Result<LocalDrops, String>,
    /// The socket owner map, once the cgroup socket programs are attached, or why they are
    /// not.
    owners: Result<Array<MapData, SocketOwner>, String>,
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

impl Probe {
    /// Loads (but does not attach) the programs, with `timeout` compiled in: the Ethernet
    /// classifiers (see [`Probe::load_with`]).
    pub fn load(timeout: Duration) -> Result<Self, ProbeError> {
        Self::load_with(timeout, Classifiers::ETHERNET)
    }

    /// Loads (but does not attach) the programs, with `timeout` compiled in, and the
    /// classifier pairs of `classifiers`.
    pub fn load_with(timeout: Duration, classifiers: Classifiers) -> Result<Self, ProbeError> {
        Self::load_build(timeout, Build::for_this_kernel(), classifiers)
    }

    /// [`Probe::load_with`] with the build of the programs the tests choose (both builds run
    /// on a kernel with compare-and-swap).
    #[cfg(feature = "test-helpers")]
    pub fn load_for_tests(
        timeout: Duration,
        build: Build,
        classifiers: Classifiers,
    ) -> Result<Self, ProbeError> {
        check_kernel_version()?;
        Self::load_laid_out(timeout, build, classifiers, layout_for_tests())
    }

    fn load_build(
        timeout: Duration,
        build: Build,
        classifiers: Classifiers,
    ) -> Result<Self, ProbeError> {
        check_kernel_version()?;
        // Reading the kernel's BTF takes several MiB for a moment: a child process does it
        // (not even netwatch's peak memory counts them). Where it cannot run, a thread of
        // this process, with large blocks mapped apart and the heap trimmed after.
        let layout = btf::layout_in_child().unwrap_or_else(parse_layout_here);
        Self::load_laid_out(timeout, build, classifiers, layout)
    }

    /// Loads the programs with what the kernel's BTF gave (`layout`).
    fn load_laid_out(
        timeout: Duration,
        build: Build,
        classifiers: Classifiers,
        layout: btf::Layout,
    ) -> Result<Self, ProbeError> {
        log::debug!("loading the {build:?} build of the eBPF programs");
        let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
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
        for name in classifiers.names() {
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
            classifiers,
            owners: Err("not attached yet".to_owned()),
            retransmits,
            sock_diag: None,
        })
    }

    /// A loaded classifier (`netwatch_egress`, `netwatch_ingress`, or the L3 pair when
    /// loaded), for running it on crafted packets with `BPF_PROG_TEST_RUN` in tests and benchmarks.
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier, ProbeError> {
        classifier(&mut self.ebpf, name)
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

    /// Whether DNS answers lost to fragments are told from answers that arrived: `available`
    /// where the drop program runs and the kernel reports a reassembly timing out
    /// (`FRAG_REASM_TIMEOUT`), else `unavailable: <why>` (their first fragment counts as an
    /// answer).
    #[must_use]
    pub fn fragments_status(&self) -> String {
        match &self.local_drops {
            Ok(drops) if drops.attached => {
                if drops.reasons.value_of(FRAGMENT_REASON).is_some() {
                    "available".to_owned()
                } else {
                    format!(
                        "unavailable: this kernel reports no reassembly timing out (no \
                         {FRAGMENT_REASON} drop reason)"
                    )
                }
            }
            _ => "unavailable: drops on this host are not counted".to_owned(),
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

impl Drop for Probe {
    fn drop(&mut self) {
        self.detach_all();
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

/// The layout for [`Probe::load_for_tests`]: parsed once per process and network namespace
/// (the namespace is part of it). A test process loads the programs once per test; the
/// kernel's BTF is read once.
#[cfg(feature = "test-helpers")]
fn layout_for_tests() -> btf::Layout {
    static PARSED: std::sync::Mutex<Vec<(u32, btf::Layout)>> = std::sync::Mutex::new(Vec::new());
    let netns = btf::own_netns();
    // Held while parsing: tests loading at once wait for one parse rather than each run it.
    let mut parsed = PARSED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, layout)) = parsed.iter().find(|(ns, _)| *ns == netns) {
        return layout.clone();
    }
    let layout = parse_layout_here();
    parsed.push((netns, layout.clone()));
    layout
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
