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
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import (OXSYNC, SNAPSHOT_TYPE, AdminClient, OxsyncServer, db_rows, ns_path,
                      object_path, quoted)
from _reliability import assert_payload_rows_whole, integrity_check

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


def server_on(disk: PowerCutDisk, tmp_path: Path, env: dict | None = None) -> OxsyncServer:
    """A server whose database is on the disk (its log is not: it must outlive cuts)."""
    server = OxsyncServer(tmp_path, env)
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
        self.command = subprocess.Popen(OXSYNC + ["token", "disable", target,
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
    token = server.create_token(name="writer")
    admin = AdminClient(server)
    admin.login()
    ledger, dropped = Ledger(), []
    with seed_reported(name) as rng:
        for cycle in range(cuts):
            clients = [Client(server, token, ledger, n, random.Random(rng.random()),
                              f"{name}{cycle}") for n in range(CLIENTS)]
            operator = Operator(server, admin, ledger, random.Random(rng.random()))
            for thread in clients + [operator]:
                thread.start()
            time.sleep(rng.uniform(0.02, 0.4))
            server.kill()
            operator.kill()
            for thread in clients + [operator]:
                thread.join(30)
                assert thread.error is None, f"cycle {cycle}: {thread.error!r}"
            dropped.append(disk.cut())
            server.start()  # on what the disk kept, without help
            check_namespaces(server, token, ledger)
            check_objects(server, token, ledger)
            check_tokens(server, ledger)
            assert_store_whole(server)
    server.stop()
    server.assert_log_clean()
    acked = sum(len(v) for v in ledger.acked.values())
    print(f"\n[{name}] {cuts} power cuts; {acked} namespace writes and "
          f"{len(ledger.objects)} objects acknowledged, {len(ledger.tokens)} tokens; "
          f"last cut {dropped[-1]}")
    assert acked > cuts, "the workload hardly ran: the cuts proved little"


@pytest.mark.parametrize("half", ["a", "b"])
def test_acknowledged_writes_survive_power_cuts(disk, tmp_path, half):
    """Two halves (one per xdist worker): 2 x 40 cuts at random moments."""
    power_cut_cycles(disk, tmp_path, 40, f"sync-{half}")


@pytest.mark.slow
@pytest.mark.timeout(0)
def test_acknowledged_writes_survive_a_thousand_power_cuts(disk, tmp_path, request):
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("1,000 power cuts take a while: select them with -m slow")
    power_cut_cycles(disk, tmp_path, 1000, "sync-slow")
