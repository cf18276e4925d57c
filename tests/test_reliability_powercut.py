"""Power cuts: an acknowledged write survives losing power, at any moment.

The store lives on tests/_powercut_fs.py, a FUSE file system that keeps everything not yet
fsynced in memory and drops it on command, as a disk does when the power goes. Each cycle
drives a mixed workload (snapshots and manifests of shared namespaces written with If-Match
by several clients, objects, token changes through the admin API and the CLI), records
every 2xx answer and every command that exited 0, then at a random moment kills the server
with SIGKILL and cuts the power; the server starts again on what the disk kept, and every
acknowledged write must be there. The seed is printed on failure: OXSYNC_POWERCUT_SEED=N
repeats a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import (OXSYNC, ROOT, SNAPSHOT_TYPE, AdminClient, OxsyncServer, db_rows,
                      ns_path, object_path, quoted)
from _reliability import assert_payload_rows_whole, integrity_check, key_id

FS_SCRIPT = Path(__file__).with_name("_powercut_fs.py")
PASSWORD = "powercut admin password"
NAMESPACES = ("cut/alpha", "cut/beta", "cut/gamma")
CLIENTS = 4
OBJECTS_PER_CLIENT = 3


class PowerCutDisk:
    """_powercut_fs.py mounted on a folder of its own, in a process of its own."""

    def __init__(self, root: Path):
        self.mount, self.control = root / "disk", root / "control.sock"
        backing = root / "backing"
        for folder in (self.mount, backing):
            folder.mkdir()
        self.log = open(root / "fs.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, str(FS_SCRIPT), str(backing.resolve()), str(self.mount),
             str(self.control)], stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while not (os.path.ismount(self.mount) and self.control.exists()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                pytest.fail("the power-cut file system did not mount: "
                            + (root / "fs.log").read_text(errors="replace"))
            time.sleep(0.05)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.control))
            sock.sendall(line.encode() + b"\n")
            return sock.makefile().readline().strip()

    def cut(self) -> str:
        """The power goes: everything not fsynced is lost. -> what was dropped, in words."""
        return self.command("cut")

    def unmount(self) -> None:
        if os.path.ismount(self.mount):
            if subprocess.run(["fusermount3", "-u", str(self.mount)],
                              capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def disk(tmp_path):
    if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
        pytest.fail("the power-cut tests need FUSE: /dev/fuse and Debian's fuse3 "
                    "(.ci/run installs it)")
    mounted = PowerCutDisk(tmp_path)
    try:
        yield mounted
    finally:
        mounted.unmount()


class CachedOxsync(OxsyncServer):
    """oxsync run as `python3 -m oxsync`, so that its compiled code is cached across the
    hundreds of starts (OXSYNC_CMD, when set, is run as it is)."""

    command = OXSYNC if os.environ.get("OXSYNC_CMD") else [sys.executable, "-m", "oxsync"]

    def __init__(self, workdir: Path, env: dict | None = None):
        super().__init__(workdir, {"PYTHONPATH": str(ROOT), **(env or {})})


def server_on(disk: PowerCutDisk, tmp_path: Path, env: dict | None = None) -> OxsyncServer:
    """A server whose database is on the disk (its log is not: it must outlive cuts)."""
    server = CachedOxsync(tmp_path, env)
    server.db_path = disk.mount / "sync.db"
    return server


@contextlib.contextmanager
def seed_reported(name: str):
    """-> a random.Random; its seed is printed when the block fails."""
    seed = int(os.environ.get("OXSYNC_POWERCUT_SEED", random.randrange(1 << 30)))
    try:
        yield random.Random(seed)
    except BaseException:
        print(f"\n[{name}] failed with seed {seed}: OXSYNC_POWERCUT_SEED={seed} repeats it")
        raise


def assert_store_whole(server: OxsyncServer) -> None:
    """SQLite's integrity check; every payload row whole and owned by exactly one row."""
    assert integrity_check(server.db_path) == "ok"
    assert_payload_rows_whole(server)


