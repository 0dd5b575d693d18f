//! The maps both programs share, and the small operations on them.

#[cfg(not(feature = "no-cmpxchg"))]
use core::intrinsics::atomic_cxchg;
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use netwatch_common::{
    KernelCounter, LOCAL_ADDRESSES_CAPACITY, PENDING_CAPACITY, PendingRequest, RequestKey,
    TARGETS_CAPACITY, TargetCounters, TargetKey, UDP_PORTS,
};

/// Requests in flight. Preallocated: inserting is the one map write on the request path
/// and preallocation keeps it cheapest; when full, inserts fail with E2BIG and are counted.
#[map]
pub static PENDING: HashMap<RequestKey, PendingRequest> =
    HashMap::with_max_entries(PENDING_CAPACITY, 0);

/// Target → slot in [`TARGETS`].
#[map]
pub static TARGET_SLOTS: HashMap<TargetKey, u32> = HashMap::with_max_entries(TARGETS_CAPACITY, 0);

/// Per-target cumulative counters by slot. An array: the answer path finds them from the
/// slot kept in the pending entry without hashing, and userspace maps them into memory.
#[map]
pub static TARGETS: Array<TargetCounters> =
    Array::with_max_entries(TARGETS_CAPACITY, BPF_F_MMAPABLE);

/// Slot → target: who owns each slot of [`TARGETS`]. Claiming a slot is inserting here
/// with `BPF_NOEXIST`, which exactly one CPU can win: slot allocation without atomics.
#[map]
static SLOT_OWNERS: HashMap<u32, TargetKey> = HashMap::with_max_entries(TARGETS_CAPACITY, 0);

/// Where the next slot claim starts: a hint (updated without atomics), the claims in
/// [`SLOT_OWNERS`] are what counts.
#[map]
static NEXT_SLOT: Array<u32> = Array::with_max_entries(1, 0);

/// This host's addresses (IPv4 ones mapped), kept by userspace: a request arriving is asked
/// of this host only when it is sent to one of them.
#[map]
pub static LOCAL_ADDRESSES: HashMap<[u8; 16], u8> =
    HashMap::with_max_entries(LOCAL_ADDRESSES_CAPACITY, 0);

/// UDP port → how it is watched (`UDP_PORT_NTP`, `UDP_PORT_FLOW`, 0: not), kept by
/// userspace (`UDP_PORTS_MAP`). A global array in a section of its own: reading it is a load
/// at the map value's address plus the port, no helper call and no lookup, the cheapest test
/// the path of every UDP datagram that is not DNS can take.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.udp_ports")]
static mut UDP_PORT_KINDS: [u8; UDP_PORTS] = [0; UDP_PORTS];

/// How `port` is watched: `UDP_PORT_NTP`, `UDP_PORT_FLOW`, or 0.
#[inline(always)]
pub fn udp_port_kind(port: u16) -> u8 {
    // verifier: a mask on an opaque copy, so the index is provably below 65,536 whatever the
    // port was computed from (a byte swap leaves a register unbounded on Linux 5.10).
    let index = core::hint::black_box(usize::from(port)) & (UDP_PORTS - 1);
    // SAFETY: index < UDP_PORTS; volatile because userspace writes the array after load
    // (LLVM must not take the zeros it was compiled with).
    unsafe { core::ptr::read_volatile((&raw const UDP_PORT_KINDS).cast::<u8>().add(index)) }
}

/// A pending entry being built, per CPU: a request a handler fills in, or (the build for
/// kernels before 5.12) the tombstone a rejection or late answer puts back. Its 136 bytes stay off the stack frames of the deepest call chains
/// (classifier, exchange, request handler, `track`; or answer handler, `settle`), which
/// must fit 512 bytes, Linux 5.10 rounding every frame up to 32. A packet is a request or an
/// answer, never both, and a tc program runs to its end before the packet moves on, so no
/// other use of this CPU's entry can come in between.
#[map]
pub static PENDING_SCRATCH: PerCpuArray<PendingRequest> = PerCpuArray::with_max_entries(1, 0);

/// [`KernelCounter`] values, per CPU so counting needs no atomics.
#[expect(clippy::cast_possible_truncation, reason = "a few dozen counters")]
#[map]
pub static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(KernelCounter::COUNT as u32, 0);

/// `--timeout` in nanoseconds; userspace sets it at load time.
#[unsafe(no_mangle)]
static TIMEOUT_NS: u64 = 3_000_000_000;

#[inline(always)]
pub fn timeout_ns() -> u64 {
    // SAFETY: reading a plain static; volatile so the compiler does not fold the default
    // value in: the loader rewrites it in .rodata before the program is verified.
    unsafe { core::ptr::read_volatile(&raw const TIMEOUT_NS) }
}

/// Counts one event that the programs saw but could not use.
#[inline(always)]
pub fn count(counter: KernelCounter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU array slot, valid for the whole program run; only this CPU
        // writes it while the program runs (migration is disabled).
        unsafe { *slot += 1 };
    }
}

