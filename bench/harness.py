"""Shared parts of the benchmark: starting and stopping the servers, HTTP helpers,
memory and CPU readings, and wrk. Used by bench/run.py and bench/profile.py.

Every process started here is started in its own session and remembered; stop_all()
ends exactly those (SIGTERM to the process group it leads, SIGKILL after a grace period).
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
LUA = BENCH / "lua"
OUT = BENCH / "out"          # logs and raw results (ignored by git)
HOST = "127.0.0.1"
KiB, MiB = 1024, 1024 * 1024
CYCLE_SLOTS = 64              # namespaces / folders prepared for the sync cycle
DAV_USER, DAV_PASSWORD = "bench", "bench-password"
BENCH_KEY = "5a" * 32         # ENCRYPTION_KEY for the encrypted oxsync runs


def oxsync_command() -> list[str]:
    """OXSYNC_CMD (e.g. "python3 dist/oxsync.pyz") or this checkout's oxsync.py."""
    return shlex.split(os.environ.get("OXSYNC_CMD", "")) or [sys.executable,
                                                             str(ROOT / "oxsync.py")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

STARTED: list[subprocess.Popen] = []
TEMP_DIRS: list[str] = []


def start_process(argv: list[str], log_path: Path, env: dict | None = None,
                  cwd: str | None = None, cpus: str | None = None) -> subprocess.Popen:
    """Start a server in its own session (so Ctrl-C in the terminal reaches only us)."""
    if cpus is not None:
        argv = ["taskset", "-c", cpus] + argv
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=env, cwd=cwd, start_new_session=True)
    log.close()
    STARTED.append(process)
    return process


def stop_process(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the process group this process leads, then SIGKILL if it lingers."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(5)
    else:
        # The leader is gone; make sure nothing it started (nginx workers) is left.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if process in STARTED:
        STARTED.remove(process)


def make_temp_dir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=f"oxsync-bench-{prefix}-")
    TEMP_DIRS.append(path)
    return path


def stop_all(keep_temp: bool = False) -> None:
    for process in list(STARTED):
        try:
            stop_process(process)
        except Exception as error:  # noqa: BLE001 - keep stopping the others
            print(f"warning: could not stop pid {process.pid}: {error}", file=sys.stderr)
    if not keep_temp:
        for path in TEMP_DIRS:
            shutil.rmtree(path, ignore_errors=True)
        TEMP_DIRS.clear()


def sigterm_to_keyboard_interrupt() -> None:
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx: master and workers)."""
    pids, index = [pid], 0
    while index < len(pids):
        current = pids[index]
        index += 1
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as file:
                    pids.extend(int(child) for child in file.read().split())
        except OSError:
            continue
    return pids


def status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_kib(pid: int, field: str) -> int:
    """Sum of a /proc status field (VmRSS, VmHWM) over the process tree, KiB."""
    return sum(status_kib(p, field) for p in process_tree(pid))


def tree_cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as file:
                fields = file.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            pass
    return total


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------
# HTTP (loopback only)
# ---------------------------------------------------------------------------

class Answer:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, timeout: float = 60) -> Answer:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def wait_until_up(port: int, process: subprocess.Popen, path: str = "/",
                  headers: dict | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode} while starting")
        try:
            if request(port, "GET", path, headers=headers, timeout=2).status < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no answer on port {port} after {timeout:.0f}s")


# ---------------------------------------------------------------------------
# Bodies shared by all servers
# ---------------------------------------------------------------------------

def sample_manifest() -> dict:
    """A structured-v2 manifest like today's client sends (about 2.5 KB)."""
    sections = {}
    for kind in ("connections", "forwards", "quickCommands", "serialProfiles",
                 "telnetProfiles", "moshProfiles", "remoteDesktopProfiles",
                 "standaloneSftpProfiles"):
        sections[kind] = {"revision": f"fnv1a-{abs(hash(kind)) % 16**8:08x}",
                          "path": f"structured/{kind}/fnv1a-{abs(hash(kind)) % 16**8:08x}.json",
                          "recordCount": 3, "contentType": "application/json"}
    sections["sensitiveCredentials"] = {
        "revision": "9f" * 32, "path": f"structured/sensitiveCredentials/{'9f' * 32}.oxide",
        "recordCount": 4, "contentType": "application/vnd.oxideterm.oxide"}
    sections["appSettings"] = {"general": {"revision": "fnv1a-0badcafe",
                                           "path": "structured/settings/app/general/"
                                                   "fnv1a-0badcafe.oxide",
                                           "contentType": "application/vnd.oxideterm.oxide"}}
    sections["pluginSettings"] = {}
    revisions = {kind: value["revision"] for kind, value in sections.items()
                 if "revision" in value}
    revisions.update(appSettings={"general": "fnv1a-0badcafe"}, pluginSettings={},
                     quickCommands=None)
    return {"format": "structured-v2", "revision": "fnv1a-5eed5eed",
            "uploadedAt": "2026-01-01T00:00:00.000Z", "deviceId": "bench-device",
            "contentType": "application/vnd.oxideterm.cloud-sync.manifest+json",
            "scope": {"pluginIds": None, "sections": list(revisions)},
            "sections": sections, "sectionRevisions": revisions}


