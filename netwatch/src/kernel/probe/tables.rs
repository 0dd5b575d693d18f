//! The maps read and written: the per-target counters (memory-mapped), the pending table
//! (in batches), the slots, the kernel counters, local drops, retransmissions, socket owners;
//! this host's addresses and the UDP ports watched, written.

use std::{collections::BTreeSet, net::IpAddr, os::fd::AsFd as _};

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError},
};
use netwatch_common::{
    COUNTERS_MAP, KernelCounter, LOCAL_ADDRESSES_CAPACITY, LOCAL_ADDRESSES_MAP,
    LOCAL_DROPS_CAPACITY, LOCAL_DROPS_MAP, NEXT_SLOT_MAP, PENDING_CAPACITY, PENDING_MAP,
    PendingRequest, RETRANSMITS_CAPACITY, RETRANSMITS_MAP, RequestKey, Retransmits,
    SLOT_OWNERS_MAP, TARGETS_CAPACITY, TargetCounters, TargetKey,
};
use netwatch_common::{DNS_PORT, NTP_PORT, UDP_PORT_FLOW, UDP_PORTS, UDP_PORTS_MAP};
use netwatch_common::{SocketOwner, socket_owner_slot};

use crate::{
    batch,
    sock_diag::SockDiag,
    target::{ip_from_key, ip_to_key},
};

use super::{Probe, ProbeError};

/// The kernel's per-target counter array, mapped read-only into this process: every
/// target's counters are read without a syscall.
pub(super) struct CounterArray {
    mapping: memmap2::Mmap,
    // Keeps the map alive as long as the mapping.
    _map: MapData,
}

impl CounterArray {
    pub(super) fn map(map: MapData) -> Result<Self, ProbeError> {
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

impl Probe {
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
        let owners = self.owners.as_ref().ok()?;
        let slot = socket_owner_slot(cookie);
        // Read twice: the programs write a slot in place, without a lock, so a read that
        // races a newer socket's write could mix two owners. Two reads that agree cannot.
        let owner = owners.get(&slot, 0).ok()?;
        (owner.cookie == cookie && owners.get(&slot, 0).ok()? == owner).then_some(owner)
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

/// Marks each UDP port of `ports` as watched the way given, in the programs' port array.
pub(super) fn set_udp_ports(ebpf: &mut Ebpf, ports: &[(u16, u8)]) -> Result<(), ProbeError> {
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
