//! The kernel shell: loads the eBPF programs, attaches them to interfaces, reads their maps,
//! and detaches everything when dropped.

use std::{process::Command, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
};
use netwatch_common::{
    COUNTERS_MAP, EGRESS_PROGRAM, INGRESS_PROGRAM, KernelCounter, PENDING_CAPACITY, PENDING_MAP,
    PendingRequest, RequestKey, TARGETS_MAP, TIMEOUT_GLOBAL, TargetCounters, TargetKey,
};
use thiserror::Error;

use crate::{cli::AttachMode, interfaces::Interface};

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwatch-ebpf"));

/// The benchmarks' reference programs (`bench_floor`, `bench_track`, `bench_match`), built
/// beside the real ones so both come from the same compiler. Only the bench harness loads it.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwatch-bench"));

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(
        "the kernel refused to load netwatch's eBPF programs ({0}); it needs BPF tc classifier \
         support (CONFIG_BPF_SYSCALL, CONFIG_NET_CLS_BPF)"
    )]
    Load(String),
    #[error("could not attach to {iface}: {reason}")]
    Attach { iface: String, reason: String },
    #[error("could not read the kernel map {map}: {source}")]
    Map { map: &'static str, source: MapError },
}

/// How one interface ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Tcx,
    /// A clsact qdisc filter; `created_qdisc` when netwatch added the qdisc.
    Clsact { created_qdisc: bool },
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
}

/// The loaded programs and their maps.
pub struct Probe {
    ebpf: Ebpf,
    pending: HashMap<MapData, RequestKey, PendingRequest>,
    targets: HashMap<MapData, TargetKey, TargetCounters>,
    counters: PerCpuArray<MapData, u64>,
    attachments: Vec<Attachment>,
}

/// Read access to the kernel's tables, so the poll loop can run against fakes in tests.
pub trait KernelTables {
    /// Calls `each` with every target's cumulative counters.
    fn read_targets(&mut self, each: &mut dyn FnMut(&TargetKey, &TargetCounters))
    -> Result<(), ProbeError>;
    /// Every entry of the pending table.
    fn read_pending(&mut self) -> Result<Vec<(RequestKey, PendingRequest)>, ProbeError>;
    /// Removes a pending entry; a missing one is not an error.
    fn remove_pending(&mut self, key: &RequestKey) -> Result<(), ProbeError>;
    /// [`KernelCounter`]s, summed over CPUs.
    fn read_counters(&mut self) -> Result<[u64; KernelCounter::COUNT], ProbeError>;
}

fn first_line(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text.lines().next().unwrap_or_default().trim_end_matches(['.', ':']).to_owned()
}

