//! The maps both programs share, and the small operations on them.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_F_RDONLY_PROG},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use netwatch_common::{
    KernelCounter, PENDING_CAPACITY, PendingRequest, RequestKey, TARGETS_CAPACITY, TargetCounters,
    TargetKey,
};

/// Requests in flight. Preallocated: inserting is the one map write on the request path
/// and preallocation keeps it cheapest; when full, inserts fail with E2BIG and are counted.
#[map]
pub static PENDING: HashMap<RequestKey, PendingRequest> =
    HashMap::with_max_entries(PENDING_CAPACITY, 0);

/// Per-target cumulative counters, allocated as targets appear.
#[map]
pub static TARGETS: HashMap<TargetKey, TargetCounters> =
    HashMap::with_max_entries(TARGETS_CAPACITY, BPF_F_NO_PREALLOC);

/// [`KernelCounter`] values, per CPU so counting needs no atomics.
#[map]
pub static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(KernelCounter::COUNT as u32, 0);

/// One all-zero [`TargetCounters`], the source of new `TARGETS` entries: the value is too
/// large for the 512-byte BPF stack. Read-only for the programs, never written by userspace.
#[map]
static ZERO_COUNTERS: Array<TargetCounters> = Array::with_max_entries(1, BPF_F_RDONLY_PROG);

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
    // The BPF target has atomic adds but no compare-and-swap, so core's AtomicU64 offers no
    // fetch_add there; the intrinsic lowers to BPF_ATOMIC | BPF_ADD.
    // SAFETY: `counter` points into a live map value, aligned for u64.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// The counters of `target`, created zeroed on first use; `None` when the table is full.
#[inline(always)]
pub fn target_counters(target: &TargetKey) -> Option<&'static mut TargetCounters> {
    if let Some(counters) = TARGETS.get_ptr_mut(target) {
        // SAFETY: a map value pointer stays valid for the program run; fields are only
        // updated through `add` or single aligned stores.
        return Some(unsafe { &mut *counters });
    }
    let zero = ZERO_COUNTERS.get_ptr(0)?;
    // SAFETY: `zero` points at the read-only all-zero template value.
    let zero = unsafe { &*zero };
    // Another CPU may create the same target at the same moment: EEXIST is fine, then the
    // lookup below finds its entry.
    if let Err(err) = TARGETS.insert(target, zero, u64::from(aya_ebpf::bindings::BPF_NOEXIST))
        && err != -EEXIST
    {
        count(KernelCounter::TargetsFull);
        return None;
    }
    // SAFETY: as above.
    TARGETS.get_ptr_mut(target).map(|counters| unsafe { &mut *counters })
}

pub const EEXIST: i32 = 17;