def sample_metadata_body() -> bytes:
    """What oxsync answers to GET metadata after the manifest above was stored."""
    metadata = {"exists": True, **sample_manifest(),
                "etag": "3f0c7d5e-8a51-4c1e-9a57-2f0d6c1b9e42", "contentLength": 0}
    return json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode()


def object_body(size: int) -> bytes:
    head = b'{"kind":"bench","pad":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------

class Server:
    """A server under test. Subclasses say how to start it and where things are."""

    name = "server"
    kind = "sync"            # "sync": oxsync's API; "dav": WebDAV
    process: subprocess.Popen | None = None

    def __init__(self, log_dir: Path, cpus: str | None):
        self.log_dir, self.cpus = log_dir, cpus
        self.port = free_port()
        self.auth: str | None = None      # Authorization header value

    @property
    def pid(self) -> int:
        return self.process.pid

    def headers(self, extra: dict | None = None) -> dict:
        headers = dict(extra or {})
        if self.auth:
            headers["Authorization"] = self.auth
        return headers

    def serving_pid(self) -> int:
        """The pid whose tree does the work (taskset execs, so it is the same pid)."""
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    # paths used by the workloads
    def get_path(self) -> str:
        return "/v1/namespaces/bench-meta/metadata"

    def put_prefix(self) -> str:
        return "/v1/namespaces/bench-put/objects/bench/"

    def cycle_prefix(self) -> str:
        return "/v1/namespaces/bench-cycle-"

    def big_path(self) -> str:
        return "/v1/namespaces/bench-big/blob"


class OxsyncServer(Server):
    name = "oxsync"

    def __init__(self, log_dir: Path, cpus: str | None, encrypted: bool = False,
                 extra_env: dict | None = None, wrap: list[str] | None = None,
                 database_url: str | None = None, name: str | None = None,
                 cycle_tag: str = "", command: list[str] | None = None):
        super().__init__(log_dir, cpus)
        self.encrypted = encrypted
        self.extra_env = extra_env or {}
        self.wrap = wrap or []
        # database_url: a PostgreSQL store; cycle_tag: this process's own cycle namespaces
        # when several processes share one database (bench/run.py's store comparison)
        self.database_url, self.cycle_tag = database_url, cycle_tag
        self.command = command  # another build of oxsync (bench/run.py --before)
        if encrypted:
            self.name = "oxsync+enc"
        if name:
            self.name = name

    def start(self) -> None:
        self.dir = make_temp_dir(self.name.replace("+", "-"))
        self.db_path = os.path.join(self.dir, "sync.db")
        env = {k: v for k, v in os.environ.items()
               if k not in ("ENCRYPTION_KEY", "ADMIN_PASSWORD", "DB_PATH", "LISTEN_ADDR")}
        env.update(MAX_BLOB_SIZE="70000000", **self.extra_env)
        if self.encrypted:
            env["ENCRYPTION_KEY"] = BENCH_KEY
        command = self.command or oxsync_command()
        # wrap: arguments put between the interpreter and the script (bench/profile.py)
        store = ["--database-url", self.database_url] if self.database_url else \
            ["--db-path", self.db_path]
        argv = command[:1] + self.wrap + command[1:] + ["serve", "--listen",
                                                        f"{HOST}:{self.port}"] + store
        self.process = start_process(argv, self.log_dir / f"{self.name}.log", env=env,
                                     cwd=self.dir, cpus=self.cpus)
        wait_until_up(self.port, self.process, "/health")
        created = subprocess.run(command + [
            "token", "create", *store, "--name", "bench",
            "--namespace", "*"], capture_output=True, text=True, env=env, cwd=self.dir,
            timeout=60)
        if created.returncode != 0 or not created.stdout.strip():
            raise RuntimeError(f"token create failed: {created.stderr.strip()}")
        self.auth = "Bearer " + created.stdout.split()[0]

    def seed(self) -> None:
        """Metadata for workload 1, one snapshot per cycle namespace for workload 3."""
        answer = request(self.port, "PUT", self.get_path(),
                         json.dumps(sample_manifest()).encode(),
                         self.headers({"Content-Type": "application/json"}))
        if answer.status != 200:
            raise RuntimeError(f"seeding metadata: {answer.status} {answer.body[:200]!r}")
        blob = b"\xab" * (64 * KiB)
        for slot in range(CYCLE_SLOTS):
            answer = request(self.port, "PUT", f"{self.cycle_prefix()}{slot}/blob", blob,
                             self.headers({"Content-Type": "application/vnd.oxideterm.oxide",
                                           "X-OxideTerm-Revision": "seed",
                                           "If-None-Match": "*"}))
            if answer.status != 200:
                raise RuntimeError(f"seeding blob: {answer.status} {answer.body[:200]!r}")

    def cycle_prefix(self) -> str:
        return f"/v1/namespaces/bench-cycle-{self.cycle_tag}"

    def wal_bytes(self) -> int:
        try:
            return os.path.getsize(self.db_path + "-wal")
        except OSError:
            return 0

    def checkpoint(self) -> None:
        """Empty the WAL (the server is idle), so growth during a run can be measured."""
        import sqlite3
        db = sqlite3.connect(self.db_path, timeout=30)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()


