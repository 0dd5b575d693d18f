//! tun devices: raw IP packets, no link-layer header. The lab's VPN (`lab-vpn`) carries
//! their packets; [`crate::lab::Netns::tun_of_link_type`] makes devices of other link types
//! with them.

use std::{
    fs::{File, OpenOptions},
    io,
    os::fd::AsRawFd as _,
};

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags (a `short`) at the
/// start of the union (40 bytes in all on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}
const _: () = assert!(size_of::<IfReq>() == 40);

/// Opens a new tun device `name` in this thread's network namespace: IP packets, without
/// the packet information header. The device goes with the descriptor unless made
/// persistent.
pub fn open(name: &str) -> io::Result<File> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a device name of 1 to 15 bytes",
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: libc::c_short::try_from(libc::IFF_TUN | libc::IFF_NO_PI).expect("small flags"),
        _union_rest: [0; 22],
    };
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: TUNSETIFF reads (and writes back) the 40-byte ifreq it is given.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &raw mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}
