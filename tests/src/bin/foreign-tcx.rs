//! Another tc program in the tcx chain, as Cilium's or Calico's eBPF dataplanes put there:
//! loads `r0 = 0; exit` (`TC_ACT_OK`, which tcx reads as `TCX_PASS`: the packet is accepted
//! and no later program in the chain runs) and links it with tcx on IFACE, appended to the
//! chain. Runs inside the namespace of IFACE until killed: the links are held by this
//! process and go when it exits. Creates `READY_FILE` once attached.
//!
//! ```text
//! foreign-tcx READY_FILE IFACE ingress|egress|both
//! ```
//!
//! Only the bpf(2) syscall through libc: nothing of netwatch's loader.

use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd},
};

/// `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_prog_type`.
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `enum bpf_attach_type`.
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// `r0 = 0` (`BPF_ALU64 | BPF_MOV | BPF_K`), `exit` (`BPF_JMP | BPF_EXIT`).
const PROGRAM: [u64; 2] = [
    u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]),
    u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
];

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_LINK_CREATE` part of `union bpf_attr`, with the tcx member of its union.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> OwnedFd {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix of the size passed; the
    // kernel zero-extends the rest.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    assert!(fd >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor the kernel just returned to us.
    unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("fd")) }
}

fn attach(ifindex: u32, attach_type: u32) -> (OwnedFd, OwnedFd) {
    use std::os::fd::AsRawFd as _;
    let license = CString::new("GPL").expect("license");
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"foreign_tcx");
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: 2,
        insns: PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: attach_type,
        ..ProgLoad::default()
    };
    let program = bpf(BPF_PROG_LOAD, &mut load);
    let mut create = LinkCreate {
        prog_fd: u32::try_from(program.as_raw_fd()).expect("fd"),
        target_ifindex: ifindex,
        attach_type,
        ..LinkCreate::default()
    };
    let link = bpf(BPF_LINK_CREATE, &mut create);
    (program, link)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ready, iface, hooks] = &args[..] else {
        eprintln!("usage: foreign-tcx READY_FILE IFACE ingress|egress|both");
        std::process::exit(2);
    };
    let name = CString::new(iface.as_str()).expect("interface name");
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex != 0, "no interface {iface}");
    let types: &[u32] = match hooks.as_str() {
        "ingress" => &[BPF_TCX_INGRESS],
        "egress" => &[BPF_TCX_EGRESS],
        "both" => &[BPF_TCX_INGRESS, BPF_TCX_EGRESS],
        other => panic!("not a hook: {other}"),
    };
    let _held: Vec<_> = types.iter().map(|&t| attach(ifindex, t)).collect();
    std::fs::write(ready, "attached\n").expect("ready file");
    loop {
        std::thread::park();
    }
}
