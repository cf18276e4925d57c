"""Soak: SOAK_SECONDS (default 600) of mixed sync traffic from 16 clients.

Run with:  python3 -m pytest -m slow tests/test_soak.py -s    (SOAK_SECONDS=60 for a short run)
A plain `python3 -m pytest` skips it unless SOAK_SECONDS is set.

No request may fail (a 412 counts as success only where two clients share a namespace
on purpose), and the server's memory and open files, sampled every 10 s, must not grow
after warm-up beyond: RSS <= 1.5 x warm-up RSS + 20 MiB, open fds <= warm-up fds + 24,
threads <= warm-up threads + 16.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time

import pytest
from _reliability import MiB, integrity_check, proc_status
from conftest import TEST_KEY, ns_path, object_path

CLIENTS = 16
SAMPLE_EVERY = 10
KINDS = ("connections", "forwards", "quickCommands", "serialProfiles", "sensitiveCredentials")


class Client:
    """One device: its own namespace, a shared one, a keep-alive connection it sometimes
    drops, and a record of everything it wrote so reads can be checked."""

    def __init__(self, server, token, number, stop, errors, counts):
        self.server, self.token, self.number = server, token, number
        self.stop, self.errors, self.counts = stop, errors, counts
        self.rng = random.Random(number)
        self.ns = f"soak/device{number}"
        self.conn = server.connect(timeout=30)
        self.objects = {}        # path -> bytes last acknowledged

    def call(self, method, path, expect, body=None, headers=None, token=None):
        try:
            answer = self.server.request(method, path, body=body, headers=headers,
                                         token=self.token if token is None else token,
                                         connection=self.conn)
        except (OSError, http.client.HTTPException) as error:
            self.errors.append(f"client {self.number}: {method} {path}: {error!r}")
            self.conn.close()
            return None
        self.counts[answer.status] = self.counts.get(answer.status, 0) + 1
        if answer.status not in expect:
            self.errors.append(f"client {self.number}: {method} {path}: {answer!r}")
            return None
        return answer

    def structured_sync(self, loop):
        metadata = self.call("GET", ns_path(self.ns, "metadata"), {200})
        if metadata is None:
            return
        sections = {}
        for kind in self.rng.sample(KINDS, self.rng.randint(2, len(KINDS))):
            revision = f"fnv1a-{self.rng.randrange(40):08x}"     # bounded set of paths
            ext = "oxide" if kind == "sensitiveCredentials" else "json"
            path = f"structured/{kind}/{revision}.{ext}"
            body = json.dumps({"kind": kind, "exportedAt": time.time(), "records": [
                "x" * self.rng.randrange(10, 2000) for _ in range(self.rng.randrange(1, 20))]
            }).encode()
            if self.call("PUT", object_path(self.ns, path), {200, 201}, body=body):
                self.objects[path] = body
            sections[kind] = {"revision": revision, "path": path,
                              "contentType": "application/json"}
        manifest = {"format": "structured-v2", "revision": f"rev-{loop}",
                    "deviceId": f"device{self.number}", "sections": sections,
                    "sectionRevisions": {k: v["revision"] for k, v in sections.items()}}
        headers = {"If-Match": metadata.json["etag"]} if metadata.json.get("exists") else {}
        self.call("PUT", ns_path(self.ns, "metadata"), {200}, body=manifest, headers=headers)

    def check_reads(self):
        for path in self.rng.sample(sorted(self.objects), min(3, len(self.objects))):
            answer = self.call("GET", object_path(self.ns, path), {200})
            if answer is not None and answer.body != self.objects[path]:
                self.errors.append(f"client {self.number}: {path} read back wrong bytes")

    def blob_sync(self, loop):
        """The legacy flow: the etag comes from GET metadata (the namespace's etag)."""
        metadata = self.call("GET", ns_path(self.ns, "metadata"), {200})
        if metadata is None:
            return
        body = os.urandom(self.rng.randrange(16 * 1024, 512 * 1024))
        headers = {"X-OxideTerm-Revision": f"blob-{loop}"}
        headers.update({"If-Match": metadata.json["etag"]} if metadata.json.get("exists")
                       else {"If-None-Match": "*"})
        if self.call("PUT", ns_path(self.ns, "blob"), {200}, body=body, headers=headers):
            back = self.call("GET", ns_path(self.ns, "blob"), {200})
            if back is not None and back.body != body:
                self.errors.append(f"client {self.number}: blob read back wrong bytes")

    def shared_counter(self):
        """Two clients share each of these: a 412 is the right answer to a lost race."""
        path = object_path(f"soak/shared{self.number % 8}", "counter.json")
        current = self.call("GET", path, {200, 404})
        if current is None:
            return
        if current.status == 404:
            self.call("PUT", path, {201, 412}, body=b"0", headers={"If-None-Match": "*"})
            return
        value = int(current.body) + 1
        answer = self.call("PUT", path, {200, 412}, body=str(value).encode(),
                           headers={"If-Match": current.headers["ETag"]})
        if answer is not None and answer.status == 412 and \
                answer.json["error"]["code"] != "etag_conflict_detected":
            self.errors.append(f"client {self.number}: 412 without the conflict body")

    def run(self):
        loop = 0
        while not self.stop.is_set():
            loop += 1
            self.structured_sync(loop)
            self.check_reads()
            self.shared_counter()
            if loop % 5 == 0:
                self.blob_sync(loop)
            if loop % 7 == 0:       # strangers and typos happen
                self.call("GET", ns_path(self.ns, "metadata"), {401}, token="oxs_wrong")
                self.call("GET", object_path(self.ns, "no/such.json"), {404})
            if loop % 10 == 0:      # the client's pool drops its connection now and then
                self.conn.close()
            time.sleep(self.rng.uniform(0, 0.02))
        self.conn.close()


@pytest.mark.slow
@pytest.mark.timeout(0)
def test_soak_mixed_sync_traffic(make_server, request):
    if "SOAK_SECONDS" not in os.environ and "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("the soak runs for SOAK_SECONDS (default 600): select it with -m slow "
                    "or set SOAK_SECONDS")
    duration = float(os.environ.get("SOAK_SECONDS", "600"))
    warmup = min(60.0, duration / 5)
    server = make_server(env={"ENCRYPTION_KEY": TEST_KEY})
    token = server.create_token()
    pid = server.process.pid
    stop, errors, counts = threading.Event(), [], {}
    clients = [Client(server, token, n, stop, errors, counts) for n in range(CLIENTS)]
    threads = [threading.Thread(target=c.run, name=f"soak-{c.number}") for c in clients]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples = []       # (seconds since start, status)
    try:
        while time.monotonic() - started < duration and len(errors) < 20:
            time.sleep(min(SAMPLE_EVERY, max(0.0, duration - (time.monotonic() - started))))
            samples.append((time.monotonic() - started, proc_status(pid)))
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    elapsed = time.monotonic() - started
    assert not errors, errors[:20]

    after_warmup = [s for t, s in samples if t >= warmup]
    assert len(after_warmup) >= 2, "run longer than the warm-up (SOAK_SECONDS)"
    warm, final = after_warmup[0], after_warmup[-1]
    peak = {k: max(s[k] for s in after_warmup) for k in warm}
    rss_bound = warm["rss"] * 1.5 + 20 * MiB
    assert final["rss"] <= rss_bound and peak["rss"] <= rss_bound, \
        f"RSS grew from {warm['rss'] / MiB:.1f} MiB after warm-up to {final['rss'] / MiB:.1f}" \
        f" (peak {peak['rss'] / MiB:.1f}); bound 1.5 x + 20 MiB = {rss_bound / MiB:.1f} MiB"
    assert peak["fds"] <= warm["fds"] + 24, \
        f"open fds grew from {warm['fds']} to {peak['fds']} (bound +24)"
    assert peak["threads"] <= warm["threads"] + 16, \
        f"threads grew from {warm['threads']} to {peak['threads']} (bound +16)"
    assert integrity_check(server.db_path) == "ok"
    total = sum(counts.values())
    print(f"\n[soak] {elapsed:.0f}s, {CLIENTS} clients, {total} requests "
          f"({total / elapsed:.0f}/s), statuses {dict(sorted(counts.items()))}; "
          f"RSS MiB {[round(s['rss'] / MiB, 1) for _, s in samples]}; "
          f"fds {[s['fds'] for _, s in samples]}; threads {[s['threads'] for _, s in samples]}")
