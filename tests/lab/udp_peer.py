#!/usr/bin/env python3
"""UDP peers for netwatch's lab: an NTP/echo responder and a client that asks once.

serve READY_FILE ADDR[,ADDR...] PORT[,PORT...]
    Binds every (address, port) (one socket each, so answers leave from the address asked),
    writes READY_FILE once all are bound, then answers: port 123 as an NTP server (RFC 5905:
    mode 4, origin = the request's transmit timestamp), any other port by sending a datagram
    back. Client-mode (3) NTP only; anything else on 123 is ignored.

ask HOST PORT ntp|flow TRIES WAIT [SOURCE]
    From SOURCE (an address of this host; default: the kernel's choice), sends one request (a 48-byte NTP client message with a random transmit timestamp, or a
    short datagram) from a connected socket, and the very same datagram again every WAIT
    seconds without an answer, TRIES sends in all. Exit 0: answered; 1: no answer;
    2: refused (an ICMP error reported on the socket).
"""
import os
import select
import socket
import struct
import sys
import time

NTP_PORT = 123
NTP_LEN = 48
# Seconds from the NTP era (1900) to the Unix epoch.
NTP_EPOCH = 2_208_988_800


def ntp_now():
    now = time.time() + NTP_EPOCH
    return struct.pack("!II", int(now) & 0xFFFFFFFF, int((now % 1) * 2**32))


def ntp_answer(request):
    if len(request) < NTP_LEN or request[0] & 0x07 != 3:
        return None
    version = (request[0] >> 3) & 0x07
    answer = bytearray(NTP_LEN)
    answer[0] = (version << 3) | 4  # LI 0, the client's version, mode 4 (server)
    answer[1] = 2  # stratum 2
    answer[2] = request[2]  # poll
    answer[3] = 0xEC  # precision 2^-20 s
    received = ntp_now()
    answer[16:24] = received  # reference timestamp
    answer[24:32] = request[40:48]  # origin: the client's transmit timestamp
    answer[32:40] = received
    answer[40:48] = ntp_now()
    return bytes(answer)


def serve(ready_file, addresses, ports):
    sockets = {}
    for address in addresses.split(","):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        for port in ports.split(","):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, int(port)))
            sockets[sock] = int(port)
    with open(ready_file, "w") as ready:
        ready.write("ready\n")
    while True:
        readable, _, _ = select.select(list(sockets), [], [])
        for sock in readable:
            try:
                data, peer = sock.recvfrom(2048)
            except OSError:
                continue
            answer = ntp_answer(data) if sockets[sock] == NTP_PORT else b"answer:" + data[:32]
            if answer is not None:
                sock.sendto(answer, peer)


def ask(host, port, kind, tries, wait, source=None):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if source:
        sock.bind((source, 0))
    sock.connect((host, int(port)))
    if kind == "ntp":
        # LI 0, version 4, mode 3 (client), poll 6; the transmit timestamp is random, as
        # chrony sends it (it only has to come back as the answer's origin).
        request = bytes([0x23, 0, 6, 0xEC]) + bytes(36) + os.urandom(8)
    else:
        request = b"netwatch-lab-request"
    for _ in range(int(tries)):
        try:
            sock.send(request)
            readable, _, _ = select.select([sock], [], [], float(wait))
            if readable:
                sock.recv(2048)
                return 0
        except OSError as err:
            print(f"{host}:{port} refused: {err}", file=sys.stderr)
            return 2
    return 1


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:5])
    else:
        sys.exit(ask(*sys.argv[2:8]))