/// Adds `n` to a counter in a shared map value. Several CPUs may update the same target.
#[inline(always)]
pub fn add(counter: &mut u64, n: u64) {
    // rustc's BPF target declares no compare-and-swap (Linux 5.10 has none), so core's
    // AtomicU64 offers no fetch_add there; the intrinsic lowers to BPF_ATOMIC | BPF_ADD,
    // which every kernel has (its result unused: no BPF_FETCH, which needs 5.12).
    // SAFETY: `counter` points into a live map value, aligned for u64.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Sets `entry.flags` from `old` to `new` if nobody changed them since they were read as
/// `old`; whether it did. Exactly one CPU wins a race: a compare-and-swap of the word holding
/// `tcp_seq` (never changed once the entry is in the table) and `flags` (see
/// [`PendingRequest::STATE_OFFSET`]). BPF's cmpxchg needs Linux 5.12; the build for older
/// kernels (feature `no-cmpxchg`) claims entries by deleting them instead.
#[cfg(not(feature = "no-cmpxchg"))]
#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "the word at STATE_OFFSET is 8-aligned in an 8-aligned map value"
)]
pub fn swap_flags(entry: &mut PendingRequest, old: u32, new: u32) -> bool {
    let seq = u64::from(entry.tcp_seq);
    let (expected, replacement) = (seq | u64::from(old) << 32, seq | u64::from(new) << 32);
    let word = (&raw mut *entry)
        .cast::<u8>()
        .wrapping_add(PendingRequest::STATE_OFFSET)
        .cast::<u64>();
    // SAFETY: `entry` is a live map value, 8-aligned (map values are), and the word at
    // STATE_OFFSET is 8-aligned within it (asserted in netwatch-common).
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            word,
            expected,
            replacement,
        )
    }
    .1
}

/// A request the pending table had no room for (E2BIG): counted, but it can never be
/// resolved, so it must not be mistaken for an unanswered one.
#[inline(always)]
pub fn untracked(counters: &mut TargetCounters) {
    add(&mut counters.requests, 1);
    add(&mut counters.untracked, 1);
    count(KernelCounter::PendingFull);
}

/// The last target this CPU found a slot for, and the slot plus one (0: none yet).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct LastTarget {
    target: TargetKey,
    slot_plus_one: u32,
}

/// [`LastTarget`], per CPU. Requests come in bursts to one target (a resolver asked again
/// and again, a service's clients, a retrying application, a flood), and a slot, once its
/// target points at it, is that target's for the life of the programs: a hit here is true
/// and saves the hash lookup in [`TARGET_SLOTS`].
#[map]
static LAST_TARGET: PerCpuArray<LastTarget> = PerCpuArray::with_max_entries(1, 0);

/// Whether `a` and `b` are the same target: compared as words (a slice comparison compiles to
/// a call to `memcmp`, a BPF function of its own).
#[inline(always)]
fn same_target(a: &TargetKey, b: &TargetKey) -> bool {
    let tail = |t: &TargetKey| {
        u32::from_ne_bytes([
            t.remote_port.to_ne_bytes()[0],
            t.remote_port.to_ne_bytes()[1],
            t.proto,
            t.direction,
        ])
    };
    tail(a) == tail(b) && netwatch_common::same_address(&a.remote, &b.remote)
}

/// The slot and counters of `target`, given a fresh (zeroed) slot on first use; `None`
/// when the table is full.
#[inline(always)]
pub fn target_counters(target: &TargetKey) -> Option<(u32, &'static mut TargetCounters)> {
    let last = LAST_TARGET.get_ptr_mut(0)?;
    // SAFETY: this CPU's entry, used by nothing else until the program ends.
    let last = unsafe { &mut *last };
    let slot = if last.slot_plus_one != 0 && same_target(&last.target, target) {
        last.slot_plus_one - 1
    } else {
        let slot = match TARGET_SLOTS.get_ptr(target) {
            // SAFETY: a map value pointer, valid for this program run.
            Some(slot) => unsafe { *slot },
            None => new_slot(target)?,
        };
        last.target = *target;
        last.slot_plus_one = slot + 1;
        slot
    };
    // SAFETY: an array value pointer stays valid for the program run; fields are only
    // updated through `add` or single aligned stores.
    TARGETS
        .get_ptr_mut(slot)
        .map(|counters| (slot, unsafe { &mut *counters }))
}

/// Slot claims tried before giving up (only contention on the same slots makes one fail).
const SLOT_CLAIM_TRIES: u32 = 8;

#[inline(always)]
fn new_slot(target: &TargetKey) -> Option<u32> {
    let hint = NEXT_SLOT.get_ptr_mut(0)?;
    // SAFETY: a live array value; a stale read only costs a failed claim.
    let mut slot = unsafe { *hint };
    for _ in 0..SLOT_CLAIM_TRIES {
        if slot >= TARGETS_CAPACITY {
            break;
        }
        if SLOT_OWNERS
            .insert(slot, target, u64::from(BPF_NOEXIST))
            .is_err()
        {
            slot += 1;
            continue;
        }
        // SAFETY: as above; racing stores only move the hint, never a claim.
        unsafe { *hint = slot + 1 };
        return match TARGET_SLOTS.insert(target, slot, u64::from(BPF_NOEXIST)) {
            Ok(()) => Some(slot),
            Err(err) => {
                // Another CPU created the same target meanwhile (EEXIST): give the slot back
                // and use its one.
                let _ = SLOT_OWNERS.remove(slot);
                if err != -EEXIST {
                    count(KernelCounter::TargetsFull);
                    return None;
                }
                // SAFETY: a map value pointer, valid for this program run.
                TARGET_SLOTS
                    .get_ptr(target)
                    .map(|existing| unsafe { *existing })
            }
        };
    }
    count(KernelCounter::TargetsFull);
    None
}

pub const EEXIST: i32 = 17;
