"""Crash safety: kill -9 the server at bad moments, restart on the same database.

On both stores. After every crash: every write that was acknowledged
(a 2xx reached the client) reads back with its exact bytes, and nothing half-written is
stored or served (each stored payload has the size and hash its row claims). On SQLite,
`PRAGMA integrity_check` of the file is ok too.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import threading
import time

import pytest
from _reliability import (
    MiB,
    assert_file_intact,
    assert_payload_rows_whole,
    kill_partway,
    raw_connect,
    read_until_done,
)
from conftest import TEST_KEY, db_rows, ns_path, object_path, workers

BOTH_STORES = True  # every test here runs on SQLite and on PostgreSQL (conftest)

NS = "crash/test"
BIG = 32 * MiB


def start_raw_blob_upload(server, token, body_length, headers=()):
    sock = raw_connect(server.port, timeout=30)
    head = [f"PUT {ns_path(NS, 'blob')} HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
            f"Authorization: Bearer {token}", "X-OxideTerm-Revision: big-upload",
            "Content-Type: application/vnd.oxideterm.oxide",
            f"Content-Length: {body_length}", *headers]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    return sock


@pytest.mark.parametrize("previous", [True, False], ids=["over-a-blob", "first-blob"])
def test_kill_during_32mib_upload_leaves_nothing(make_server, previous):
    server = make_server()
    token = server.create_token()
    old = os.urandom(MiB)
    headers = ["If-None-Match: *"]
    if previous:
        answer = server.request("PUT", ns_path(NS, "blob"), body=old, token=token,
                                headers={"If-None-Match": "*", "X-OxideTerm-Revision": "old"})
        assert answer.status == 200
        old_etag = answer.json["etag"]
        headers = [f'If-Match: "{old_etag}"']
    sock = start_raw_blob_upload(server, token, BIG, headers)
    sock.sendall(os.urandom(BIG // 2))          # half the body, then the server dies
    time.sleep(0.3)
    server.kill()
    sock.close()

    assert_file_intact(server)
    server.start()
    assert_file_intact(server)
    assert_payload_rows_whole(server)
    blob = server.request("GET", ns_path(NS, "blob"), token=token)
    metadata = server.request("GET", ns_path(NS, "metadata"), token=token).json
    if previous:
        assert blob.status == 200 and blob.body == old, "the previous blob is not intact"
        assert blob.headers["ETag"] == f'"{old_etag}"'
        assert metadata["revision"] == "old" and metadata["contentLength"] == len(old)
    else:
        assert blob.status == 404, blob
        assert metadata.get("exists") is not True, metadata
    # The server works on after the crash.
    again = server.request("PUT", ns_path(NS, "blob"), body=b"after", token=token,
                           headers={"X-OxideTerm-Revision": "after"})
    assert again.status == 200, again


def test_kill_around_the_commit_of_a_32mib_upload(make_server):
    """The whole body is sent; the kill lands while the server hashes, commits or answers.

    Whatever the timing, the stored blob is the old one or the new one, whole; if the
    client got its 200 before the kill, it is the new one.
    """
    server = make_server()
    token = server.create_token()
    # How long one 32 MiB upload takes here, from its last byte to its answer.
    current = os.urandom(BIG)
    sock = start_raw_blob_upload(server, token, BIG)
    sock.sendall(current)
    sent_at = time.monotonic()
    first = read_until_done(sock, expect=1, timeout=30)
    took = time.monotonic() - sent_at
    sock.close()
    assert first.answers and first.answers[0].status == 200, first
    etag = first.answers[0].json["etag"]
    outcomes = []
    for delay in (0.0, 0.5 * took, 0.95 * took, 30.0):
        new = os.urandom(BIG)
        sock = start_raw_blob_upload(server, token, BIG, [f'If-Match: "{etag}"'])
        sock.sendall(new)
        got = read_until_done(sock, expect=1, timeout=delay) if delay else None
        server.kill()   # the last delay waits for the answer: a kill right after a 200
        if got is None or not got.answers:
            got = read_until_done(sock, expect=1, timeout=0.5)
        sock.close()
        acknowledged = bool(got.answers) and got.answers[0].status == 200
        server.start()
        assert_file_intact(server)
        assert_payload_rows_whole(server, hashes=False)  # the GET compares bytes
        blob = server.request("GET", ns_path(NS, "blob"), token=token)
        assert blob.status == 200
        assert blob.body in (current, new), "a half-written blob is served"
        if acknowledged:
            assert blob.body == new, f"acknowledged upload lost (delay {delay})"
        outcomes.append((round(delay, 3), acknowledged, blob.body == new))
        current = blob.body
        etag = blob.headers["ETag"].strip('"')
        metadata = server.request("GET", ns_path(NS, "metadata"), token=token).json
        assert metadata["contentHash"] == hashlib.sha256(current).hexdigest()
        assert metadata["etag"] == etag
    assert outcomes[-1][1], "the upload given 30 s to finish was never acknowledged"
    print(f"\n[crash/commit] upload answered {took:.3f}s after its last byte; "
          f"(kill delay s, 200 seen, new blob stored): {outcomes}")


def test_kill_during_a_burst_of_small_writes_loses_no_acknowledged_write(make_server):
    """8 writer threads PUT objects (and one PUTs manifests) as fast as they can; kill -9.
    A writer may stop on a dropped connection only once the kill was sent; any other
    error or answer fails the test."""
    server = make_server(env={"ENCRYPTION_KEY": TEST_KEY})
    token = server.create_token()
    sent, acked, killed = {}, {}, threading.Event()
    lock = threading.Lock()
    manifests_acked = []

    def until_killed(write):
        def worker():
            conn = server.connect(timeout=10)
            try:
                while True:
                    write(conn)
            except (OSError, http.client.HTTPException):
                if not killed.is_set():
                    raise            # the server was still meant to be up
        return worker

    def object_writer(number):
        rng, version = random.Random(number), [0]

        def write(conn):
            version[0] += 1
            for path in (f"w{number}/v{version[0]}.json", f"w{number}/latest.oxide"):
                body = f"{path}#{version[0]}#".encode() + os.urandom(rng.randrange(10, 65536))
                with lock:
                    sent.setdefault(path, []).append((version[0], body))
                conn.request("PUT", object_path(NS, path), body=body,
                             headers={"Authorization": f"Bearer {token}"})
                response = conn.getresponse()
                response.read()
                assert response.status in (200, 201), f"PUT {path}: {response.status}"
                with lock:
                    acked[path] = (version[0], body)
        return until_killed(write)

    def manifest_writer():
        number = [0]

        def write(conn):
            number[0] += 1
            body = f'{{"format": "structured-v2", "revision": "m{number[0]}"}}'.encode()
            conn.request("PUT", ns_path(NS, "metadata"), body=body,
                         headers={"Authorization": f"Bearer {token}",
                                  "Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
            assert response.status == 200, f"PUT metadata: {response.status} {answer[:200]}"
            manifests_acked.append((number[0], answer))
        return until_killed(write)

    with workers(*[object_writer(n) for n in range(8)], manifest_writer(), timeout=15):
        time.sleep(1.5)
        killed.set()
        server.kill()
    assert len(acked) >= 16 and manifests_acked, "the burst did not get going"

    assert_file_intact(server)
    server.start()
    assert_file_intact(server)
    assert_payload_rows_whole(server, sealed=True)
    conn = server.connect()
    checked = 0
    for path, versions in sent.items():
        answer = server.request("GET", object_path(NS, path), token=token, connection=conn)
        assert answer.status in (200, 404), (path, answer)
        if path in acked:
            assert answer.status == 200, f"acknowledged object {path} is gone"
            version, _ = acked[path]
            stored = dict(versions)
            # The latest acknowledged version, or a newer one that was sent; never partial.
            assert answer.body in [b for v, b in versions if v >= version], \
                f"{path}: stored bytes are not an acknowledged (or later sent) version"
            assert answer.body == stored[int(answer.body.split(b"#")[1])]
            checked += 1
        elif answer.status == 200:
            assert answer.body in [b for _, b in versions], f"{path}: half-written payload"
    # Manifests: the latest acknowledged one (or a later one) is current; all are in history.
    last_number = manifests_acked[-1][0]
    metadata = server.request("GET", ns_path(NS, "metadata"), token=token).json
    assert int(metadata["revision"][1:]) >= last_number
    history = {row["etag"] for row in db_rows(server, "SELECT etag FROM manifests "
                                                      "WHERE namespace = ?", (NS,))}
    missing = [n for n, answer in manifests_acked if json.loads(answer)["etag"] not in history]
    assert not missing, f"acknowledged manifests missing from history: {missing}"
    print(f"\n[crash/burst] {sum(len(v) for v in sent.values())} object PUTs sent, "
          f"{checked} acknowledged paths verified, {len(manifests_acked)} manifests acknowledged")


# Enough namespaces (gc commits one transaction per namespace) that gc's deletions span
# tens of milliseconds: kill_partway polls progress far more often than that.
GC_NAMESPACES = 120


def test_gc_killed_part_way_leaves_referenced_objects_and_a_rerun_finishes(make_server):
    server = make_server(env={"MAX_NAMESPACES_PER_TOKEN": "0"})  # one token, many namespaces
    token = server.create_token()
    kept, doomed = {}, {}
    conn = server.connect()
    for number in range(GC_NAMESPACES):
        ns = f"gc/n{number}"
        sections = {}
        for index in range(3):
            path = f"structured/kept{index}/rev{number}.json"
            kept[(ns, path)] = os.urandom(8 * 1024)
            sections[f"s{index}"] = {"revision": f"rev{number}", "path": path,
                                     "contentType": "application/json"}
            assert server.request("PUT", object_path(ns, path), body=kept[(ns, path)],
                                  token=token, connection=conn).status == 201
        for index in range(4):
            path = f"structured/old{index}/rev{number}.json"
            doomed[(ns, path)] = os.urandom(16 * 1024)
            assert server.request("PUT", object_path(ns, path), body=doomed[(ns, path)],
                                  token=token, connection=conn).status == 201
        manifest = {"format": "structured-v2", "revision": f"m{number}", "sections": sections}
        assert server.request("PUT", ns_path(ns, "metadata"), body=manifest, token=token,
                              connection=conn).status == 200
    conn.close()
    server.stop()
    time.sleep(1.1)   # every object is now older than a 1 s retention window
    total = len(kept) + len(doomed)

    def progress(db):
        left = db.execute("SELECT count(*) AS n FROM objects").fetchone()["n"]
        return (total - left) / len(doomed)

    done = kill_partway(server, ["gc", "--object-retention-seconds", "1"], progress)
    assert_file_intact(server)
    server.start()
    assert_payload_rows_whole(server)

    def check(after_rerun: bool):
        conn = server.connect()
        for (ns, path), body in kept.items():
            answer = server.request("GET", object_path(ns, path), token=token, connection=conn)
            assert answer.status == 200 and answer.body == body, (ns, path, answer.status)
        gone = 0
        for (ns, path), body in doomed.items():
            answer = server.request("GET", object_path(ns, path), token=token, connection=conn)
            assert answer.status in (200, 404), answer
            if answer.status == 200:
                assert answer.body == body and not after_rerun, (ns, path)
            gone += answer.status == 404
        for number in range(GC_NAMESPACES):
            metadata = server.request("GET", ns_path(f"gc/n{number}", "metadata"),
                                      token=token, connection=conn).json
            assert metadata["revision"] == f"m{number}" and len(metadata["sections"]) == 3
        conn.close()
        return gone

    gone_at_kill = check(after_rerun=False)
    server.stop()
    result = server.cli("gc", "--object-retention-seconds", "1")
    removed = json.loads(result.stdout.strip().splitlines()[-1])["objectsRemoved"]
    assert gone_at_kill + removed == len(doomed)
    assert_file_intact(server)
    server.start()
    assert check(after_rerun=True) == len(doomed)
    print(f"\n[crash/gc] killed at {done:.0%}: {gone_at_kill} of {len(doomed)} unreferenced "
          f"objects removed; rerun removed {removed}; {len(kept)} referenced objects intact")
