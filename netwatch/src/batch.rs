//! `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_DELETE_BATCH` (Linux 5.6+), which aya 0.14 does not
//! wrap. The pending table is read four times a second; walking it a key at a time costs two
//! syscalls per entry, which under a request storm (65,536 entries) was most of netwatch's
//! CPU. A batch moves thousands of entries per syscall.

use aya::Pod;
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `bpf_cmd` values from the kernel's UAPI.
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `map element` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries asked for per syscall. A hash map's batch must hold a whole bucket; any bucket
/// fits in this many.
const CHUNK: usize = 4096;

/// The opaque cursor of a hash map batch walk (a bucket index, `u32`); room to spare.
type Cursor = [u8; 8];

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size passed; the pointers
    // in it refer to buffers the callers keep alive and sized for what the command writes.
    let result =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Every entry of the hash map `fd`, at most about `limit` of them. Fails with `EINVAL` on
/// kernels without batch operations.
///
/// # Safety
/// `K` and `V` must be the map's key and value types (the kernel writes their bytes).
pub unsafe fn lookup_all<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    limit: usize,
) -> io::Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    // SAFETY: Pod types are plain bytes, valid when zeroed.
    let (mut keys, mut values) = unsafe {
        (
            vec![std::mem::zeroed::<K>(); CHUNK],
            vec![std::mem::zeroed::<V>(); CHUNK],
        )
    };
    let mut cursor: Cursor = [0; 8];
    let mut first = true;
    loop {
        let mut next: Cursor = [0; 8];
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_ref(&cursor) as u64
            },
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: to_u32(CHUNK),
            map_fd: to_u32(usize::try_from(fd.as_raw_fd()).unwrap_or(0)),
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // The kernel reports how many it filled, also with ENOENT (the walk's end).
        let filled = (attr.count as usize).min(CHUNK);
        entries.extend(
            keys[..filled]
                .iter()
                .copied()
                .zip(values[..filled].iter().copied()),
        );
        match result {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            Err(err) => return Err(err),
        }
        if entries.len() >= limit {
            return Ok(entries);
        }
        cursor = next;
        first = false;
    }
}

/// Deletes `keys` from the hash map `fd`; keys already gone are skipped.
///
/// # Safety
/// `K` must be the map's key type.
pub unsafe fn delete_all<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(CHUNK)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: to_u32(chunk.len()),
            map_fd: to_u32(usize::try_from(fd.as_raw_fd()).unwrap_or(0)),
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let deleted = (attr.count as usize).min(chunk.len());
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
pub unsafe fn take<K: Pod, V: Pod>(fd: BorrowedFd<'_>, key: &K) -> io::Result<Option<V>> {
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let mut attr = ElemAttr {
        map_fd: to_u32(usize::try_from(fd.as_raw_fd()).unwrap_or(0)),
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        // SAFETY: zeroed, then written by the kernel; `V` is plain old data.
        Ok(()) => Ok(Some(unsafe { value.assume_init() })),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(err) => Err(err),
    }
}
