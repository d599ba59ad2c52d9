#!/usr/bin/env python3
"""The scale benchmark (issue 24): nrdot with 1k, 10k and 100k generated routes.

For each size it reports what an operator of a large platform pays per route:
  validate   `nrdot config validate` wall time and peak RSS (parse, check, no serving)
  startup    `nrdot serve` until /health answers (validate + compile + bind)
  rss        resident memory serving, after 2,000 requests over random routes and 12 s;
             heap held: what jemalloc says the program holds at that moment
  scrape     size and time of GET /metrics (median of 3)
  put        time of a PUT of the whole table (median of 3), under steady traffic, with the
             number of failed requests during the PUTs; rss after the PUTs
  store      bytes of the stored version / bytes of the file

Bounded: every wait has a timeout, traffic stops after the PUTs. Lookup time is the criterion
bench (`NRDOT_SCALE_HOSTS=10000 cargo bench -p nrdot-benches --bench lookup`).

    cargo build --release --bin nrdot
    python3 benches/scale/run.py                      # 1k, 10k, 100k routes
    python3 benches/scale/run.py --hosts 1000         # one size
"""
import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import gen  # noqa: E402


# Seconds to wait before reading RSS (jemalloc's decay is 10 s).
SETTLE = 12


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def origin():
    """A keep-alive origin answering every request 200 `ok`, in a thread; returns its port."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(256)

    def serve(c):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                _, _, buf = buf.partition(b"\r\n\r\n")
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            pass
        finally:
            c.close()

    def accept():
        while True:
            c, _ = srv.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1]


def peak_rss_of(cmd):
    """Runs `cmd`; returns (seconds, peak RSS in MB, exit code)."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - start, usage.ru_maxrss / 1024, p.returncode


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Client:
    """Keep-alive HTTP/1.1 requests through nrdot; counts answers other than 200. A request
    is sent again only when its connection closed before any byte of an answer (a keep-alive
    connection the server had closed), as browsers do."""

    def __init__(self, port):
        self.port, self.sock, self.failed, self.sent = port, None, 0, 0

    def _recv(self):
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionError("closed")
        return d

    def get(self, host, path):
        self.sent += 1
        for attempt in range(2):
            got = b""
            try:
                if self.sock is None:
                    self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                while b"\r\n\r\n" not in got:
                    got += self._recv()
                head, _, rest = got.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(rest) < length:
                    rest += self._recv()
                if not head.startswith(b"HTTP/1.1 200"):
                    self.failed += 1
                if b"connection: close" in head.lower():
                    self.sock.close()
                    self.sock = None
                return
            except OSError:
                if self.sock:
                    self.sock.close()
                self.sock = None
                if got or attempt == 1:
                    self.failed += 1
                    return


def traffic(port, hosts, prefixes, n):
    c = Client(port)
    for _ in range(n):
        h, p = random.randrange(hosts), random.randrange(prefixes)
        c.get(f"app{h}.example.com", f"/svc{p}/x")
    return c


def admin(method, url, token, body=None, timeout=120):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("authorization", f"Bearer {token}")
    start = time.monotonic()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = r.read()
    return time.monotonic() - start, data


def one_size(nrdot, hosts, prefixes, workdir):
    routes = hosts * prefixes + 1
    state = os.path.join(workdir, f"state-{hosts}")
    listen, admin_port = free_port(), free_port()
    text = gen.config(hosts, prefixes, f"127.0.0.1:{listen}", f"127.0.0.1:{admin_port}",
                      state, f"127.0.0.1:{origin()}")
    path = os.path.join(workdir, f"scale-{routes}.toml")
    with open(path, "w") as f:
        f.write(text)
    size = len(text.encode())
    row = {"routes": routes, "config_mb": size / 1e6}
    secs, peak, code = peak_rss_of([nrdot, "config", "validate", "--file", path])
    assert code == 0, f"validate failed ({code})"
    row.update(validate_s=secs, validate_peak_mb=peak)

    start = time.monotonic()
    proc = subprocess.Popen([nrdot, "serve", "--config", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{admin_port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("nrdot did not start")
                time.sleep(0.05)
        row["startup_s"] = time.monotonic() - start
        warm = traffic(listen, hosts, prefixes, 2000)
        assert warm.failed == 0, f"{warm.failed} of {warm.sent} warm-up requests failed"
        # jemalloc's background thread returns freed pages after its 10 s decay: RSS is read
        # once that has passed, as an operator would see it a minute later.
        time.sleep(SETTLE)
        row["rss_mb"] = rss_mb(proc.pid)
        token = next(line.split("=", 1)[1].strip()
                     for line in open(os.path.join(state, "admin-credentials"))
                     if line.startswith("NRDOT_TOKEN="))
        scrapes = [admin("GET", base + "/metrics", token) for _ in range(3)]
        row["scrape_kb"] = len(scrapes[-1][1]) / 1024
        row["scrape_s"] = statistics.median(s for s, _ in scrapes)
        gauges = dict(line.split(" ", 1) for line in scrapes[-1][1].decode().splitlines()
                      if line.startswith("nrdot_heap_"))
        row["heap_mb"] = float(gauges.get("nrdot_heap_allocated_bytes", 0)) / 1e6
        # Whole-table PUTs under steady traffic from two clients.
        stop, loads = threading.Event(), []

        def load():
            c = Client(listen)
            while not stop.is_set():
                h, p = random.randrange(hosts), random.randrange(prefixes)
                c.get(f"app{h}.example.com", f"/svc{p}/x")
            loads.append(c)

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        puts = []
        try:
            for i in range(3):
                body = (text + f"\n# put {i}\n").encode()
                puts.append(admin("PUT", base + "/api/v2/config", token, body)[0])
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        row["put_s"] = statistics.median(puts)
        row["put_failed"] = sum(c.failed for c in loads)
        row["put_requests"] = sum(c.sent for c in loads)
        time.sleep(SETTLE)
        row["rss_after_puts_mb"] = rss_mb(proc.pid)
        versions = os.path.join(state, "versions")
        newest = max(f for f in os.listdir(versions) if f[0].isdigit())
        row["store_ratio"] = os.path.getsize(os.path.join(versions, newest)) / size
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return row


def main():
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--nrdot", default="target/release/nrdot")
    a.add_argument("--hosts", type=int, action="append",
                   help="hosts (x10 prefixes); repeatable; default 100, 1000, 10000")
    a.add_argument("--prefixes", type=int, default=10)
    a.add_argument("--json", action="store_true")
    args = a.parse_args()
    with tempfile.TemporaryDirectory(prefix="nrdot-scale-") as workdir:
        rows = [one_size(os.path.abspath(args.nrdot), h, args.prefixes, workdir)
                for h in (args.hosts or [100, 1000, 10000])]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| routes | config | validate | validate peak | startup | RSS serving | heap held "
          "| RSS after 3 PUTs | /metrics | scrape | PUT | failed during PUTs | stored / file |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['routes']:,} | {r['config_mb']:.1f} MB | {r['validate_s']:.2f} s "
              f"| {r['validate_peak_mb']:.0f} MB | {r['startup_s']:.2f} s | {r['rss_mb']:.0f} MB "
              f"| {r['heap_mb']:.0f} MB "
              f"| {r['rss_after_puts_mb']:.0f} MB | {r['scrape_kb']:.0f} KB "
              f"| {r['scrape_s'] * 1000:.0f} ms | {r['put_s']:.2f} s "
              f"| {r['put_failed']} of {r['put_requests']:,} | {r['store_ratio'] * 100:.1f} % |")


if __name__ == "__main__":
    main()
