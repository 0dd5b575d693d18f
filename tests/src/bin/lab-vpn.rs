//! The lab's VPN: one end of a point-to-point tunnel, what `OpenVPN`, wireguard-go or
//! Tailscale do minus the crypto. Creates a tun device (raw IP packets, no link-layer
//! header) and carries what the host routes into it to the peer in UDP datagrams, and the
//! datagrams the peer sends into it.
//!
//! `lab-vpn DEVICE LOCAL_ADDRESS:PORT PEER_ADDRESS:PORT`. The device exists (down) once the
//! process runs; the caller gives it its addresses and brings it up. The device goes with
//! the process: run it until killed.

use std::{
    fs::File,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    process::ExitCode,
};

use netwatch_tests::tun;

/// Forwards packets both ways until an error other than the ones a tunnel lives with.
fn forward(tun: &mut File, socket: &UdpSocket, peer: SocketAddr) -> io::Error {
    // The largest datagram: the tunnel's MTU is set well below it.
    let mut buffer = vec![0u8; 65_536];
    let mut fds = [
        libc::pollfd {
            fd: tun.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: poll reads and writes the two pollfd entries of the array it is given.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return err;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            match tun.read(&mut buffer) {
                // The peer's end not listening yet (or gone): the packet is lost, as on any
                // link; the sender's own timers deal with it.
                Ok(n) => drop(socket.send_to(&buffer[..n], peer)),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return err,
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            match socket.recv_from(&mut buffer) {
                // Only the peer's datagrams enter the tunnel.
                Ok((n, from)) if from == peer => match tun.write(&buffer[..n]) {
                    // EIO: this end's device is still down (the caller brings it up after
                    // starting the process); the packet is lost, as on a link not yet up.
                    Err(err) if err.raw_os_error() == Some(libc::EIO) => {}
                    Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(err) => return err,
                    Ok(_) => {}
                },
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused
                    ) => {}
                Err(err) => return err,
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [device, local, peer] = &args[..] else {
        eprintln!("usage: lab-vpn DEVICE LOCAL_ADDRESS:PORT PEER_ADDRESS:PORT");
        return ExitCode::from(2);
    };
    let (Ok(local), Ok(peer)) = (local.parse::<SocketAddr>(), peer.parse::<SocketAddr>()) else {
        eprintln!("lab-vpn: addresses are ADDRESS:PORT");
        return ExitCode::from(2);
    };
    let mut tun = match tun::open(device) {
        Ok(tun) => tun,
        Err(err) => {
            eprintln!("lab-vpn: cannot create tun device {device}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let socket = match UdpSocket::bind(local) {
        Ok(socket) => socket,
        Err(err) => {
            eprintln!("lab-vpn: cannot bind {local}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let err = forward(&mut tun, &socket, peer);
    eprintln!("lab-vpn {device}: {err}");
    ExitCode::FAILURE
}
