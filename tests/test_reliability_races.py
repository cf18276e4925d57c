"""Racing writers: 50 clients do read-modify-write cycles with If-Match on one resource.

Each writer reads the resource (a JSON list of writer ids, and its etag), appends its own
id and writes it back with `If-Match: <etag it read>`. 45 clients are threads of this
process and 5 are separate processes (multiprocessing, fork), all released at once.

What must hold (PROTOCOL.md 4 and 5):
- every answer is 200 or 412, and every 412 carries the `etag_conflict_detected` body;
- no lost update: the successful writes form one chain (each one's If-Match is the etag
  the previous success returned, no two successes share an If-Match), and the final list
  is exactly the acknowledged ids in that chain's order;
- the final state is exactly the bytes one writer sent (the last in the chain);
- each 412 is recorded as one conflict row, and for the manifest every 200 is one row of
  the `manifests` history table.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import multiprocessing
import threading
import time

import pytest
from _reliability import db_open, integrity_check
from conftest import ns_path, object_path

THREAD_CLIENTS = 45
PROCESS_CLIENTS = 5
ATTEMPTS = 6            # read-modify-write cycles per client
OBJECT = "shared/writers.json"
NAMESPACES = {"blob": "race/blob", "object": "race/object", "manifest": "race/manifest"}


# -- one client (runs in a thread or in a forked process) -------------------------

def _read(conn, kind, token):
    """-> (list of writer ids, etag as the client would send it back)."""
    ns = NAMESPACES[kind]
    auth = {"Authorization": f"Bearer {token}"}
    if kind == "manifest":
        conn.request("GET", ns_path(ns, "metadata"), headers=auth)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        metadata = json.loads(body)
        return metadata["writers"], metadata["etag"]        # the client reads the JSON etag
    path = ns_path(ns, "blob") if kind == "blob" else object_path(ns, OBJECT)
    conn.request("GET", path, headers=auth)
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body
    return json.loads(body), response.getheader("ETag")     # the header, verbatim


def _write(conn, kind, token, writers, if_match, writer_id):
    """-> (status, parsed JSON answer, ETag header, bytes sent)."""
    ns = NAMESPACES[kind]
    headers = {"Authorization": f"Bearer {token}", "If-Match": if_match}
    if kind == "manifest":
        body = json.dumps({"format": "structured-v2", "revision": writer_id,
                           "deviceId": writer_id, "writers": writers}).encode()
        headers["Content-Type"] = "application/json"
        path = ns_path(ns, "metadata")
    elif kind == "blob":
        body = json.dumps(writers).encode()
        headers.update({"Content-Type": "application/vnd.oxideterm.oxide",
                        "X-OxideTerm-Revision": writer_id, "X-OxideTerm-Device-Id": writer_id})
        path = ns_path(ns, "blob")
    else:
        body = json.dumps(writers).encode()
        headers["Content-Type"] = "application/json"
        path = object_path(ns, OBJECT)
    conn.request("PUT", path, body=body, headers=headers)
    response = conn.getresponse()
    answer = response.read()
    try:
        parsed = json.loads(answer)
    except ValueError:
        parsed = {"unparsable": answer.decode("latin-1")}
    return response.status, parsed, response.getheader("ETag"), body


def run_client(kind, port, token, client_id, start, results):
    """ATTEMPTS read-modify-write cycles on one keep-alive connection."""
    records = []
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        start.wait(30)
        for attempt in range(ATTEMPTS):
            writer_id = f"c{client_id:02d}-a{attempt}"
            writers, etag = _read(conn, kind, token)
            status, answer, etag_header, sent = _write(conn, kind, token, writers + [writer_id],
                                                       etag, writer_id)
            records.append({"id": writer_id, "status": status, "answer": answer,
                            "if_match": etag, "etag_header": etag_header,
                            "sent": sent.decode()})
        conn.close()
    except Exception as error:  # noqa: BLE001 - reported to the test as a failure
        records.append({"id": f"c{client_id:02d}", "error": repr(error)})
    results.put((client_id, records))


# -- the test ---------------------------------------------------------------------

def bare(etag: str) -> str:
    return etag[1:-1] if etag.startswith('"') and etag.endswith('"') else etag


def seed(server, kind, token):
    """The starting state: an empty list, written once."""
    ns = NAMESPACES[kind]
    if kind == "manifest":
        answer = server.request("PUT", ns_path(ns, "metadata"), token=token, body={
            "format": "structured-v2", "revision": "seed", "writers": []})
    elif kind == "blob":
        answer = server.request("PUT", ns_path(ns, "blob"), body=b"[]", token=token,
                                headers={"If-None-Match": "*", "X-OxideTerm-Revision": "seed"})
    else:
        answer = server.request("PUT", object_path(ns, OBJECT), body=b"[]", token=token,
                                headers={"If-None-Match": "*"})
    assert answer.status in (200, 201), answer
    return answer.json["etag"]


@pytest.mark.sqlite_only   # checks the conflict and manifest rows in the file
@pytest.mark.parametrize("kind", ["blob", "object", "manifest"])
def test_racing_writers_lose_no_update(make_server, kind):
    server = make_server()
    token = server.create_token()
    seed_etag = seed(server, kind, token)

    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    processes = [context.Process(target=run_client,
                                 args=(kind, server.port, token, index, start, results))
                 for index in range(PROCESS_CLIENTS)]
    for process in processes:
        process.start()
    threads = [threading.Thread(target=run_client,
                                args=(kind, server.port, token, index, start, results))
               for index in range(PROCESS_CLIENTS, PROCESS_CLIENTS + THREAD_CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # let every client connect and wait at the start line
    started = time.monotonic()
    start.set()
    by_client = dict(results.get(timeout=120) for _ in range(PROCESS_CLIENTS + THREAD_CLIENTS))
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join(30)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0, process.exitcode

    records = [r for client in sorted(by_client) for r in by_client[client]]
    errors = [r for r in records if "error" in r]
    assert not errors, errors
    assert len(records) == (PROCESS_CLIENTS + THREAD_CLIENTS) * ATTEMPTS

    # Every answer is a success or the client's conflict answer.
    wins = [r for r in records if r["status"] == 200]
    losses = [r for r in records if r["status"] == 412]
    assert len(wins) + len(losses) == len(records), \
        [r for r in records if r["status"] not in (200, 412)][:5]
    what = "object" if kind == "object" else "snapshot"
    known_etags = {seed_etag} | {r["answer"]["etag"] for r in wins}
    for loss in losses:
        assert loss["answer"]["ok"] is False, loss
        error = loss["answer"]["error"]
        assert error["code"] == "etag_conflict_detected", loss
        assert error["message"] == f"Remote {what} changed before upload completed", loss
        assert error.get("remoteEtag") in known_etags, loss   # a real etag, not garbage
    for win in wins:
        if kind != "object":
            assert win["answer"]["ok"] is True and win["answer"]["revision"] == win["id"], win
        assert bare(win["etag_header"]) == win["answer"]["etag"], win
    # The race was real: many clients wrote, many lost.
    assert len(wins) >= 2 and len(losses) >= 10, (len(wins), len(losses))
    # The processes took part in the race: each made all its cycles, and their writes
    # lost to others' (a 412) at least once.
    process_statuses = [r["status"] for i in range(PROCESS_CLIENTS) for r in by_client[i]]
    assert len(process_statuses) == PROCESS_CLIENTS * ATTEMPTS, process_statuses
    assert 412 in process_statuses, f"no process client ever lost a race: {process_statuses}"

    # The successes form ONE chain from the seed: no two share an If-Match (that would be a
    # lost update), and following new etags visits every success.
    by_if_match = {}
    for win in wins:
        key = bare(win["if_match"])
        assert key not in by_if_match, f"two writes succeeded with If-Match {key}: " \
            f"{by_if_match.get(key, {}).get('id')} and {win['id']}"
        by_if_match[key] = win
    chain, etag = [], seed_etag
    while etag in by_if_match:
        chain.append(by_if_match[etag])
        etag = chain[-1]["answer"]["etag"]
    assert len(chain) == len(wins), "some acknowledged writes are not in the history chain"
    # Each client saw its own acknowledgements in chain order.
    for client in by_client:
        own = [r["id"] for r in chain if r["id"].startswith(f"c{client:02d}-")]
        assert own == sorted(own, key=lambda i: int(i.split("-a")[1])), own

    # The final state: exactly the last writer's bytes, listing every acknowledged id.
    ns = NAMESPACES[kind]
    expected_ids = [r["id"] for r in chain]
    last = chain[-1]
    if kind == "manifest":
        final = server.request("GET", ns_path(ns, "metadata"), token=token).json
        assert final["writers"] == expected_ids
        assert final["etag"] == last["answer"]["etag"] and final["revision"] == last["id"]
        sent = json.loads(last["sent"])
        assert {k: final[k] for k in sent} == sent     # field for field what it sent
    else:
        path = ns_path(ns, "blob") if kind == "blob" else object_path(ns, OBJECT)
        final = server.request("GET", path, token=token)
        assert final.status == 200
        assert final.body == last["sent"].encode(), "final bytes are not the last writer's"
        assert json.loads(final.body) == expected_ids
        assert bare(final.headers["ETag"]) == last["answer"]["etag"]
        if kind == "blob":
            metadata = server.request("GET", ns_path(ns, "metadata"), token=token).json
            assert metadata["revision"] == last["id"]
            assert metadata["contentHash"] == hashlib.sha256(final.body).hexdigest()
            assert metadata["contentLength"] == len(final.body)

    # The database agrees: one conflict row per 412, one manifest row per accepted PUT.
    assert integrity_check(server.db_path) == "ok"
    with db_open(server.db_path) as db:
        conflicts = db.execute("SELECT count(*) FROM conflicts WHERE namespace = ?",
                               (ns,)).fetchone()[0]
        assert conflicts == len(losses)
        if kind == "manifest":
            history = db.execute("SELECT etag, revision, manifest FROM manifests "
                                 "WHERE namespace = ? ORDER BY seq", (ns,)).fetchall()
            assert len(history) == 1 + len(wins)   # the seed, then every success
            assert [row[0] for row in history] == [seed_etag] + [r["answer"]["etag"]
                                                                 for r in chain]
            for number, row in enumerate(history[1:], 1):
                assert row[1] == chain[number - 1]["id"]
                assert json.loads(row[2])["writers"] == expected_ids[:number]
    print(f"\n[races/{kind}] {len(records)} writes by {PROCESS_CLIENTS} processes + "
          f"{THREAD_CLIENTS} threads in {elapsed:.2f}s: {len(wins)} x 200, "
          f"{len(losses)} x 412, final list {len(expected_ids)} ids")
