//! `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_DELETE_BATCH` (Linux 5.6+), which aya 0.14 does not
//! wrap. The pending table is read four times a second; walking it a key at a time costs two
//! syscalls per entry, which under a request storm (65,536 entries) was most of netwatch's
//! CPU. A batch moves thousands of entries per syscall.

use aya::Pod;
use aya_obj::generated::{bpf_attr, bpf_cmd};
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// Entries asked for per syscall. A hash map's batch must hold a whole bucket (`ENOSPC`
/// otherwise: <https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/hashtab.c>, `__htab_map_lookup_and_delete_batch`);
/// any bucket fits in this many.
const CHUNK: usize = 4096;

/// The opaque cursor of a hash map batch walk (a bucket index, `u32`); room to spare.
type Cursor = [u8; 8];

/// A zeroed `union bpf_attr`: members not set stay zero, as the kernel requires of the bytes
/// past the command's member (<https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/syscall.c>, `CHECK_ATTR`).
pub(crate) fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a union of integer structs; all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// The `bpf(2)` system call: what it returns (0, or a new descriptor for some commands).
fn syscall(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a whole, initialised bpf_attr; the pointers in it refer to buffers the
    // callers keep alive and sized for what the command writes.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

pub(crate) fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<()> {
    syscall(cmd, attr).map(|_| ())
}

/// A command that returns a new file descriptor (`BPF_PROG_LOAD`), which is closed when the
/// result is dropped.
pub(crate) fn bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let fd = i32::try_from(syscall(cmd, attr)?)
        .map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn map_fd(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

/// The buffers one batch walk fills, kept across walks: the pending table is read four
/// times a second, and buffers allocated and freed each time (hundreds of KiB for the chunks,
/// megabytes for the entries while a burst is pending) left holes that grew the heap with
/// each burst (the soak test saw it).
pub(crate) struct Lookup<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K: Pod, V: Pod> Default for Lookup<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Pod, V: Pod> Lookup<K, V> {
    #[must_use]
    pub(crate) fn new() -> Self {
        // SAFETY: Pod types are plain bytes, valid when zeroed.
        let (keys, values) = unsafe {
            (
                vec![std::mem::zeroed::<K>(); CHUNK],
                vec![std::mem::zeroed::<V>(); CHUNK],
            )
        };
        Self { keys, values }
    }

    /// Replaces `entries` with every entry of the hash map `fd`, at most about `limit` of
    /// them. Fails with `EINVAL` on kernels without batch operations.
    ///
    /// # Safety
    /// `K` and `V` must be the map's key and value types (the kernel writes their bytes).
    pub(crate) unsafe fn all(
        &mut self,
        fd: BorrowedFd<'_>,
        limit: usize,
        entries: &mut Vec<(K, V)>,
    ) -> io::Result<()> {
        entries.clear();
        let mut cursor: Cursor = [0; 8];
        let mut first = true;
        loop {
            let mut next: Cursor = [0; 8];
            let mut attr = zeroed_attr();
            attr.batch.in_batch = if first {
                0
            } else {
                std::ptr::from_ref(&cursor) as u64
            };
            attr.batch.out_batch = std::ptr::from_mut(&mut next) as u64;
            attr.batch.keys = self.keys.as_mut_ptr() as u64;
            attr.batch.values = self.values.as_mut_ptr() as u64;
            attr.batch.count = to_u32(CHUNK);
            attr.batch.map_fd = map_fd(fd);
            let result = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
            // The kernel reports how many it filled, also with ENOENT (the walk's end).
            // SAFETY: reading the member the kernel wrote, a plain integer.
            let filled = (unsafe { attr.batch.count } as usize).min(CHUNK);
            entries.extend(
                self.keys[..filled]
                    .iter()
                    .copied()
                    .zip(self.values[..filled].iter().copied()),
            );
            match result {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(err) => return Err(err),
            }
            if entries.len() >= limit {
                return Ok(());
            }
            cursor = next;
            first = false;
        }
    }
}

/// Deletes `keys` from the hash map `fd`; keys already gone are skipped.
///
/// # Safety
/// `K` must be the map's key type.
pub(crate) unsafe fn delete_all<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(CHUNK)];
        let mut attr = zeroed_attr();
        attr.batch.keys = chunk.as_ptr() as u64;
        attr.batch.count = to_u32(chunk.len());
        attr.batch.map_fd = map_fd(fd);
        let result = bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr);
        // SAFETY: as above.
        let deleted = (unsafe { attr.batch.count } as usize).min(chunk.len());
        match result {
            Ok(()) => rest = &rest[chunk.len()..],
            // It stops at a key that is not there (answered meanwhile): skip that one.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                rest = rest.get(deleted + 1..).unwrap_or_default();
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Deletes `key` from the hash map `fd` and returns the value it held, in one step
/// (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`, hash maps from Linux 5.14); `None` when the key is not
/// there.
///
/// # Safety
/// `K` and `V` must be the map's key and value types.
pub(crate) unsafe fn take<K: Pod, V: Pod>(fd: BorrowedFd<'_>, key: &K) -> io::Result<Option<V>> {
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = map_fd(fd);
    attr.__bindgen_anon_2.key = std::ptr::from_ref(key) as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = value.as_mut_ptr() as u64;
    match bpf(bpf_cmd::BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        // SAFETY: zeroed, then written by the kernel; `V` is plain old data.
        Ok(()) => Ok(Some(unsafe { value.assume_init() })),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(err) => Err(err),
    }
}
