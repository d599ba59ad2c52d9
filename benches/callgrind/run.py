#!/usr/bin/env python3
"""Instructions per proxied request, counted by valgrind's callgrind: a figure that does not
move with the noise of this 2-core VM, so a refactor of the data plane can be judged to 1 %.

The real binary (`nrdot serve`, one worker, access log off) runs under callgrind against a
small in-process origin (13-byte body, keep-alive). A client in this script sends requests on
one keep-alive connection; for each window the counters are zeroed (`callgrind_control -z`),
N requests go through, and the counters are dumped (`-d`). Instructions per request are the
difference between a long and a short window divided by the difference in requests, so the
fixed costs of a window (the dump itself, timer ticks) cancel out. The median of `--rounds`
such pairs is printed. Shapes: `ka` (keep-alive GET, the native HTTP/1.1 path) and `h1post`
(a 1 KiB POST).

    python3 benches/callgrind/run.py [--nrdot target/release/nrdot] [--rounds 3] [--shape ka]

Bounded: each round sends 3,000 requests (about 10 s under callgrind); the whole run is
under a minute with the defaults. Needs valgrind (Debian `valgrind`).
"""
import argparse, glob, os, re, shutil, socket, statistics, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BODY = b"Hello, world!"
# Origins send Date (nginx, the comparison's backend, does); a fixed one keeps the bytes equal.
DATE = b"Fri, 04 Dec 2026 12:00:00 GMT"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def origin(listener):
    """A keep-alive origin answering every request with 13 bytes and a Date (reads heads and
    bodies)."""
    def conn(c):
        buf = b""
        with c:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                need = int(m.group(1)) if m else 0
                while len(buf) < need:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf[need:]
                c.sendall(b"HTTP/1.1 200 OK\r\nDate: " + DATE + b"\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n" + BODY)
    while True:
        c, _ = listener.accept()
        threading.Thread(target=conn, args=(c,), daemon=True).start()


def request(sock, shape):
    if shape == "h1post":
        body = b"x" * 1024
        sock.sendall(b"POST /p HTTP/1.1\r\nHost: bench\r\nContent-Length: 1024\r\n\r\n" + body)
    else:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: callgrind\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d:
            raise SystemExit("nrdot closed the connection")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {head[:80]!r}")
    need = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head).group(1))
    while len(rest) < need:
        rest += sock.recv(65536)


def window(pid, sock, n, shape, out_dir, keep=None):
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    for _ in range(n):
        request(sock, shape)
    before = set(glob.glob(f"{out_dir}/callgrind.out*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    for _ in range(100):
        new = set(glob.glob(f"{out_dir}/callgrind.out*")) - before
        if new:
            break
        time.sleep(0.05)
    (path,) = new
    time.sleep(0.2)
    if keep:
        shutil.copy(path, keep)
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nrdot", default=f"{ROOT}/target/release/nrdot")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shape", choices=["ka", "h1post"], default="ka")
    ap.add_argument("--short", type=int, default=500)
    ap.add_argument("--long", type=int, default=2500)
    ap.add_argument("--keep", metavar="FILE", help="copy the last long window's callgrind dump here (for callgrind_annotate)")
    args = ap.parse_args()

    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(64)
    threading.Thread(target=origin, args=(lst,), daemon=True).start()
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as work:
        cfg = f"{work}/nrdot.toml"
        open(cfg, "w").write(f"""
worker_threads = 1
state_dir = "{work}/state"
[admin]
bind = "127.0.0.1:{admin}"
[[listener]]
name = "http"
bind = "127.0.0.1:{port}"
[limits]
keepalive_requests = 1000000
[access_log]
enabled = false
[[pool]]
name = "b"
[[pool.server]]
address = "127.0.0.1:{lst.getsockname()[1]}"
[[route]]
name = "r"
pool = "b"
""")
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--compress-strings=no", "--compress-pos=no",
             f"--callgrind-out-file={work}/callgrind.out.%p",
             args.nrdot, "serve", "--config", cfg],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "error"})
        try:
            deadline = time.time() + 60
            while True:
                try:
                    sock = socket.create_connection(("127.0.0.1", port), 1)
                    break
                except OSError:
                    if time.time() > deadline or proc.poll() is not None:
                        raise SystemExit("nrdot did not start under valgrind")
                    time.sleep(0.2)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(300):  # warm: pools, buffers, caches
                request(sock, args.shape)
            per = []
            for r in range(args.rounds):
                short = window(proc.pid, sock, args.short, args.shape, work)
                long = window(proc.pid, sock, args.long, args.shape, work, args.keep)
                per.append((long - short) / (args.long - args.short))
                print(f"round {r + 1}: {per[-1]:,.0f} instructions/request "
                      f"({short:,} for {args.short}, {long:,} for {args.long})", file=sys.stderr)
            print(f"{args.shape}: {statistics.median(per):,.0f} instructions per request "
                  f"(median of {args.rounds}; range {min(per):,.0f}-{max(per):,.0f})")
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
