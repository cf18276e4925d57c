"""Object retention (issue 4, "Object retention"; PROTOCOL.md section 4, "Retention").

An object may be pruned only when no kept manifest references it AND it was last written
more than OBJECT_RETENTION_SECONDS ago. The history keeps at least the last 32 manifests and
every manifest younger than the window. An object the current manifest references never
answers 404. Soft-deleted namespaces are left alone. Run on demand by `oxsync gc` and
`POST /admin/api/gc`.

The window is 4 seconds here (room for a slow CLI start on a busy machine); tests sleep 5.
"""

from __future__ import annotations

import json
import os
import threading
import time

from conftest import AdminClient, db_rows, ns_path, object_path, workers

WINDOW_SECONDS = 4
WINDOW = {"OBJECT_RETENTION_SECONDS": str(WINDOW_SECONDS)}
PAST_WINDOW = WINDOW_SECONDS + 1.0
ADMIN_PASSWORD = "retention-admin-password"
KEEP_MANIFESTS = 32


# -- helpers: a client's structured upload ------------------------------------------------

class Client:
    """Uploads the way OxideTerm does: section objects first, then the manifest."""

    def __init__(self, server, token, namespace):
        self.server, self.token, self.ns = server, token, namespace
        self.connection = server.connect()
        self.written: dict[str, bytes] = {}

    def put(self, path: str, size: int = 2000) -> bytes:
        data = os.urandom(size)
        answer = self.server.request("PUT", object_path(self.ns, path), data, token=self.token,
                                     connection=self.connection)
        assert answer.status in (200, 201), answer
        self.written[path] = data
        return data

    def manifest(self, revision: str, sections: dict[str, str],
                 settings: dict[str, str] | None = None) -> None:
        body = {"format": "structured-v2", "revision": revision, "deviceId": "device-1",
                "contentType": "application/vnd.oxideterm.cloud-sync.manifest+json",
                "scope": {"pluginIds": None},
                "sections": {name: {"revision": revision, "path": path, "recordCount": 1,
                                    "contentType": "application/json"}
                             for name, path in sections.items()},
                "sectionRevisions": {name: revision for name in sections}}
        if settings:
            body["sections"]["appSettings"] = {
                name: {"revision": revision, "path": path, "contentType": "application/json"}
                for name, path in settings.items()}
        answer = self.server.request("PUT", ns_path(self.ns, "metadata"), body,
                                     token=self.token, connection=self.connection)
        assert answer.status == 200, answer

    def upload(self, revision: str, sections: dict[str, str], size: int = 2000) -> None:
        for path in sections.values():
            self.put(path, size)
        self.manifest(revision, sections)

    def status(self, path: str) -> int:
        answer = self.server.request("GET", object_path(self.ns, path), token=self.token,
                                     connection=self.connection)
        if answer.status == 200:
            assert answer.body == self.written[path], path
        return answer.status

    def close(self):
        self.connection.close()


def gc_cli(server) -> dict:
    result = server.cli("gc", env=WINDOW)
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) >= {"objectsRemoved", "bytesReclaimed", "manifestsRemoved"}, report
    return report


def stored_paths(server, namespace: str) -> set[str]:
    return {row["path"] for row in db_rows(
        server, "SELECT path FROM objects WHERE namespace = ?", (namespace,))}


def manifest_count(server, namespace: str) -> int:
    return db_rows(server, "SELECT count(*) AS n FROM manifests WHERE namespace = ?",
                   (namespace,))[0]["n"]


# -- tests ------------------------------------------------------------------------------

def test_gc_removes_only_what_no_kept_manifest_references(make_server):
    server = make_server(env=WINDOW)
    token = server.create_token()
    team = Client(server, token, "ret/team")
    team.upload("r1", {"connections": "structured/connections/r1.json",
                       "forwards": "structured/forwards/r1.json"})
    # r2 changes connections only; forwards/r1.json is still current.
    team.put("structured/connections/r2.json")
    team.put("structured/settings/app/general/r2.json")
    team.manifest("r2", {"connections": "structured/connections/r2.json",
                         "forwards": "structured/forwards/r1.json"},
                  settings={"general": "structured/settings/app/general/r2.json"})
    orphans = {path: team.put(path, 3000 + n) for n, path in enumerate(
        ["structured/connections/abandoned.json", "never/referenced.bin"])}
    # Another namespace holds an object at a path that only ret/team's manifests name.
    other = Client(server, token, "ret/other")
    other.put("structured/connections/r2.json", 5000)
    time.sleep(PAST_WINDOW)
    # Written inside the window, not yet referenced: an upload in progress.
    team.put("structured/connections/r3-in-progress.json")
    in_progress_written = time.monotonic()

    # While gc runs, the current manifest's objects never answer 404.
    current = ["structured/connections/r2.json", "structured/forwards/r1.json",
               "structured/settings/app/general/r2.json"]
    stop, statuses = threading.Event(), []

    def reader():
        client = Client(server, token, "ret/team")
        client.written = team.written
        while not stop.is_set():
            statuses.extend(client.status(path) for path in current)
        client.close()

    with workers(reader, timeout=10):
        try:
            report = gc_cli(server)
            gc_done = time.monotonic()
        finally:
            stop.set()
    assert statuses and set(statuses) == {200}, set(statuses)
    assert gc_done - in_progress_written < WINDOW_SECONDS, "machine too slow for this window"

    expected_bytes = sum(len(data) for data in orphans.values()) + 5000
    assert report == {"objectsRemoved": 3, "bytesReclaimed": expected_bytes,
                      "manifestsRemoved": 0}, report
    for path in orphans:
        assert team.status(path) == 404, path
    for path in current + ["structured/connections/r1.json",     # only in the older r1
                           "structured/connections/r3-in-progress.json"]:
        assert team.status(path) == 200, path
    assert stored_paths(server, "ret/other") == set()
    team.close()
    other.close()


