#!/usr/bin/env python3
"""TCP peers for netwatch's path-MTU lab: a server and an uploading or downloading client.

Every exchange opens the same way, so that something small gets through before anything
large is sent: the client sends "hello\\n", the server answers "ok\\n".

serve READY_FILE PORT MODE
    Listens on every address (IPv4 and IPv6) at PORT, writes READY_FILE once listening,
    and serves each connection in a thread of its own, after the greeting:
      read      reads and discards everything until the client closes;
      stall     reads nothing more (its window fills and closes: a receiver that stopped
                reading);
      send:N    sends N bytes, then reads until the client closes.

upload HOST PORT BYTES SECONDS [PAUSE_FILE [small]]
    Greets, then writes BYTES bytes as fast as the socket takes them, and keeps the
    connection open until everything sent is acknowledged or SECONDS have passed. With
    PAUSE_FILE, it first writes BYTES, waits until they are all acknowledged (at most
    SECONDS), creates PAUSE_FILE, waits until PAUSE_FILE is removed (the test changed the
    path), then writes BYTES more (with `small`: a 5-byte message first, on its own).
    Exit 0: all acknowledged; 1: not within SECONDS.

download HOST PORT SECONDS
    Greets, then reads until the server closes or SECONDS have passed. Prints the bytes
    read. Exit 0 always (the test judges).
"""
import os
import socket
import struct
import sys
import threading
import time

GREETING = b"hello\n"
ANSWER = b"ok\n"
# SIOCOUTQ: bytes in the send queue not yet acknowledged (Linux, include/uapi/linux/sockios.h).
SIOCOUTQ = 0x5411


def unacknowledged(sock):
    import fcntl

    raw = fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
    return struct.unpack("i", raw)[0]


def greet(sock, deadline):
    sock.sendall(GREETING)
    reply = b""
    while not reply.endswith(ANSWER):
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(16)
        if not chunk:
            raise ConnectionError("closed before the greeting was answered")
        reply += chunk


def write_all(sock, size, deadline):
    block = b"x" * 65536
    sent = 0
    sock.setblocking(False)
    while sent < size and time.monotonic() < deadline:
        try:
            sent += sock.send(block[: min(len(block), size - sent)])
        except BlockingIOError:
            time.sleep(0.01)
    sock.setblocking(True)
    return sent == size


def drained(sock, deadline):
    while time.monotonic() < deadline:
        if unacknowledged(sock) == 0:
            return True
        time.sleep(0.05)
    return False


def upload(host, port, size, seconds, pause_file=None, small=None):
    deadline = time.monotonic() + seconds
    sock = socket.create_connection((host, port), timeout=seconds)
    greet(sock, deadline)
    ok = write_all(sock, size, deadline) and drained(sock, deadline)
    if pause_file:
        if not ok:
            return 1
        open(pause_file, "w").close()
        while os.path.exists(pause_file) and time.monotonic() < deadline:
            time.sleep(0.05)
        if small == "small":
            sock.sendall(b"ping\n")
            time.sleep(0.05)
        ok = write_all(sock, size, deadline) and drained(sock, deadline)
    sock.close()
    return 0 if ok else 1


def download(host, port, seconds):
    deadline = time.monotonic() + seconds
    sock = socket.create_connection((host, port), timeout=seconds)
    greet(sock, deadline)
    total = 0
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        total += len(chunk)
    print(total)
    return 0


def serve_one(conn, mode):
    try:
        conn.settimeout(120)
        request = b""
        while not request.endswith(GREETING):
            chunk = conn.recv(16)
            if not chunk:
                return
            request += chunk
        conn.sendall(ANSWER)
        if mode == "stall":
            time.sleep(120)
            return
        if mode.startswith("send:"):
            conn.sendall(b"y" * int(mode[5:]))
        while conn.recv(65536):
            pass
    except OSError:
        pass
    finally:
        conn.close()


def serve(ready_file, port, mode):
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", port))
    listener.listen(16)
    open(ready_file, "w").close()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_one, args=(conn, mode), daemon=True).start()


def main(args):
    if args[:1] == ["serve"] and len(args) == 4:
        serve(args[1], int(args[2]), args[3])
        return 0
    if args[:1] == ["upload"] and len(args) in (5, 6, 7):
        return upload(args[1], int(args[2]), int(args[3]), float(args[4]), *args[5:])
    if args[:1] == ["download"] and len(args) == 4:
        return download(args[1], int(args[2]), float(args[3]))
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
