//! The socket owner programs (cgroup2 root): who connected, by socket cookie.

use netwatch::probe::Probe;

use super::*;

/// The socket owner programs (issue 13) load on this kernel, attach to the cgroup2 root, let
/// `connect()` through, and record this process as the connected socket's owner under the
/// socket's cookie; a release stamps it.
#[test]
fn socket_owner_programs_record_who_connected() {
    const NAME: &str = "socket_owner_programs_record_who_connected";
    if !netwatch_tests::prerequisites(NAME, &[]) {
        return;
    }
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    let cgroup2 = netwatch::attribution::host::cgroup2_mount(&mounts)
        .expect("a cgroup2 mount (the VM runner mounts one too)");
    let mut probe = Probe::load(TIMEOUT).expect("loading the programs");
    probe
        .attach_owners(Some(&cgroup2))
        .unwrap_or_else(|why| panic!("the socket owner programs: {why}"));
    assert_eq!(probe.attribution_status(), "available");
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    socket
        .connect((Ipv4Addr::LOCALHOST, 9))
        .expect("connect() let through");
    let cookie = socket_cookie(&socket);
    let owner = probe
        .socket_owner(cookie)
        .expect("connect4 recorded the owner");
    assert_eq!(owner.tgid, std::process::id(), "{owner:?}");
    assert_ne!(owner.cgroup_id, 0, "{owner:?}");
    assert_eq!(owner.released_ns, 0, "still open: {owner:?}");
    drop(socket);
    let released = probe.socket_owner(cookie).expect("kept after release");
    assert_ne!(
        released.released_ns, 0,
        "sock_release stamped it: {released:?}"
    );
}

/// `SO_COOKIE`: the socket's cookie, as the programs see it.
fn socket_cookie(socket: &std::net::UdpSocket) -> u64 {
    use std::os::fd::AsRawFd as _;
    const SO_COOKIE: libc::c_int = 57;
    let mut cookie: u64 = 0;
    let mut length = libc::socklen_t::try_from(size_of::<u64>()).expect("8");
    // SAFETY: getsockopt(2) on a live socket into a u64 of the length given.
    let got = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut length,
        )
    };
    assert_eq!(got, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    cookie
}
