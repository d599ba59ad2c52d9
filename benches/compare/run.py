#!/usr/bin/env python3
"""Load comparison of nrdot against nginx and HAProxy on this machine.

One shared backend (nginx, one worker, 13-byte and 64 KiB bodies); three proxies (nginx with
upstream keep-alive, HAProxy with http-reuse always, nrdot), each with one worker pinned to
CPU 0; wrk and the backend on CPU 1 (as SCHED_BATCH, unless --no-batch). Scenarios run
interleaved in rounds (A B C A B C ...) so drift hits everyone alike; medians and ranges are
reported with ratios to nginx of the same round. Bounded: about 10 minutes by default, under 3 with --quick, under 1 with --smoke (CI).
The fixed-rate row uses oha (`cargo install oha`) when it is on PATH, else hey; the capped
row needs root and a cgroup cpu controller and is skipped without one.

    python3 benches/compare/run.py [--quick|--smoke] [--nrdot target/release/nrdot] [--out results.md]
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


# Everything on CPU 1 (load generators, backends); unless --no-batch, also as
# SCHED_BATCH: a woken task on CPU 1 then waits for the tick instead of preempting the one
# running. Without it, each request a proxy forwards while wrk is mid-loop wakes the backend,
# which preempts wrk: a proxy that reacts at once (idle time on CPU 0) makes CPU 1 switch
# tasks several times as often per request as one that answers in larger batches, and CPU 1
# (99 % busy in every row) sets requests/s. Production clients and backends do not share a
# CPU, so that cost belongs to this 2-core arrangement, not to the proxy; see benches/README.md.
LOAD_SIDE = ["taskset", "-c", "1"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def cpu_busy_ticks(n):
    """Busy and total ticks of CPU n (/proc/stat; idle and iowait are not busy)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{n} "):
                v = [int(x) for x in line.split()[1:]]
                return sum(v) - v[3] - v[4], sum(v)
    return 0, 0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port, timeout=10):
    t = time.time()
    while time.time() - t < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def parse_latency(text, label):
    m = re.search(rf"^\s*{label}%?\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v if unit == "ms" else v * 1000


def wrk(url, seconds, conns, extra=(), threads=1, pinned=True):
    side = LOAD_SIDE if pinned else []
    cmd = [*side, "wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    reqs = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    err = (sum(int(x) for x in errors.groups()) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0)
    return {
        "requests": int(reqs.group(1)) if reqs else 0,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) if "Requests/sec" in out else 0.0,
        "p50": parse_latency(out, "50"),
        "p99": parse_latency(out, "99"),
        "errors": err,
    }


def stime(port, seconds, reuse):
    """TLS connections per request with session resumption: two `openssl s_time -reuse`
    clients (each sequential, HTTP/1.0 GET) on the load CPU."""
    cmd = [*LOAD_SIDE, "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
           "-reuse" if reuse else "-new", "-time", str(seconds), "-www", "/small"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    total = 0
    for p in procs:
        out = p.communicate()[0]
        m = re.search(r"(\d+) connections in (\d+) real seconds", out)
        total += int(m.group(1)) if m else 0
    return {"requests": total, "rps": total / seconds, "p50": None, "p99": None, "errors": 0}


def h2load(url, seconds, conns, streams):
    cmd = [*LOAD_SIDE, "h2load", "-D", str(seconds), "-c", str(conns), "-m", str(streams), url]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    done = int(m.group(1)) if m else 0
    # h2load reports no percentiles, only min/max/mean per request.
    return {
        "requests": done,
        "rps": done / seconds,
        "p50": None,
        "p99": None,
        "errors": (sum(int(x) for x in m.groups()[2:]) if m else 1) + (int(codes.group(3)) + int(codes.group(4)) if codes else 0),
    }


def hey(url, seconds, conns, rate):
    """A fixed request rate (hey -q is per connection), to compare latency at equal load."""
    cmd = [*LOAD_SIDE, "hey", "-z", f"{seconds}s", "-c", str(conns), "-q", str(rate // conns), url]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    def pct(label):
        m = re.search(rf"{label}% in ([\d.]+) secs", out)
        return float(m.group(1)) * 1000 if m else None
    ok = re.search(r"\[200\]\s+(\d+) responses", out)
    done = int(ok.group(1)) if ok else 0
    codes = sum(int(x) for x in re.findall(r"\[\d+\]\s+(\d+) responses", out))
    errors = len(re.findall(r"^\s+\[\d+\]\s+Get ", out, re.M)) + (codes - done)
    return {"requests": done, "rps": done / seconds, "p50": pct(50), "p99": pct(99), "errors": errors}


def oha(url, seconds, conns, rate):
    """A fixed request rate with coordinated-omission correction: latency counts from when a
    request was due, not when a busy connection got round to sending it."""
    cmd = [*LOAD_SIDE, "oha", "--no-tui", "-w", "-z", f"{seconds}s", "-c", str(conns), "-q", str(rate),
           "--latency-correction", "--output-format", "json", url]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    try:
        d = json.loads(out)
    except ValueError:
        return {"requests": 0, "rps": 0.0, "p50": None, "p99": None, "errors": 1}
    codes = d.get("statusCodeDistribution") or {}
    done = int(codes.get("200", 0))
    pct = d.get("latencyPercentiles") or {}
    ms = lambda k: pct[k] * 1000 if pct.get(k) is not None else None
    errors = sum(codes.values()) - done + sum((d.get("errorDistribution") or {}).values())
    return {"requests": done, "rps": done / seconds, "p50": ms("p50"), "p99": ms("p99"), "errors": errors}


def ws_echo(port, seconds, conns):
    """Messages through upgraded connections (one 16-byte message in flight per connection,
    echoed by the backend); a 'request' is one message there and back."""
    cmd = [*LOAD_SIDE, sys.executable, f"{HERE}/ws_echo.py", str(port), str(conns), str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    try:
        d = json.loads(out)
    except ValueError:
        return {"requests": 0, "rps": 0.0, "p50": None, "p99": None, "errors": 1}
    return {"requests": d["messages"], "rps": d["messages"] / seconds, "p50": None, "p99": None, "errors": d["errors"]}


class CpuCap:
    """Holds a proxy to a share of one CPU with a CFS quota (cgroup v2 `cpu.max`, or v1
    `cpu.cfs_quota_us`), so that the proxy, not the load generator's CPU, limits requests/s.
    Under the plain pinning CPU 1 (wrk + backend) saturates first for every proxy; with the
    proxy capped, requests/s show what a proxy serves from the same CPU budget."""
    PERIOD_US = 20_000

    def __init__(self, name, pids):
        self.dir = None
        for root, v2 in [("/sys/fs/cgroup", True), ("/sys/fs/cgroup/cpu", False)]:
            ctl = f"{root}/cgroup.controllers"
            if v2 and not (os.path.exists(ctl) and "cpu" in open(ctl).read().split()):
                continue
            if not v2 and not os.path.exists(f"{root}/cpu.cfs_quota_us"):
                continue
            try:
                if v2:
                    with open(f"{root}/cgroup.subtree_control", "w") as f:
                        f.write("+cpu")
                d = f"{root}/nrdot-compare-{name}-{os.getpid()}"
                os.makedirs(d, exist_ok=True)
                self.dir, self.v2, self.root = d, v2, root
                for pid in pids:
                    with open(f"{d}/cgroup.procs", "w") as f:
                        f.write(str(pid))
                self.set(None)
                return
            except OSError:
                self.close()
        self.dir = None

    def set(self, share):
        quota = None if share is None else int(self.PERIOD_US * share)
        if self.v2:
            with open(f"{self.dir}/cpu.max", "w") as f:
                f.write(f"{quota or 'max'} {self.PERIOD_US}")
        else:
            with open(f"{self.dir}/cpu.cfs_period_us", "w") as f:
                f.write(str(self.PERIOD_US))
            with open(f"{self.dir}/cpu.cfs_quota_us", "w") as f:
                f.write(str(quota or -1))

    def close(self):
        if not self.dir:
            return
        try:
            for pid in open(f"{self.dir}/cgroup.procs").read().split():
                with open(f"{self.root}/cgroup.procs", "w") as f:
                    f.write(pid)
            os.rmdir(self.dir)
        except OSError:
            pass
        self.dir = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="one 1-second round per scenario; exit 1 unless every target served every scenario without errors (CI)")
    ap.add_argument("--nrdot", default=os.path.join(ROOT, "target/release/nrdot"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="run only scenarios whose name contains this")
    ap.add_argument("--no-memory", action="store_true", help="skip the idle-connection memory measurement")
    ap.add_argument("--uploads", action="store_true",
                    help="also a chunked-upload row (what clients send when the length is not known up front): about 1 minute more")
    ap.add_argument("--deferred", action="store_true",
                    help="give nginx (listen ... deferred) and HAProxy (bind ... defer-accept) the deferred accept nrdot's listeners use by default")
    ap.add_argument("--no-batch", action="store_true",
                    help="run CPU 1's processes with the default policy instead of SCHED_BATCH (the arrangement before session 16)")
    ap.add_argument("--h2", action="store_true",
                    help="also TLS HTTP/2 rows (h2load, from nghttp2-client): about 2 minutes more")
    args = ap.parse_args()
    global LOAD_SIDE
    if not args.no_batch:
        LOAD_SIDE = ["chrt", "--batch", "0"] + LOAD_SIDE
    for tool in ["nginx", "haproxy", "wrk", "hey", "openssl", "taskset", "chrt"] + (["h2load"] if args.h2 else []):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install nginx-light haproxy wrk hey openssl util-linux")
    if not os.path.exists(args.nrdot):
        raise SystemExit(f"{args.nrdot} is missing: cargo build --release --bin nrdot")
    seconds, rounds, idle = (1, 1, 200) if args.smoke else (2, 3, 1000) if args.quick else (3, 5, 4000)
    work = tempfile.mkdtemp(prefix="nrdot-compare-")
    procs = []
    caps = {}

    def start(cmd, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        procs.append(p)
        return p

    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "2", "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test",
                        "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem"], check=True, capture_output=True)
        with open(f"{work}/both.pem", "w") as f:
            f.write(open(f"{work}/cert.pem").read() + open(f"{work}/key.pem").read())
        with open(f"{work}/big.bin", "wb") as f:
            f.write(b"x" * 65536)
        # nginx workers run as nobody: let them read the body file.
        os.chmod(work, 0o755)
        os.chmod(f"{work}/big.bin", 0o644)
        ports = {k: free_port() for k in ["backend", "ws_backend", "nginx", "nginx_tls", "haproxy", "haproxy_tls", "nrdot", "nrdot_tls", "nrdot_admin"]}
        common = f"pid {work}/%s.pid; error_log {work}/%s.err; worker_processes 1; events {{ worker_connections 20000; }}"
        open(f"{work}/backend.conf", "w").write(common % ("backend", "backend") + f"""
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{ports['backend']} reuseport backlog=4096;
    location = /small {{ return 200 "hello world!\\n"; }}
    location = /big {{ alias {work}/big.bin; }} }} }}""")
        # Idle upstream connections kept: more than the most requests any row has in flight
        # (500 HTTP/2 streams), as HAProxy keeps them without a limit, so no row measures
        # connection churn instead of proxying.
        keepalive = 512
        # nrdot defers the accept until the first bytes by default; nginx and HAProxy can, opt-in.
        ngx_defer, hap_defer = (" deferred", " defer-accept") if args.deferred else ("", "")
        open(f"{work}/nginx.conf", "w").write(common % ("nginx", "nginx") + f"""
http {{ access_log off; keepalive_requests 1000000;
  upstream b {{ server 127.0.0.1:{ports['backend']}; keepalive {keepalive}; }}
  upstream w {{ server 127.0.0.1:{ports['ws_backend']}; }}
  server {{ listen 127.0.0.1:{ports['nginx']} backlog=4096{ngx_defer}; listen 127.0.0.1:{ports['nginx_tls']} ssl{' http2' if args.h2 else ''} backlog=4096{ngx_defer};
    ssl_certificate {work}/cert.pem; ssl_certificate_key {work}/key.pem; ssl_session_cache shared:S:10m; ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    location /ws {{ proxy_pass http://w; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade"; proxy_read_timeout 1h; }} }} }}""")
        open(f"{work}/haproxy.cfg", "w").write(f"""
global
  nbthread 1
  maxconn 9500
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
  http-reuse always
frontend f
  bind 127.0.0.1:{ports['haproxy']}{hap_defer}
  bind 127.0.0.1:{ports['haproxy_tls']} ssl crt {work}/both.pem{hap_defer}
  use_backend w if {{ path_beg /ws }}
  default_backend b
backend b
  server s1 127.0.0.1:{ports['backend']}
backend w
  server s1 127.0.0.1:{ports['ws_backend']}
""")
        open(f"{work}/nrdot.toml", "w").write(f"""
worker_threads = 1
state_dir = "{work}/nrdot-state"
[admin]
bind = "127.0.0.1:{ports['nrdot_admin']}"
[[listener]]
name = "http"
bind = "127.0.0.1:{ports['nrdot']}"
[[listener]]
name = "https"
bind = "127.0.0.1:{ports['nrdot_tls']}"
tls = {{ cert = "{work}/cert.pem", key = "{work}/key.pem" }}
[limits]
keepalive_requests = 1000000
[access_log]
enabled = false
[[pool]]
name = "b"
keepalive = {keepalive}
[[pool.server]]
address = "127.0.0.1:{ports['backend']}"
[[pool]]
name = "w"
[[pool.server]]
address = "127.0.0.1:{ports['ws_backend']}"
[[route]]
name = "ws"
path = "/ws"
pool = "w"
[[route]]
name = "r"
pool = "b"
""")
        start([*LOAD_SIDE, "nginx", "-c", f"{work}/backend.conf", "-g", "daemon off;"])
        start([*LOAD_SIDE, sys.executable, f"{HERE}/ws_backend.py", str(ports["ws_backend"])])
        nginx_master = start(["taskset", "-c", "0", "nginx", "-c", f"{work}/nginx.conf", "-g", "daemon off;"])
        haproxy = start(["taskset", "-c", "0", "haproxy", "-f", f"{work}/haproxy.cfg"])
        nrdot = start(["taskset", "-c", "0", args.nrdot, "serve", "--config", f"{work}/nrdot.toml"], env={**os.environ, "RUST_LOG": "error"})
        for k in ports:
            wait_port(ports[k])
        time.sleep(0.5)
        nginx_worker = int(subprocess.run(["pgrep", "-P", str(nginx_master.pid)], capture_output=True, text=True).stdout.split()[0])
        pids = {"nginx": nginx_worker, "haproxy": haproxy.pid, "nrdot": nrdot.pid}
        targets = ["nginx", "haproxy", "nrdot"]
        post = f"{work}/post.lua"
        with open(post, "w") as f:
            # An API call: a 1 KiB JSON body up, the 13-byte answer down.
            f.write('wrk.method = "POST"\nwrk.body = string.rep("x", 1024)\n'
                    'wrk.headers["Content-Type"] = "application/json"\n')
        chunked = f"{work}/chunked.lua"
        with open(chunked, "w") as f:
            # The same body in chunked framing, as Go's and Java's clients send a body of
            # unknown length (wrk.format would add a Content-Length, so the request is raw).
            f.write('local req = "POST /small HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n'
                    'Content-Type: application/json\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n'
                    '400\\r\\n" .. string.rep("x", 1024) .. "\\r\\n0\\r\\n\\r\\n"\n'
                    'request = function() return req end\n')
        scenarios = [
            ("keep-alive 13 B", "http", "/small", 50, ()),
            ("keep-alive POST 1 KiB body", "http", "/small", 50, ("-s", post)),
            ("keep-alive 64 KiB", "http", "/big", 50, ()),
            # The shape of an independent run that measured nrdot at 0.99x nginx's CPU here: two
            # wrk threads free to run on either CPU (next to the proxy), 64 connections.
            ("keep-alive 64 KiB, wrk -t2 -c64 unpinned", "http", "/big", 64, "unpinned"),
            ("new connection per request", "http", "/small", 20, ("-H", "Connection: close")),
            ("TLS keep-alive 13 B", "https", "/small", 50, ()),
            ("TLS keep-alive 64 KiB", "https", "/big", 50, ()),
            ("TLS new connection per request", "https", "/small", 20, ("-H", "Connection: close")),
            ("TLS resumed connection per request (s_time)", "https", "/small", 0, "stime"),
            ("keep-alive 13 B, proxy held to half of CPU 0", "http", "/small", 50, "capped"),
            ("WebSocket echo, 16 B messages", "http", "/ws", 50, "ws"),
            # oha corrects for coordinated omission; hey (a Debian package, what CI has) cannot
            # and its own scheduling dominates its latencies, so it runs at half the rate.
            ("fixed rate 10,000 req/s, keep-alive 13 B (oha)", "http", "/small", 50, "oha") if shutil.which("oha")
            else ("fixed rate 5,000 req/s, keep-alive 13 B (hey)", "http", "/small", 50, "hey"),
        ]
        if args.uploads or args.smoke:
            scenarios.insert(2, ("keep-alive POST 1 KiB chunked body", "http", "/small", 50, ("-s", chunked)))
        if args.h2:
            # Browsers reach an edge proxy on 443 with HTTP/2: many streams on few connections
            # (a page load), and one request at a time per connection (an idle tab, an API client).
            scenarios += [
                ("TLS HTTP/2, 10 streams per connection (h2load)", "https", "/small", 50, "h2:10"),
                ("TLS HTTP/2, 1 stream per connection (h2load)", "https", "/small", 50, "h2:1"),
            ]
        if args.only:
            scenarios = [sc for sc in scenarios if args.only in sc[0]]
        if any(sc[4] == "capped" for sc in scenarios):
            caps = {t: CpuCap(t, [nginx_master.pid, pids["nginx"]] if t == "nginx" else [pids[t]]) for t in targets}
            if not all(c.dir for c in caps.values()):
                print("no writable cgroup cpu controller (root, cgroup v1 cpu or v2 with cpu): skipping the capped row", file=sys.stderr)
                scenarios = [sc for sc in scenarios if sc[4] != "capped"]
        # Idle keep-alive memory, first, on fresh processes: after the load rounds the
        # allocators reuse memory freed by then, and RSS stops growing with new connections.
        memory = {}
        for t in ([] if args.no_memory else targets):
            held = []
            for scheme in ["http", "https", "ws"]:
                port = ports[t if scheme != "https" else f"{t}_tls"]
                # Fewer WebSockets: HAProxy's maxconn must cover everything held at once.
                count = idle // 4 if scheme == "ws" else idle
                before = rss_kib(pids[t])
                socks = []
                ctx = None
                if scheme == "https":
                    import ssl
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                for _ in range(count):
                    s = socket.create_connection(("127.0.0.1", port))
                    if ctx:
                        s = ctx.wrap_socket(s, server_hostname="bench.test")
                    if scheme == "ws":
                        s.sendall(b"GET /ws HTTP/1.1\r\nHost: bench.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                                  b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
                    else:
                        s.sendall(b"GET /small HTTP/1.1\r\nHost: bench.test\r\n\r\n")
                    socks.append(s)
                    if scheme == "ws":
                        # Opened one after another, one message each way, then idle: chat or
                        # dashboard sockets accumulating. (Opened all at once, the proxies'
                        # in-flight handshake memory — buffers, request state — stays with the
                        # allocator afterwards and swamps what an open tunnel costs.)
                        s.recv(4096)
                        s.sendall(b"0123456789abcdef")
                        s.recv(4096)
                for s in socks:
                    if scheme != "ws":
                        s.recv(4096)
                time.sleep(0.5)
                after = rss_kib(pids[t])
                memory[(t, scheme)] = (after - before) * 1024 / count
                held += socks  # closed after both schemes, so TLS cannot reuse their memory
            for s in held:
                s.close()
            time.sleep(0.5)
        # A warm-up round, not counted: the memory step just freed thousands of connections'
        # state, and an allocator that returns it to the kernel (jemalloc purges dirty pages
        # as it next allocates) would pay for that inside the first scenario measured.
        if memory:
            for t in targets:
                wrk(f"http://127.0.0.1:{ports[t]}/small", min(seconds, 2), 50)
        results = {}
        for name, scheme, path, conns, extra in scenarios:
            for r in range(rounds):
                for t in targets:
                    port = ports[t if scheme == "http" else f"{t}_tls"]
                    before = cpu_ticks(pids[t])
                    load_before, wall_before = cpu_busy_ticks(1)
                    url = f"{scheme}://127.0.0.1:{port}{path}"
                    if extra == "stime":
                        res = stime(port, seconds, reuse=True)
                    elif extra == "hey":
                        res = hey(url, seconds, conns, 5000)
                    elif extra == "ws":
                        res = ws_echo(port, seconds, conns)
                    elif extra == "oha":
                        res = oha(url, seconds, conns, 10000)
                    elif extra == "capped":
                        caps[t].set(0.5)
                        try:
                            res = wrk(url, seconds, conns)
                        finally:
                            caps[t].set(None)
                    elif extra == "unpinned":
                        res = wrk(url, seconds, conns, threads=2, pinned=False)
                    elif isinstance(extra, str) and extra.startswith("h2:"):
                        res = h2load(url, seconds, conns, int(extra[3:]))
                    else:
                        res = wrk(url, seconds, conns, extra)
                    ticks = cpu_ticks(pids[t]) - before
                    load_after, wall_after = cpu_busy_ticks(1)
                    us_per_tick = 1_000_000 / os.sysconf("SC_CLK_TCK")
                    res["cpu_us"] = ticks * us_per_tick / max(res["requests"], 1)
                    # Which side limits requests/s: the proxy's share of CPU 0 over the run (per-CPU
                    # ticks count for both CPUs alike) and what CPU 1 (load generator + backend)
                    # spent per request behind this proxy.
                    res["busy"] = ticks / max(wall_after - wall_before, 1)
                    res["load_us"] = (load_after - load_before) * us_per_tick / max(res["requests"], 1)
                    results.setdefault(name, {}).setdefault(t, []).append(res)
                    print(f"{name:32} round {r + 1} {t:8} {res['rps']:>10.0f} req/s  {res['cpu_us']:6.1f} us/req  p99 {res['p99']} ms  errors {res['errors']}"
                          f"  busy {res['busy']:.2f}  cpu1 {res['load_us']:.1f} us/req", file=sys.stderr)
        report = render(results, memory, targets, args, seconds, rounds, idle)
        print(report)
        if args.smoke:
            bad = [f"{name} / {t}" for name, per in results.items() for t, runs in per.items()
                   if any(r["requests"] == 0 or r["errors"] for r in runs)]
            if bad:
                raise SystemExit("smoke: no answers or errors in: " + ", ".join(bad))
        if args.out:
            open(args.out, "w").write(report)
    finally:
        for c in caps.values():
            c.close()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def render(results, memory, targets, args, seconds, rounds, idle):
    def versions():
        v = {}
        v["nginx"] = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        v["haproxy"] = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
        v["nrdot"] = subprocess.run([args.nrdot, "version"], capture_output=True, text=True).stdout.splitlines()[0]
        return v
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {rounds} interleaved rounds of {seconds}s per scenario"
             f"{' (--quick)' if args.quick else ''}; proxies on CPU 0, wrk and backend on CPU 1"
             f"{'; nginx and HAProxy with deferred accept (--deferred)' if args.deferred else ''}"
             f"{'; CPU 1 with the default scheduling policy (--no-batch)' if args.no_batch else ', as SCHED_BATCH'}.", ""]
    lines += [f"- {k}: {v}" for k, v in versions().items()]
    lines += ["", "| scenario | target | req/s median (range) | × nginx | CPU µs/req median | × nginx | p50 ms | p99 ms | errors "
              "| proxy busy | CPU 1 µs/req |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for scenario, per in results.items():
        base = per["nginx"]
        for t in targets:
            runs = per[t]
            ratios_rps = [r["rps"] / b["rps"] for r, b in zip(runs, base) if b["rps"]]
            ratios_cpu = [r["cpu_us"] / b["cpu_us"] for r, b in zip(runs, base) if b["cpu_us"]]
            rps = [r["rps"] for r in runs]
            med = lambda xs: statistics.median(xs) if xs else 0
            lines.append(
                f"| {scenario} | {t} | {med(rps):,.0f} ({min(rps):,.0f}–{max(rps):,.0f}) | {med(ratios_rps):.2f} "
                f"| {med([r['cpu_us'] for r in runs]):.1f} | {med(ratios_cpu):.2f} "
                f"| {med([r['p50'] or 0 for r in runs]):.2f} | {med([r['p99'] or 0 for r in runs]):.2f} | {sum(r['errors'] for r in runs)} "
                f"| {med([r['busy'] for r in runs]):.2f} | {med([r['load_us'] for r in runs]):.1f} |")
    if not memory:  # --no-memory
        return "\n".join(lines) + "\n"
    lines += ["", f"Idle memory (RSS growth per connection): {idle} keep-alive connections after one request, "
              f"plaintext and TLS; {idle // 4} WebSockets opened one after another, after one message each way:", "",
              "| target | plaintext | TLS | WebSocket |", "|---|---|---|---|"]
    for t in targets:
        if (t, "http") in memory:
            lines.append(f"| {t} | {memory[(t, 'http')] / 1024:.1f} KiB | {memory[(t, 'https')] / 1024:.1f} KiB "
                         f"| {memory[(t, 'ws')] / 1024:.1f} KiB |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
