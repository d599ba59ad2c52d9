#!/usr/bin/env python3
"""WebSocket-shaped backend for the comparison: answers any request with `101 Switching
Protocols` and then echoes bytes until the client ends. No framing is parsed: the proxies
relay bytes after the upgrade, so raw echo is what they see of a WebSocket.

    python3 ws_backend.py PORT
"""
import asyncio
import base64
import hashlib
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"


async def handle(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        # The accept key a client (and HAProxy, which checks it) expects for its key.
        key = next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")), b"")
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


async def main(port):
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