class Ledger:
    """Everything the workload sent and what was acknowledged, shared by its threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.revisions: dict[str, dict] = {}  # revision -> what was sent, and its parent etag
        self.etag_revision: dict[str, str] = {}  # every namespace etag seen -> its revision
        self.acked: dict[str, list[str]] = {ns: [] for ns in NAMESPACES}  # acked revisions
        self.objects: dict[str, dict] = {}  # path -> acked (etag, body) and the one in flight
        self.object_etags: dict[str, str] = {}  # every object etag seen -> sha256 of its body
        self.tokens: dict[str, dict] = {}  # token id -> secret, and what must hold ("on"/"off")
        self.object_acks = 0

    def saw_etag(self, etag: str, revision: str) -> None:
        """No etag is ever handed out for two different revisions."""
        with self.lock:
            assert self.etag_revision.setdefault(etag, revision) == revision, \
                f"etag {etag} reused: {self.etag_revision[etag]} and then {revision}"

    def saw_object(self, etag: str, body: bytes) -> None:
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            assert self.object_etags.setdefault(etag, digest) == digest, \
                f"object etag {etag} reused for other bytes"

    def ancestry(self, revision: str) -> list[str]:
        """The revision and those it was written over (If-Match), newest first."""
        chain = []
        while revision is not None:
            chain.append(revision)
            parent = self.revisions[revision]["parent"]
            revision = self.etag_revision.get(parent) if parent else None
        return chain


class Client(threading.Thread):
    """One device: writes snapshots and manifests of the shared namespaces with If-Match,
    and its own objects, until the connection drops (the kill)."""

    def __init__(self, server, token, ledger: Ledger, number: int, rng: random.Random,
                 tag: str):
        super().__init__(daemon=True)
        self.server, self.token, self.ledger, self.number = server, token, ledger, number
        self.rng, self.tag, self.sent, self.error = rng, tag, 0, None
        self.known: dict[str, str | None] = {}

    def run(self):
        try:
            self.conn = self.server.connect(timeout=20)
            while True:
                if self.rng.random() < 0.6:
                    self.write_namespace(self.rng.choice(NAMESPACES))
                else:
                    self.write_object(f"c{self.number}/o{self.rng.randrange(OBJECTS_PER_CLIENT)}")
        except (OSError, http.client.HTTPException):
            pass  # the kill
        except BaseException as error:  # noqa: BLE001 (reported by the test)
            self.error = error

    def call(self, method, path, body=None, headers=None):
        headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        return response.status, response.headers, response.read()

    def refresh(self, ns: str) -> None:
        status, _, body = self.call("GET", ns_path(ns, "metadata"))
        assert status == 200, (status, body)
        metadata = json.loads(body)
        self.known[ns] = metadata.get("etag")
        if self.known[ns]:
            self.ledger.saw_etag(metadata["etag"], metadata["revision"])

    def write_namespace(self, ns: str) -> None:
        if ns not in self.known:
            self.refresh(ns)
        self.sent += 1
        kind = "b" if self.rng.random() < 0.5 else "m"
        revision = f"{self.tag}-k{self.number}-{kind}{self.sent}"
        parent = self.known[ns]
        condition = {"If-Match": quoted(parent)} if parent else {"If-None-Match": "*"}
        if kind == "b":
            body = revision.encode() + b"#" + os.urandom(self.rng.randrange(16, 40000))
            headers = {"Content-Type": SNAPSHOT_TYPE, "X-OxideTerm-Revision": revision}
            path = ns_path(ns, "blob")
        else:
            body = json.dumps({"format": "structured-v2", "revision": revision}).encode()
            headers, path = {"Content-Type": "application/json"}, ns_path(ns, "metadata")
        with self.ledger.lock:
            self.ledger.revisions[revision] = {"ns": ns, "kind": kind, "body": body,
                                               "parent": parent}
        status, _, answer = self.call("PUT", path, body, {**headers, **condition})
        if status == 412:
            self.refresh(ns)
            return
        assert status == 200, (status, answer)
        etag = json.loads(answer)["etag"]
        self.ledger.saw_etag(etag, revision)
        with self.ledger.lock:
            self.ledger.acked[ns].append(revision)
        self.known[ns] = etag

    def write_object(self, name: str) -> None:
        record = self.ledger.objects.setdefault(name, {"acked": None, "flight": None})
        body = f"{self.tag}#{name}#".encode() + os.urandom(self.rng.randrange(8, 9000))
        record["flight"] = body
        etag = record["acked"][0] if record["acked"] else None
        condition = {"If-Match": quoted(etag)} if etag else {"If-None-Match": "*"}
        status, headers, answer = self.call("PUT", object_path("cut/objects", name), body,
                                            condition)
        assert status in (200, 201), (status, answer)
        etag = json.loads(answer)["etag"]
        self.ledger.saw_object(etag, body)
        record["acked"], record["flight"] = (etag, body), None
        with self.ledger.lock:
            self.ledger.object_acks += 1


class Operator(threading.Thread):
    """Token changes: created, disabled and rotated through the admin API; created and
    disabled through the CLI (a command that exited 0 counts as acknowledged)."""

    def __init__(self, server, admin: AdminClient, ledger: Ledger, rng: random.Random):
        super().__init__(daemon=True)
        self.server, self.admin, self.ledger, self.rng = server, admin, ledger, rng
        self.command: subprocess.Popen | None = None
        self.stopping, self.error = False, None

    def run(self):
        try:
            while not self.stopping:
                choice = self.rng.random()
                if choice < 0.15:
                    self.cli_disable()
                else:
                    self.admin_change(choice)
        except (OSError, http.client.HTTPException):
            pass  # the kill
        except BaseException as error:  # noqa: BLE001 (reported by the test)
            self.error = error

    def pick(self, state: str) -> str | None:
        ids = sorted(i for i, t in self.ledger.tokens.items() if t["state"] == state)
        return self.rng.choice(ids) if ids else None

    def admin_change(self, choice: float) -> None:
        tokens = self.ledger.tokens
        target = self.pick("on")
        if choice < 0.55 or target is None:
            answer = self.admin.post("/admin/api/tokens", {
                "name": f"cut-{len(tokens)}", "namespacePattern": "*",
                "permissions": ["read"]})
            if answer.status != 201:
                raise AssertionError(answer)
            tokens[answer.json["token"]["id"]] = {"secret": answer.json["secret"],
                                                  "state": "on"}
        elif choice < 0.8:
            tokens[target]["state"] = "unsure"
            answer = self.admin.patch(f"/admin/api/tokens/{target}", {"enabled": False})
            assert answer.status == 200, answer
            tokens[target]["state"] = "off"
        else:
            tokens[target]["state"] = "unsure"
            answer = self.admin.post(f"/admin/api/tokens/{target}/rotate")
            assert answer.status == 200, answer
            tokens[target] = {"secret": answer.json["secret"], "state": "on"}

    def cli_disable(self) -> None:
        target = self.pick("on")
        if target is None:
            return
        self.ledger.tokens[target]["state"] = "unsure"
        self.command = subprocess.Popen(self.server.command + ["token", "disable", target,
                                                  *self.server.store_args()],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env=self.server.env, start_new_session=True)
        _, stderr = self.command.communicate()
        if self.command.returncode == -signal.SIGKILL:
            return
        assert self.command.returncode == 0, stderr
        self.ledger.tokens[target]["state"] = "off"

    def kill(self) -> None:
        self.stopping = True
        command = self.command
        if command is not None and command.poll() is None:
            command.kill()


def check_namespaces(server, token, ledger: Ledger) -> None:
    """The current revision of each namespace was written over every acknowledged one."""
    for ns in NAMESPACES:
        answer = server.request("GET", ns_path(ns, "metadata"), token=token)
        assert answer.status == 200, answer
        metadata = answer.json
        if not metadata.get("etag"):
            assert not ledger.acked[ns], f"{ns}: every acknowledged write is gone"
            continue
        current = metadata["revision"]
        assert current in ledger.revisions, f"{ns}: revision {current} was never sent"
        ledger.saw_etag(metadata["etag"], current)
        chain = ledger.ancestry(current)
        lost = [r for r in ledger.acked[ns] if r not in chain]
        assert not lost, f"{ns}: acknowledged writes lost: {lost[-3:]} (now {current})"
        if ledger.revisions[current]["kind"] == "m":  # history's newest is the manifest
            newest = db_rows(server, "SELECT etag FROM manifests WHERE namespace = ? ORDER BY "
                                     "seq DESC LIMIT 1", (ns,))
            assert newest and newest[0]["etag"] == metadata["etag"], f"{ns}: history differs"
        snapshot = next((r for r in chain if ledger.revisions[r]["kind"] == "b"), None)
        blob = server.request("GET", ns_path(ns, "blob"), token=token)
        if snapshot is None:
            assert blob.status == 404, blob
        else:
            assert blob.status == 200 and blob.body == ledger.revisions[snapshot]["body"], \
                f"{ns}: the snapshot is not {snapshot}'s bytes"


def check_objects(server, token, ledger: Ledger) -> None:
    """Each object is its last acknowledged bytes, or the write that was in flight."""
    for name, record in ledger.objects.items():
        answer = server.request("GET", object_path("cut/objects", name), token=token)
        if record["acked"] is None:
            assert answer.status == 404 or answer.body == record["flight"], (name, answer)
        else:
            assert answer.status == 200, f"acknowledged object {name} is gone"
            assert answer.body in (record["acked"][1], record["flight"]), \
                f"{name}: neither the acknowledged bytes nor the write in flight"
        if answer.status == 200:
            etag = answer.headers["ETag"].strip('"')
            ledger.saw_object(etag, answer.body)
            record["acked"], record["flight"] = (etag, answer.body), None


def check_tokens(server, ledger: Ledger) -> None:
    for token_id, token in ledger.tokens.items():
        if token["state"] not in ("on", "off"):
            continue
        status = server.request("GET", ns_path("cut/alpha", "metadata"),
                                token=token["secret"]).status
        assert status == (200 if token["state"] == "on" else 401), \
            f"token {token_id} should be {token['state']} after the cut, got {status}"
    for token in ledger.tokens.values():  # an unsure change may have landed or not
        if token["state"] == "unsure":
            token["state"] = "gone-or-changed"


def power_cut_cycles(disk, tmp_path, cuts: int, name: str) -> None:
    server = server_on(disk, tmp_path, {"ADMIN_PASSWORD": PASSWORD,
                                        "ADMIN_JWT_SECRET": "powercut-jwt-secret-" + "x" * 32})
    server.start()
    try:
        token = server.create_token(name="writer")
        admin = AdminClient(server)
        admin.login()
        ledger, dropped = Ledger(), []
        with seed_reported(name) as rng:
            for cycle in range(cuts):
                dropped.append(one_cut(disk, server, token, admin, ledger, rng,
                                       f"{name}{cycle}"))
                check_namespaces(server, token, ledger)
                check_objects(server, token, ledger)
                check_tokens(server, ledger)
                assert_store_whole(server)
    finally:
        server.stop()
    server.assert_log_clean()
    acked = sum(len(v) for v in ledger.acked.values())
    pages = sum(int(words.split()[1]) for words in dropped)
    print(f"\n[{name}] {cuts} power cuts dropped {pages} unsynced pages in all; "
          f"{acked} snapshot and manifest writes, {ledger.object_acks} object writes and "
          f"{len(ledger.tokens)} tokens made and changed; none lost")
    assert acked > cuts, "the workload hardly ran: the cuts proved little"


def one_cut(disk, server, token, admin, ledger, rng, tag: str) -> str:
    """The workload, then at a random moment kill -9 and the power cut; the server
    starts again on what the disk kept, without help. -> what the cut dropped."""
    clients = [Client(server, token, ledger, n, random.Random(rng.random()), tag)
               for n in range(CLIENTS)]
    operator = Operator(server, admin, ledger, random.Random(rng.random()))
    for thread in clients + [operator]:
        thread.start()
    time.sleep(rng.uniform(0.02, 0.4))
    server.kill()
    operator.kill()
    for thread in clients + [operator]:
        thread.join(30)
        assert thread.error is None, f"{tag}: {thread.error!r}"
    dropped = disk.cut()
    server.start()
    return dropped


@pytest.mark.parametrize("half", ["a", "b"])
def test_acknowledged_writes_survive_power_cuts(disk, tmp_path, half):
    """Two halves (one per xdist worker) of 40 cuts each, at random moments."""
    power_cut_cycles(disk, tmp_path, 40, f"sync-{half}")


@pytest.mark.slow
@pytest.mark.timeout(0)
@pytest.mark.parametrize("half", ["a", "b"])
def test_acknowledged_writes_survive_a_thousand_power_cuts(disk, tmp_path, request, half):
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("1,000 power cuts take a while: select them with -m slow")
    power_cut_cycles(disk, tmp_path, 500, f"slow-{half}")


# -- operator commands cut part-way ---------------------------------------------------------

KEY_1, KEY_2 = "a1" * 32, "b2" * 32
OPERATOR_CUTS = 5  # per command; each starts from a fresh copy of the same store


def store_fingerprint(path) -> dict:
    """table -> SHA-256 of its rows, for every table of an oxsync SQLite file."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = [row[0] for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        digests = {}
        for table in tables:
            digest = hashlib.sha256()
            for row in db.execute(f"SELECT * FROM {table} ORDER BY 1, 2"):
                digest.update(repr(tuple(row)).encode())
            digests[table] = digest.hexdigest()
        return digests


