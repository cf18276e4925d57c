"""Retention whose cost follows what changed (issue 21, part 2).

Every kept manifest's object paths are recorded when it is written (manifest_refs); a pass
drops expired manifests together with their references and then judges only the objects
that crossed the window since the last pass or lost their last reference (and, after a
restore, the namespace's objects). These tests check that the references follow every way
a manifest row goes, that what retention removes is still exactly what the rule says, and
that a sync write is answered while a long pass runs.
"""

from __future__ import annotations

import os
import time

from conftest import AdminClient, db_rows, object_path, workers
from test_ops_retention import (ADMIN_PASSWORD, KEEP_MANIFESTS, PAST_WINDOW, WINDOW, Client,
                                gc_cli)

BOTH_STORES = True  # every test here runs on SQLite and on PostgreSQL (conftest)


def references(server, namespace: str) -> set[tuple[int, str]]:
    return {(row["seq"], row["path"]) for row in db_rows(
        server, "SELECT seq, path FROM manifest_refs WHERE namespace = ?", (namespace,))}


def rows_of(server, table: str, namespace: str) -> int:
    return db_rows(server, f"SELECT count(*) AS n FROM {table} WHERE namespace = ?",
                   (namespace,))[0]["n"]


def removed(objects: int, sizes: int, manifests: int) -> dict:
    return {"objectsRemoved": objects, "bytesReclaimed": sizes, "manifestsRemoved": manifests}


def test_references_follow_every_way_a_manifest_goes(make_server):
    server = make_server(env=WINDOW)
    token = server.create_token()
    team = Client(server, token, "refs/team")
    # v1 names three objects: one only it references, one the newest version will name
    # again, and one written again later (so younger than the window when v1 goes).
    team.upload("v1", {"connections": "c/v01.json", "forwards": "shared.json",
                       "snippets": "rewritten.json"})
    for number in range(2, KEEP_MANIFESTS + 1):
        team.upload(f"v{number}", {"connections": f"c/v{number:02d}.json"})
    expected = {(1, "c/v01.json"), (1, "shared.json"), (1, "rewritten.json")} | {
        (number, f"c/v{number:02d}.json") for number in range(2, KEEP_MANIFESTS + 1)}
    assert references(server, "refs/team") == expected
    parked = Client(server, token, "refs/parked")
    parked.upload("p1", {"connections": "kept.json"})
    parked.put("orphan.bin", 1500)
    server.cli("namespace", "delete", "refs/parked")
    time.sleep(PAST_WINDOW)

    # Pass 1: every object is past the window, but v1 is one of the newest 32: all stay.
    assert gc_cli(server) == removed(0, 0, 0)
    team.put("rewritten.json", 2500)
    team.put(f"c/v{KEEP_MANIFESTS + 1}.json")
    team.manifest(f"v{KEEP_MANIFESTS + 1}", {"connections": f"c/v{KEEP_MANIFESTS + 1}.json",
                                             "forwards": "shared.json"})

    # Pass 2: v1 goes with its references; of its objects only the one nothing else
    # names and that is past the window goes, although pass 1 had judged it already.
    assert gc_cli(server) == removed(1, len(team.written["c/v01.json"]), 1)
    assert {seq for seq, _ in references(server, "refs/team")} == set(
        range(2, KEEP_MANIFESTS + 2))
    assert team.status("c/v01.json") == 404
    assert team.status("rewritten.json") == 200
    assert team.status("shared.json") == 200

    # Purge takes the namespace's references along: a new namespace of the same name
    # does not keep an object that only the purged one's manifests named.
    purged = Client(server, token, "refs/purged")
    purged.upload("q1", {"connections": "q.json"})
    assert references(server, "refs/purged") == {(1, "q.json")}
    server.cli("namespace", "delete", "refs/purged")
    server.cli("namespace", "purge", "refs/purged")
    assert rows_of(server, "manifest_refs", "refs/purged") == 0
    assert rows_of(server, "unjudged_objects", "refs/purged") == 0
    purged.put("q.json", 1700)
    # A namespace restored after passes went by has its objects judged again.
    server.cli("namespace", "restore", "refs/parked")
    time.sleep(PAST_WINDOW)

    # Pass 3: the object written again is past the window now; so are the orphans.
    assert gc_cli(server) == removed(3, 2500 + 1700 + 1500, 0)
    assert team.status("rewritten.json") == 404
    assert purged.status("q.json") == 404
    assert parked.status("orphan.bin") == 404
    assert parked.status("kept.json") == 200
    assert team.status("shared.json") == 200
    for number in range(2, KEEP_MANIFESTS + 2):
        assert team.status(f"c/v{number:02d}.json") == 200, number
    assert rows_of(server, "unjudged_objects", "refs/team") == 0
    for client in (team, parked, purged):
        client.close()


NAMESPACES, ORPHANS = 240, 4


def test_a_sync_write_is_answered_while_a_long_retention_pass_runs(make_server):
    """The pass runs in the server (as the hourly one and the page's button do). The
    witness is the store itself: when the write is answered, the pass has removed some
    objects and not yet all, so it was in progress."""
    server = make_server(env={**WINDOW, "ADMIN_PASSWORD": ADMIN_PASSWORD,
                              "MAX_NAMESPACES_PER_TOKEN": "0"})  # one token makes them all
    token = server.create_token()

    def upload(first: int):
        connection = server.connect()
        for number in range(first, NAMESPACES, 4):
            for orphan in range(ORPHANS):
                answer = server.request("PUT", object_path(f"gc/{number:04d}", f"o{orphan}.bin"),
                                        os.urandom(500), token=token, connection=connection)
                assert answer.status == 201, answer
        connection.close()

    with workers(*(lambda first=first: upload(first) for first in range(4))):
        pass
    total = NAMESPACES * ORPHANS

    def left() -> int:
        return db_rows(server, "SELECT count(*) AS n FROM objects "
                               "WHERE substr(namespace, 1, 3) = 'gc/'")[0]["n"]

    admin = AdminClient(server)
    admin.login()
    time.sleep(PAST_WINDOW)
    with workers(lambda: admin.post("/admin/api/gc")) as results:
        while left() == total:   # the pass has not removed anything yet
            time.sleep(0.005)
        answer = server.request("PUT", object_path("gc-writer", "during.bin"), b"written",
                                token=token)
        assert answer.status == 201, answer
        still_there = left()
    assert 0 < still_there < total, still_there
    assert results[0].status == 200, results[0]
    assert results[0].json == removed(total, total * 500, 0)
    assert left() == 0
    assert server.request("GET", object_path("gc-writer", "during.bin"),
                          token=token).body == b"written"