def test_old_manifests_are_pruned_after_32_newer_ones_and_the_window(make_server):
    server = make_server(env=WINDOW)
    token = server.create_token()
    team = Client(server, token, "ret/history")
    total = KEEP_MANIFESTS + 3
    sizes = {}
    first_written = time.monotonic()
    for number in range(1, total + 1):
        path = f"structured/connections/v{number:02d}.json"
        team.upload(f"v{number}", {"connections": path,
                                   "forwards": "structured/forwards/shared.json"},
                    size=1000 + number)
        sizes[path] = 1000 + number
    # The current manifest points back at an object written long before it.
    team.put("structured/settings/old-but-current.json")
    assert manifest_count(server, "ret/history") == total

    # Inside the window every manifest is kept, even beyond 32, and so are their objects.
    report = gc_cli(server)
    assert time.monotonic() - first_written < WINDOW_SECONDS, "machine too slow for this window"
    assert report == {"objectsRemoved": 0, "bytesReclaimed": 0, "manifestsRemoved": 0}, report
    assert manifest_count(server, "ret/history") == total

    time.sleep(PAST_WINDOW)
    team.manifest(f"v{total + 1}", {"connections": f"structured/connections/v{total:02d}.json",
                                    "forwards": "structured/forwards/shared.json",
                                    "settings": "structured/settings/old-but-current.json"})
    total += 1
    report = gc_cli(server)
    pruned = total - KEEP_MANIFESTS   # v1 .. v4 fall out of the kept history
    doomed = [f"structured/connections/v{n:02d}.json" for n in range(1, pruned + 1)]
    assert report == {"objectsRemoved": len(doomed),
                      "bytesReclaimed": sum(sizes[path] for path in doomed),
                      "manifestsRemoved": pruned}, report
    assert manifest_count(server, "ret/history") == KEEP_MANIFESTS
    for path in doomed:
        assert team.status(path) == 404, path
    for number in range(pruned + 1, total):
        assert team.status(f"structured/connections/v{number:02d}.json") == 200, number
    assert team.status("structured/forwards/shared.json") == 200
    assert team.status("structured/settings/old-but-current.json") == 200
    metadata = server.request("GET", ns_path("ret/history", "metadata"), token=token).json
    assert metadata["revision"] == f"v{total}"
    team.close()


def test_admin_gc_needs_a_session_and_leaves_soft_deleted_namespaces_alone(make_server):
    server = make_server(env={**WINDOW, "ADMIN_PASSWORD": ADMIN_PASSWORD})
    token = server.create_token()
    live = Client(server, token, "ret/live")
    live.upload("r1", {"connections": "structured/connections/r1.json"})
    live.put("orphan.bin", 4321)
    parked = Client(server, token, "ret/parked")
    parked.upload("r1", {"connections": "structured/connections/r1.json"})
    parked.put("orphan.bin", 1234)
    server.cli("namespace", "delete", "ret/parked")
    assert server.request("GET", ns_path("ret/parked", "metadata"), token=token).status == 410
    time.sleep(PAST_WINDOW)

    # The admin call needs a session and the CSRF header.
    assert server.request("POST", "/admin/api/gc").status == 401
    admin = AdminClient(server)
    admin.login()
    headers = admin.auth_headers()
    without_csrf = {"Cookie": headers["Cookie"]}
    assert server.request("POST", "/admin/api/gc", headers=without_csrf).status == 403
    assert stored_paths(server, "ret/live") == {"structured/connections/r1.json", "orphan.bin"}

    answer = server.request("POST", "/admin/api/gc", headers=headers)
    assert answer.status == 200, answer
    assert answer.json == {"objectsRemoved": 1, "bytesReclaimed": 4321,
                           "manifestsRemoved": 0}, answer.json
    assert live.status("orphan.bin") == 404
    assert live.status("structured/connections/r1.json") == 200
    # The soft-deleted namespace was not touched ...
    assert stored_paths(server, "ret/parked") == {"structured/connections/r1.json",
                                                  "orphan.bin"}
    assert gc_cli(server)["objectsRemoved"] == 0
    assert stored_paths(server, "ret/parked") == {"structured/connections/r1.json",
                                                  "orphan.bin"}
    # ... and comes back whole when restored.
    server.cli("namespace", "restore", "ret/parked")
    assert parked.status("orphan.bin") == 200
    assert parked.status("structured/connections/r1.json") == 200
    live.close()
    parked.close()