impl Probe {
    /// Loads (but does not attach) the programs, with `timeout` compiled in.
    pub fn load(timeout: Duration) -> Result<Self, ProbeError> {
        let timeout_ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut ebpf = EbpfLoader::new()
            .override_global(TIMEOUT_GLOBAL, &timeout_ns, true)
            .load(EBPF_OBJECT)
            .map_err(|err| {
                log::debug!("eBPF object load failed: {err:?}");
                ProbeError::Load(first_line(&err))
            })?;
        for name in [EGRESS_PROGRAM, INGRESS_PROGRAM] {
            let program = classifier(&mut ebpf, name)?;
            program.load().map_err(|err| {
                log::debug!("{name} failed to load: {err:?}");
                ProbeError::Load(first_line(&err))
            })?;
        }
        let pending = HashMap::try_from(take_map(&mut ebpf, PENDING_MAP)?)
            .map_err(|source| ProbeError::Map { map: PENDING_MAP, source })?;
        let targets = HashMap::try_from(take_map(&mut ebpf, TARGETS_MAP)?)
            .map_err(|source| ProbeError::Map { map: TARGETS_MAP, source })?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, COUNTERS_MAP)?)
            .map_err(|source| ProbeError::Map { map: COUNTERS_MAP, source })?;
        Ok(Self { ebpf, pending, targets, counters, attachments: Vec::new() })
    }

    /// Attaches both programs to `iface`.
    pub fn attach(&mut self, iface: &Interface, mode: AttachMode) -> Result<Attached, ProbeError> {
        let attached = match mode {
            AttachMode::Tcx => self.attach_tcx(iface),
            AttachMode::Clsact => self.attach_clsact(iface),
            AttachMode::Auto => self.attach_tcx(iface).or_else(|tcx_err| {
                log::info!("tcx unavailable on {} ({tcx_err}); using a clsact filter", iface.name);
                self.attach_clsact(iface).map_err(|clsact_err| ProbeError::Attach {
                    iface: iface.name.clone(),
                    reason: format!(
                        "tcx failed ({tcx_err}) and so did clsact ({clsact_err}); the kernel \
                         needs tcx (Linux 6.6+) or CONFIG_NET_SCH_INGRESS and CONFIG_NET_CLS_BPF"
                    ),
                })
            }),
        }?;
        Ok(attached)
    }

    fn attach_tcx(&mut self, iface: &Interface) -> Result<Attached, ProbeError> {
        self.attach_both(iface, Attached::Tcx, || TcAttachOptions::TcxOrder(LinkOrder::default()))
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
        let result = self.attach_both(iface, via, || TcAttachOptions::Netlink(NlOptions::default()));
        if result.is_err() && created_qdisc {
            delete_clsact_if_empty(&iface.name);
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
        for (name, direction) in
            [(EGRESS_PROGRAM, TcAttachType::Egress), (INGRESS_PROGRAM, TcAttachType::Ingress)]
        {
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
            std::mem::take(&mut self.attachments).into_iter().partition(|a| a.iface == iface);
        self.attachments = kept;
        for attachment in gone {
            let still_there = crate::interfaces::probe_link(iface)
                .is_some_and(|(index, _)| index == attachment.ifindex);
            if still_there {
                self.detach_links(&attachment.iface, attachment.links);
                if attachment.via == (Attached::Clsact { created_qdisc: true }) {
                    delete_clsact_if_empty(&attachment.iface);
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
        self.attachments.iter().find(|a| a.iface == iface).map(|a| a.ifindex)
    }

    /// Detaches from every interface (and removes clsact qdiscs netwatch created).
    pub fn detach_all(&mut self) {
        for attachment in std::mem::take(&mut self.attachments) {
            self.detach_links(&attachment.iface, attachment.links);
            if attachment.via == (Attached::Clsact { created_qdisc: true }) {
                delete_clsact_if_empty(&attachment.iface);
            }
        }
    }

    /// A loaded classifier ([`EGRESS_PROGRAM`] or [`INGRESS_PROGRAM`]), for running it on
    /// crafted packets with `BPF_PROG_TEST_RUN` in tests and benchmarks.
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier, ProbeError> {
        classifier(&mut self.ebpf, name)
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

impl KernelTables for Probe {
    fn read_targets(
        &mut self,
        each: &mut dyn FnMut(&TargetKey, &TargetCounters),
    ) -> Result<(), ProbeError> {
        for entry in self.targets.iter() {
            let (key, counters) =
                entry.map_err(|source| ProbeError::Map { map: TARGETS_MAP, source })?;
            each(&key, &counters);
        }
        Ok(())
    }

    fn read_pending(&mut self) -> Result<Vec<(RequestKey, PendingRequest)>, ProbeError> {
        let mut entries = Vec::new();
        for entry in self.pending.iter() {
            entries.push(entry.map_err(|source| ProbeError::Map { map: PENDING_MAP, source })?);
            // Deletions during the walk can restart it from the first key; never loop forever.
            if entries.len() > 2 * PENDING_CAPACITY as usize {
                break;
            }
        }
        Ok(entries)
    }

    fn remove_pending(&mut self, key: &RequestKey) -> Result<(), ProbeError> {
        match self.pending.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
            Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(source) => Err(ProbeError::Map { map: PENDING_MAP, source }),
        }
    }

    fn read_counters(&mut self) -> Result<[u64; KernelCounter::COUNT], ProbeError> {
        let mut values = [0u64; KernelCounter::COUNT];
        for (index, value) in values.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .get(&u32::try_from(index).unwrap_or(u32::MAX), 0)
                .map_err(|source| ProbeError::Map { map: COUNTERS_MAP, source })?;
            *value = per_cpu.iter().fold(0u64, |sum, v| sum.saturating_add(*v));
        }
        Ok(values)
    }
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

/// Removes the clsact qdisc netwatch added, unless someone attached other filters since.
/// aya has no qdisc deletion, so this asks iproute2's `tc`.
fn delete_clsact_if_empty(iface: &str) {
    let has_filters = ["ingress", "egress"].iter().any(|direction| {
        Command::new("tc")
            .args(["filter", "show", "dev", iface, direction])
            .output()
            .map(|out| !out.stdout.is_empty())
            .unwrap_or(true)
    });
    if has_filters {
        log::info!("leaving the clsact qdisc on {iface}: other filters use it");
        return;
    }
    match Command::new("tc").args(["qdisc", "del", "dev", iface, "clsact"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => log::warn!(
            "could not remove the clsact qdisc from {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => log::warn!("could not run tc to remove the clsact qdisc from {iface}: {err}"),
    }
}