def place_durably(source: Path, target: Path) -> None:
    """Copy a stopped store's file onto the disk, durably (the state before a command)."""
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{target}{suffix}")
    shutil.copyfile(source, target)
    for path in (target, target.parent):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def payload_keys(path) -> dict:
    """key id (None: plaintext) -> payload rows, and the key settings."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        keys = dict(db.execute("SELECT key_id, count(*) FROM payloads GROUP BY key_id"))
        settings = dict(db.execute("SELECT key, value FROM settings"))
    return {"keys": keys, "key_id": settings.get("key_id"),
            "rotating": settings.get("rotation_target")}


def prepared_store(tmp_path: Path, key: str | None) -> tuple[Path, dict]:
    """A stopped store off the disk with snapshots, objects (some past retention and
    unreferenced) and history -> (its file, what a reader must get back)."""
    server = CachedOxsync(tmp_path / "prepared", {"ENCRYPTION_KEY": key} if key else {})
    server.workdir.mkdir()
    server.start()
    token = server.create_token()
    expected, conn = {}, server.connect()
    for number in range(12):
        ns = f"ops/n{number}"
        sections = {}
        for index in range(3):
            path = f"s{index}/rev{number}.json"
            expected[object_path(ns, path)] = os.urandom(6000)
            sections[f"s{index}"] = {"revision": f"rev{number}", "path": path}
            assert server.request("PUT", object_path(ns, path), expected[object_path(ns, path)],
                                  token=token, connection=conn).status == 201
            assert server.request("PUT", object_path(ns, f"old/{index}.json"), os.urandom(9000),
                                  token=token, connection=conn).status == 201
        expected[ns_path(ns, "blob")] = os.urandom(30000)
        assert server.request("PUT", ns_path(ns, "blob"), expected[ns_path(ns, "blob")],
                              {"X-OxideTerm-Revision": f"b{number}"}, token=token,
                              connection=conn).status == 200
        assert server.request("PUT", ns_path(ns, "metadata"), {
            "format": "structured-v2", "revision": f"m{number}", "sections": sections},
            token=token, connection=conn).status == 200
    conn.close()
    server.stop()
    expected["token"] = token
    return server.db_path, expected


HOLD_CONNECTION = """import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("SELECT count(*) FROM settings").fetchone()
print("open", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def connection_held(path):
    """Another process with a connection open on the store, killed on leaving."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CONNECTION, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"open\n"
        yield
    finally:
        holder.kill()
        holder.wait()


class CommandCut:
    """One operator command run on the disk and cut at a random moment: part-way, or just
    after it exited 0 (always so the first time: that also times a whole run)."""

    def __init__(self, disk: PowerCutDisk, tmp_path: Path, rng: random.Random):
        self.disk, self.rng = disk, rng
        self.server = server_on(disk, tmp_path)
        self.durations: dict[str, float] = {}  # command -> seconds a whole run took

    def run(self, *args: str, env: dict | None = None, serving: bool = False) -> bool:
        """-> whether the command exited 0 before the power went. `serving`: as if a server
        ran on the store meanwhile (and died with the power): a process keeps a connection
        open, so the command's own is not the last one (closing the last one checkpoints
        the WAL into the database, durably, whatever the command did)."""
        with contextlib.ExitStack() as stack:
            if serving:
                stack.enter_context(connection_held(self.server.db_path))
            finished = self.run_and_kill(args, env)
        self.disk.cut()
        return finished

    def run_and_kill(self, args, env) -> bool:
        started = time.monotonic()
        process = subprocess.Popen(self.server.command + list(args) + self.server.store_args(),
                                   env=self.server.environment(env), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
        wait = None
        if args[0] in self.durations and self.rng.random() < 0.7:
            wait = self.rng.uniform(0.1, 1.1) * self.durations[args[0]]
        try:
            _, stderr = process.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        if process.returncode == 0 and wait is None:
            self.durations[args[0]] = time.monotonic() - started
        assert b"Traceback" not in stderr, stderr.decode(errors="replace")
        assert process.returncode in (0, -signal.SIGKILL), stderr.decode(errors="replace")
        return process.returncode == 0

    def finish(self, *args: str, env: dict | None = None) -> None:
        """Run a command to its end (no cut): e.g. a resumable one after a cut."""
        self.server.cli(*args, env=env)


def file_verifies(path: Path) -> bool:
    """verify-backup's checks: the .sha256 sidecar matches, SQLite's integrity is ok."""
    try:
        expected = (path.parent / (path.name + ".sha256")).read_text().split()[0]
    except (OSError, IndexError):
        return False
    return hashlib.sha256(path.read_bytes()).hexdigest() == expected \
        and integrity_check(path) == "ok"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """prepared(key) -> prepared_store(...) for that key, made once per module (each
    test copies the file, never changes it)."""
    made = {}

    def get(key: str | None):
        if key not in made:
            made[key] = prepared_store(tmp_path_factory.mktemp("prepared"), key)
        return made[key]
    return get


@pytest.fixture
def operator_cut(disk, tmp_path):
    with seed_reported("operator") as rng:
        yield CommandCut(disk, tmp_path, rng)


def test_backup_cut_part_way_is_the_old_backup_or_the_new_one(operator_cut, prepared, tmp_path):
    source, _ = prepared(None)
    cut, live = operator_cut, operator_cut.server.db_path
    place_durably(source, live)
    target = cut.disk.mount / "backups" / "nightly.db"
    good = None  # the fingerprint of the last backup that exited 0
    for number in range(OPERATOR_CUTS):
        cut.finish("token", "create", "--name", f"between-{number}", "--namespace", "*")
        cut.disk.cut()  # a token create that exited 0 is durable: the store is as it was
        now = store_fingerprint(live)
        finished = cut.run("backup", "--to", str(target), serving=True)
        assert store_fingerprint(live) == now
        if finished:
            assert file_verifies(target), f"cut {number}: the backup that exited 0 is lost"
        if not target.exists():
            assert good is None, f"cut {number}: the earlier backup is gone"
            continue
        assert integrity_check(target) == "ok"
        assert store_fingerprint(target) in ([now] if finished else [good, now])
        if file_verifies(target):
            good = store_fingerprint(target)


def test_restore_cut_part_way_is_the_old_store_or_the_backup(operator_cut, prepared, tmp_path):
    source, _ = prepared(None)
    cut, live = operator_cut, operator_cut.server.db_path
    backup = tmp_path / "kept.db"
    assert cut.server.cli("backup", "--db-path", str(source), "--to", str(backup),
                          store=False).returncode == 0
    wanted = store_fingerprint(backup)
    for number in range(OPERATOR_CUTS):
        place_durably(source, live)
        cut.finish("token", "create", "--name", f"after-backup-{number}", "--namespace", "*")
        cut.disk.cut()
        old = store_fingerprint(live)
        finished = cut.run("restore", "--from", str(backup), "--force")
        assert integrity_check(live) == "ok"
        assert store_fingerprint(live) in ([wanted] if finished else [old, wanted]), \
            f"cut {number}: the store is neither the old one nor the backup"


def test_copy_store_cut_part_way_leaves_no_copy_or_a_whole_one(operator_cut, prepared, tmp_path):
    source, _ = prepared(KEY_1)
    cut = operator_cut
    place_durably(source, cut.server.db_path)
    wanted = store_fingerprint(source)
    for number in range(OPERATOR_CUTS):
        target = cut.disk.mount / "copies" / f"copy{number}.db"
        finished = cut.run("copy-store", "--to", str(target), serving=True)
        if finished:
            assert target.exists(), f"cut {number}: the copy that exited 0 is lost"
        if target.exists():
            assert integrity_check(target) == "ok"
            copied = store_fingerprint(target)
            nothing = all(not db_rows_in(target, table) for table in copied)
            assert copied == wanted or (nothing and not finished), \
                f"cut {number}: a partial copy survived"


def db_rows_in(path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def check_readable(cut: CommandCut, expected: dict, key: str) -> None:
    """The server starts on the store with `key` and serves every byte as written."""
    server = cut.server
    server.env["ENCRYPTION_KEY"] = key
    server.start()
    try:
        for path, body in expected.items():
            if path != "token":
                answer = server.request("GET", path, token=expected["token"])
                assert answer.status == 200 and answer.body == body, (path, answer)
    finally:
        server.stop()
        server.env.pop("ENCRYPTION_KEY")


@pytest.mark.parametrize("command", ["rotate-key", "encrypt-existing"])
def test_resealing_cut_part_way_is_whole_and_resumes(operator_cut, prepared, command):
    """rotate-key (KEY_1 -> KEY_2) and encrypt-existing (plaintext -> KEY_1) cut part-way:
    a run that exited 0 left every payload sealed with the new key; any other leaves a
    store that a new run finishes; then every byte reads back."""
    old, new = (KEY_1, KEY_2) if command == "rotate-key" else (None, KEY_1)
    source, expected = prepared(old)
    cut, live = operator_cut, operator_cut.server.db_path
    env = {"ENCRYPTION_KEY": old or new, "NEW_ENCRYPTION_KEY": new if old else None}
    for number in range(OPERATOR_CUTS):
        place_durably(source, live)
        finished = cut.run(command, env=env, serving=command == "encrypt-existing")
        assert integrity_check(live) == "ok"
        state = payload_keys(live)
        if finished:
            assert set(state["keys"]) == {key_id(new)} and not state["rotating"], \
                f"cut {number}: {command} exited 0 but the store holds {state}"
        cut.finish(command, env=env)
        assert set(payload_keys(live)["keys"]) == {key_id(new)}
        assert_payload_rows_whole(cut.server, sealed=True, hashes=False)
    check_readable(cut, expected, new)


def test_gc_cut_part_way_keeps_what_is_referenced(operator_cut, prepared, tmp_path):
    source, expected = prepared(None)
    cut, live = operator_cut, operator_cut.server.db_path
    time.sleep(1.1)  # every object is now past a 1 s retention
    kept = sum(1 for path in expected if "/objects/" in path)
    for number in range(OPERATOR_CUTS):
        place_durably(source, live)
        finished = cut.run("gc", "--object-retention-seconds", "1", serving=True)
        assert integrity_check(live) == "ok"
        assert_payload_rows_whole(cut.server)
        left = db_rows_in(live, "objects")
        assert left >= kept and (left == kept or not finished), \
            f"cut {number}: {left} objects left of {kept} kept (gc exited: {finished})"
    check_readable(cut, expected, "")