class CeilingServer(Server):
    name = "ceiling"

    def start(self) -> None:
        self.dir = make_temp_dir("ceiling")
        metadata = os.path.join(self.dir, "metadata.json")
        with open(metadata, "wb") as file:
            file.write(sample_metadata_body())
        self.process = start_process(
            [sys.executable, str(BENCH / "ceiling.py"), "--listen", f"{HOST}:{self.port}",
             "--metadata-file", metadata], self.log_dir / "ceiling.log", cpus=self.cpus)
        wait_until_up(self.port, self.process, "/health")

    def seed(self) -> None:
        blob = b"\xab" * (64 * KiB)
        for slot in range(CYCLE_SLOTS):
            request(self.port, "PUT", f"{self.cycle_prefix()}{slot}/blob", blob,
                    {"X-OxideTerm-Revision": "seed"})


class DavServer(Server):
    """A WebDAV folder laid out like an OxideTerm WebDAV sync target, one per slot."""

    kind = "dav"

    def __init__(self, log_dir: Path, cpus: str | None):
        super().__init__(log_dir, cpus)
        token = base64.b64encode(f"{DAV_USER}:{DAV_PASSWORD}".encode()).decode()
        self.auth = f"Basic {token}"

    def make_root(self) -> str:
        self.dir = make_temp_dir(self.name)
        root = os.path.join(self.dir, "root")
        metadata, blob = sample_metadata_body(), b"\xab" * (64 * KiB)
        for folder in ["meta", "bench", "big"] + [f"c{slot}" for slot in range(CYCLE_SLOTS)]:
            os.makedirs(os.path.join(root, folder))
        with open(os.path.join(root, "meta", "latest.json"), "wb") as file:
            file.write(metadata)
        for slot in range(CYCLE_SLOTS):
            with open(os.path.join(root, f"c{slot}", "latest.json"), "wb") as file:
                file.write(metadata)
            with open(os.path.join(root, f"c{slot}", "latest.oxide"), "wb") as file:
                file.write(blob)
        os.chmod(self.dir, 0o755)
        for path, folders, files in os.walk(root):
            os.chmod(path, 0o777)   # nginx workers run as an unprivileged user
            for name in files:
                os.chmod(os.path.join(path, name), 0o666)
        return root

    def seed(self) -> None:
        pass

    def get_path(self) -> str:
        return "/meta/latest.json"

    def put_prefix(self) -> str:
        return "/bench/"

    def cycle_prefix(self) -> str:
        return "/c"

    def big_path(self) -> str:
        return "/big/latest.oxide"


