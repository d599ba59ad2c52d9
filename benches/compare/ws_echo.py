#!/usr/bin/env python3
"""WebSocket-shaped load: CONNS connections upgrade through the proxy at PORT, then each
sends a 16-byte message and waits for its echo, over and over, for SECONDS. Prints the number
of messages echoed and of errors as JSON. Non-blocking sockets and one selector: one process
keeps all connections busy.

    python3 ws_echo.py PORT CONNS SECONDS
"""
import json
import selectors
import socket
import sys
import time

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: bench.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
MSG = b"0123456789abcdef"


def main(port, conns, seconds):
    sel = selectors.DefaultSelector()
    errors = 0
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(UPGRADE)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            errors += 1
            s.close()
            continue
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, [0])
    done = 0
    end = time.monotonic() + seconds
    for s in socks:
        s.send(MSG)
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.1):
            s, got = key.fileobj, key.data
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                errors += 1
                sel.unregister(s)
                continue
            got[0] += len(data)
            while got[0] >= len(MSG):
                got[0] -= len(MSG)
                done += 1
                s.send(MSG)
    for s in socks:
        s.close()
    print(json.dumps({"messages": done, "errors": errors}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
