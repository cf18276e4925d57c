"""Slow and idle clients: slowloris connections are cut by the request timeout, a normal
client keeps syncing meanwhile, threads and memory stay bounded, and past MAX_CONNECTIONS
extra connections get a quick 503 with Retry-After instead of a reset or a hang."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time

import pytest
from _reliability import (
    MiB,
    proc_status,
    raise_nofile,
    raw_connect,
    read_until_done,
    wait_for,
)
from conftest import assert_json_error, ns_path, object_path, run_workers

REQUEST_TIMEOUT = 2
HALF_LINES = 300
DRIBBLERS = 50
NS = "slow/clients"


def sync_cycle(server, token, etag):
    """What a client does per sync: GET metadata, PUT blob with If-Match, GET blob.
    -> (seconds taken, new etag)."""
    started = time.monotonic()
    conn = server.connect(timeout=10)
    metadata = server.request("GET", ns_path(NS, "metadata"), token=token, connection=conn)
    assert metadata.status == 200 and metadata.json["etag"] == etag, metadata
    body = f"snapshot at {time.time()}".encode()
    put = server.request("PUT", ns_path(NS, "blob"), body=body, token=token, connection=conn,
                         headers={"If-Match": f'"{etag}"', "X-OxideTerm-Revision": "r"})
    assert put.status == 200, put
    got = server.request("GET", ns_path(NS, "blob"), token=token, connection=conn)
    assert got.status == 200 and got.body == body, got
    conn.close()
    return time.monotonic() - started, put.json["etag"]


class Stalls:
    """Open attack connections and watch for the server closing each of them."""

    def __init__(self, port):
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.opened = {}      # socket -> (kind, time opened)
        self.closed = {}      # kind -> [seconds it stayed open]
        self.lock = threading.Lock()

    def open(self, kind, payload):
        sock = raw_connect(self.port, timeout=5)
        sock.sendall(payload)
        sock.setblocking(False)
        with self.lock:
            self.opened[sock] = (kind, time.monotonic())
            self.selector.register(sock, selectors.EVENT_READ)
        return sock

    def poll(self, timeout=0.05):
        for key, _ in self.selector.select(timeout):
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            except BlockingIOError:
                continue
            if not data:        # EOF or reset: the server closed it
                with self.lock:
                    kind, opened = self.opened.pop(sock)
                    self.selector.unregister(sock)
                self.closed.setdefault(kind, []).append(time.monotonic() - opened)
                sock.close()

    def open_count(self, kind=None):
        with self.lock:
            return sum(1 for k, _ in self.opened.values() if kind in (None, k))

    def dribble(self):
        """One more body byte to every dribbler still open."""
        with self.lock:
            targets = [s for s, (k, _) in self.opened.items() if k == "dribble"]
        for sock in targets:
            try:
                sock.send(b"x")
            except OSError:
                pass

    def close_all(self):
        with self.lock:
            for sock in self.opened:
                self.selector.unregister(sock)
                sock.close()
            self.opened.clear()


def test_slowloris_and_dribblers_do_not_block_a_normal_sync(make_server):
    raise_nofile(4096)
    server = make_server(env={"REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT)})
    token = server.create_token()
    etag = server.request("PUT", ns_path(NS, "blob"), body=b"first", token=token,
                          headers={"X-OxideTerm-Revision": "r"}).json["etag"]
    pid = server.process.pid
    # A client's pooled keep-alive connection, idle through the attack.
    pooled = server.connect()
    assert server.request("GET", "/health", connection=pooled).status == 200
    baseline = proc_status(pid)

    stalls = Stalls(server.port)
    half_line = b"GET /v1/namespaces/slow%2Fclients/meta"
    dribble_head = (f"PUT {object_path(NS, 'slow/object.json')} HTTP/1.1\r\n"
                    f"Host: x\r\nAuthorization: Bearer {token}\r\n"
                    f"Content-Length: 1000\r\n\r\n").encode()
    attack_started = time.monotonic()
    for _ in range(HALF_LINES):
        stalls.open("half-line", half_line)
    for _ in range(DRIBBLERS):
        stalls.open("dribble", dribble_head + b"x")
    opened_in = time.monotonic() - attack_started

    peak, cycles = baseline, []
    stop = threading.Event()

    def dribbler():
        while not stop.wait(1.0):
            stalls.dribble()

    threading.Thread(target=dribbler, daemon=True).start()
    try:
        # While every attack connection is attached, a normal client syncs, again and again.
        attached = wait_for(lambda: (s := proc_status(pid))["threads"] >= HALF_LINES and s,
                            timeout=1.0) or proc_status(pid)
        for _ in range(4):
            took, etag = sync_cycle(server, token, etag)
            cycles.append(took)
            status = proc_status(pid)
            peak = {k: max(peak[k], status[k]) for k in peak}
            stalls.poll(0.1)
        # Then the server must cut every stalled connection by its timeout.
        deadline = time.monotonic() + REQUEST_TIMEOUT + 6
        while stalls.open_count() and time.monotonic() < deadline:
            stalls.poll(0.1)
            status = proc_status(pid)
            peak = {k: max(peak[k], status[k]) for k in peak}
    finally:
        stop.set()
        left = stalls.open_count()
        stalls.close_all()

    assert attached["threads"] >= HALF_LINES, \
        f"the attack was not attached when the client synced: {attached}"
    assert max(cycles) < 2.0, f"sync cycles took {cycles} s under attack (bound 2 s)"
    assert left == 0, f"{left} stalled connections were never closed by the server"
    slowest = {kind: max(times) for kind, times in stalls.closed.items()}
    assert set(slowest) == {"half-line", "dribble"}, stalls.closed
    bound = REQUEST_TIMEOUT + 3     # the timeout, the 0.5 s sweep, and a loaded machine
    assert all(seconds <= bound for seconds in slowest.values()), \
        f"stalled connections lived {slowest} s (bound {bound} s)"
    thread_bound = baseline["threads"] + HALF_LINES + DRIBBLERS + 10
    assert peak["threads"] <= thread_bound, \
        f"{peak['threads']} threads under attack (bound: one per connection, {thread_bound})"
    assert peak["rss"] <= baseline["rss"] + 64 * MiB, \
        f"RSS grew from {baseline['rss'] // MiB} to {peak['rss'] // MiB} MiB (bound +64 MiB)"
    # Afterwards: no thread or socket left behind. The store may have pooled more SQLite
    # reader connections meanwhile (at most 32, two files each): that is not a leak.
    fd_bound = baseline["fds"] + 2 * 32 + 2
    after = wait_for(lambda: (s := proc_status(pid))["threads"] <= baseline["threads"] + 2
                     and s["fds"] <= fd_bound and s, timeout=10) or proc_status(pid)
    assert after["threads"] <= baseline["threads"] + 2, \
        f"threads did not go back down: {baseline['threads']} before, {after['threads']} after"
    assert after["fds"] <= fd_bound, \
        f"file descriptors leaked: {baseline['fds']} before, {after['fds']} after (bound " \
        f"{fd_bound}: the reader pool may grow by 32 connections)"
    # The pooled keep-alive connection outlived the request timeout (idle limit is longer).
    assert server.request("GET", "/health", connection=pooled).status == 200
    pooled.close()
    print(f"\n[slow] {HALF_LINES} half request lines + {DRIBBLERS} dribblers opened in "
          f"{opened_in:.2f}s; sync cycles {[round(c, 3) for c in cycles]} s; "
          f"closed after max {({k: round(v, 2) for k, v in slowest.items()})} s; threads "
          f"{baseline['threads']} -> peak {peak['threads']} -> {after['threads']}; RSS "
          f"{baseline['rss'] / MiB:.1f} -> peak {peak['rss'] / MiB:.1f} MiB; fds "
          f"{baseline['fds']} -> peak {peak['fds']} -> {after['fds']}")


# -- the connection limit ----------------------------------------------------------

LIMIT = 20


@pytest.fixture
def full_server(make_server):
    """A server with MAX_CONNECTIONS=20, all 20 held by stalled clients."""
    server = make_server(env={"MAX_CONNECTIONS": str(LIMIT), "REQUEST_TIMEOUT_SECONDS": "30"})
    holders = []
    try:
        for _ in range(LIMIT):
            holders.append(raw_connect(server.port))
            holders[-1].sendall(b"GET /hea")
        # main thread + one per holder (the housekeeping thread comes on top)
        assert wait_for(lambda: proc_status(server.process.pid)["threads"] >= LIMIT + 1, 10), \
            "the holders did not get their threads"
        yield server, holders
    finally:
        for sock in holders:
            sock.close()


def assert_quick_503(exchange, bound=2.0):
    assert exchange.answers, f"no answer past the connection limit: {exchange}"
    answer = exchange.answers[0]
    assert answer.status == 503, answer
    assert answer.headers.get("retry-after", "").isdigit(), answer.headers
    assert_json_error(answer, 503)
    assert exchange.seconds < bound, f"the 503 took {exchange.seconds:.2f}s (bound {bound}s)"


def test_connections_past_the_limit_get_503_with_retry_after(full_server):
    server, holders = full_server
    times = []
    for _ in range(10):
        with raw_connect(server.port) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            exchange = read_until_done(sock, timeout=5, started=started)
        assert_quick_503(exchange)
        assert exchange.ending in ("eof", "reset"), exchange    # and then closed
        times.append(exchange.seconds)
    # The client's own retry, after the holders went away, is served.
    for sock in holders:
        sock.close()
    answer = wait_for(lambda: server.request("GET", "/health").status == 200, timeout=5)
    assert answer, "the server did not recover after the holders left"
    print(f"\n[slow/limit] 10 connections past MAX_CONNECTIONS={LIMIT}: 503 in "
          f"{min(times) * 1000:.0f}-{max(times) * 1000:.0f} ms")


def test_a_flood_past_the_limit_does_not_stall_other_clients(full_server):
    """25 extra connections that send nothing, then a client that sends its request:
    it must get its 503 quickly, not wait behind the silent ones. (Found by this suite:
    Server._refuse() waited 0.2 s per silent connection in the accept loop: 5 s here.)"""
    server, _ = full_server
    silent = [raw_connect(server.port) for _ in range(25)]
    try:
        with raw_connect(server.port) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            exchange = read_until_done(sock, timeout=8, started=started)
    finally:
        for sock in silent:
            sock.close()
    assert_quick_503(exchange, bound=2.0)


# -- turns: past 32 open connections, quick requests are served in arrival order ---------

def open_idle_connections(server, count: int) -> list:
    """Keep-alive connections that said one thing and wait: enough to make the server take
    turns (it does past 32 open connections)."""
    idle = [raw_connect(server.port) for _ in range(count)]
    for sock in idle:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until_done(sock, expect=1).answers[0].status == 200
    return idle


def test_a_client_that_stops_reading_does_not_hold_up_the_others(make_server):
    """In turn, an answer is sent only as far as the socket takes it at once; the rest
    goes out after the turn is passed on. A client that pipelines GETs and never reads
    its answers must not stall everyone else's GETs until its request times out."""
    raise_nofile(4096)
    server = make_server(env={"REQUEST_TIMEOUT_SECONDS": "60"})
    token = server.create_token()
    manifest = {"revision": "big", "padding": "x" * 60_000}  # an answer just under 64 KiB
    assert server.request("PUT", ns_path(NS, "metadata"), body=manifest,
                          token=token).status == 200
    idle = open_idle_connections(server, 40)

    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", server.port))
    request = (f"GET {ns_path(NS, 'metadata')} HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    stuck.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        for _ in range(400):  # ~24 MB of answers it never reads
            stuck.send(request)
    time.sleep(1)  # by now the server's thread for it cannot send any more

    conn = server.connect(timeout=30)
    started = time.monotonic()
    for _ in range(20):
        answer = server.request("GET", ns_path(NS, "metadata"), token=token, connection=conn)
        assert answer.status == 200 and answer.json["revision"] == "big"
    took = time.monotonic() - started
    assert took < 10, f"20 GETs took {took:.1f} s beside a client that does not read"
    assert server.request("GET", "/health").status == 200
    conn.close()
    stuck.close()
    for sock in idle:
        sock.close()


def test_many_connections_taking_turns_all_get_the_right_answers(make_server):
    """48 connections, each mixing quick GETs (in turn) with object PUTs and GETs and
    manifest PUTs (out of turn): every answer is the right one."""
    raise_nofile(4096)
    server = make_server()
    token = server.create_token()

    def client(number):
        ns = f"turns/{number}"
        conn = server.connect(timeout=60)
        try:
            for round_ in range(15):
                data = f"object {number}.{round_}".encode() * 50
                path = object_path(ns, f"structured/c/{round_}.json")
                put = server.request("PUT", path, body=data, token=token, connection=conn)
                got = server.request("GET", path, token=token, connection=conn)
                manifest = {"revision": f"r{round_}", "client": number}
                meta_put = server.request("PUT", ns_path(ns, "metadata"), body=manifest,
                                          token=token, connection=conn)
                meta = server.request("GET", ns_path(ns, "metadata"), token=token,
                                      connection=conn)
                where = (number, round_, put, got, meta_put, meta)
                assert put.status == 201 and got.status == 200 and got.body == data, where
                assert meta_put.status == 200 and meta.status == 200, where
                assert meta.json["revision"] == f"r{round_}", where
                assert meta.json["client"] == number, where
                assert meta.json["etag"] == meta_put.json["etag"], where
        finally:
            conn.close()
        return number

    finished = run_workers(*[lambda n=n: client(n) for n in range(48)], timeout=120)
    assert finished == list(range(48))