class WsgidavServer(DavServer):
    name = "wsgidav"

    def start(self) -> None:
        root = self.make_root()
        config = {
            "host": HOST, "port": self.port,
            "provider_mapping": {"/": root},
            "http_authenticator": {"accept_basic": True, "accept_digest": False,
                                   "default_to_digest": False},
            "simple_dc": {"user_mapping": {"*": {DAV_USER: {"password": DAV_PASSWORD}}}},
            "verbose": 3,   # the default: one line per request, as a user runs it
        }
        config_path = os.path.join(self.dir, "wsgidav.json")
        with open(config_path, "w") as file:
            json.dump(config, file)
        wsgidav = shutil.which("wsgidav")
        if not wsgidav:
            raise RuntimeError("wsgidav is not installed (pip install wsgidav cheroot)")
        self.process = start_process([sys.executable, wsgidav, "--config", config_path],
                                     self.log_dir / "wsgidav.log", cwd=self.dir, cpus=self.cpus)
        wait_until_up(self.port, self.process, "/meta/latest.json", self.headers())


class NginxServer(DavServer):
    name = "nginx"

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise RuntimeError("nginx is not installed (apt-get install nginx "
                               "libnginx-mod-http-dav-ext)")
        root = self.make_root()
        with open(os.path.join(self.dir, "htpasswd"), "w") as file:
            file.write(f"{DAV_USER}:{{PLAIN}}{DAV_PASSWORD}\n")
        os.chmod(os.path.join(self.dir, "htpasswd"), 0o644)
        module = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so"
        load = f"load_module {module};" if os.path.exists(module) else ""
        user = "user nobody nogroup;" if os.geteuid() == 0 else ""
        config = f"""
{load}
{user}
daemon off;
master_process on;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {self.dir}/access.log;
    client_body_temp_path {self.dir}/client_body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    server {{
        listen {HOST}:{self.port};
        root {root};
        client_max_body_size 100m;
        auth_basic "oxsync-bench";
        auth_basic_user_file {self.dir}/htpasswd;
        location / {{
            dav_methods PUT DELETE MKCOL COPY MOVE;
            {"dav_ext_methods PROPFIND OPTIONS;" if load else ""}
            create_full_put_path on;
            dav_access user:rw group:rw all:rw;
        }}
    }}
}}
"""
        config_path = os.path.join(self.dir, "nginx.conf")
        with open(config_path, "w") as file:
            file.write(config)
        self.process = start_process([nginx, "-p", self.dir, "-c", config_path, "-e",
                                      f"{self.dir}/error.log"],
                                     self.log_dir / "nginx.log", cwd=self.dir, cpus=self.cpus)
        wait_until_up(self.port, self.process, "/meta/latest.json", self.headers())


SERVER_CLASSES = {"oxsync": OxsyncServer, "ceiling": CeilingServer,
                  "wsgidav": WsgidavServer, "nginx": NginxServer}


# ---------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------

def run_wrk(server: Server, script: str, path: str, connections: int, threads: int,
            duration: int, args: list[str] = (), headers: dict | None = None,
            cpus: str | None = None) -> dict:
    """One wrk run -> its JSON summary plus CPU use of wrk and of the server."""
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
            "--timeout", "30s", "-s", str(LUA / script)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(f"http://{HOST}:{server.port}{path}")
    if args:
        argv += ["--"] + list(args)
    if cpus is not None:
        argv = ["taskset", "-c", cpus] + argv
    server_cpu = tree_cpu_seconds(server.serving_pid())
    wrk_cpu = children_cpu_seconds()
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    wall = time.monotonic() - started
    wrk_cpu = children_cpu_seconds() - wrk_cpu
    server_cpu = tree_cpu_seconds(server.serving_pid()) - server_cpu
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCHJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[:500]} "
                           f"{done.stdout.strip()[-500:]}")
    result = json.loads(line[len("BENCHJSON "):])
    result.update(wall_s=wall, wrk_cpu_s=wrk_cpu, server_cpu_s=server_cpu)
    settle(server)
    return result


def settle(server: Server, quiet: float = 0.3, limit: float = 10.0) -> None:
    """Wait until the server has finished what the last run left in flight (its CPU time
    stops growing), so that one measurement does not spill into the next."""
    deadline = time.monotonic() + limit
    before = tree_cpu_seconds(server.serving_pid())
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = tree_cpu_seconds(server.serving_pid())
        if now - before < 0.02:
            return
        before = now
