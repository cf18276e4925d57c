"""oxsync serving HTTPS itself (issue 10): a test CA made at test time, real TLS handshakes.

Every server here is a real oxsync process started with --tls-cert/--tls-key (or the
TLS_CERT_FILE/TLS_KEY_FILE environment); clients verify its certificate against the test CA.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import threading
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import (AdminClient, OxsyncServer, cookies_of, free_port, ns_path,
                      object_path, one_error_line, running_server)

NS = "team/default"
SNAPSHOT_TYPE = "application/vnd.oxideterm.oxide"
ADMIN_ENV = {"ADMIN_PASSWORD": "correct horse battery", "ADMIN_JWT_SECRET": "j" * 40}
METRICS_TOKEN = "m" * 40


# -- a test PKI ---------------------------------------------------------------------------

def pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Pair:
    """A certificate (PEM) and its key (PEM) as written to disk."""

    def __init__(self, cert: x509.Certificate, key):
        self.cert, self.key = cert, key
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.key_pem = pem_key(key)
        self.der = cert.public_bytes(serialization.Encoding.DER)

    def encrypted_key_pem(self, passphrase: bytes = b"pass phrase") -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(passphrase))

    def write(self, directory: Path, stem: str = "server") -> tuple[str, str]:
        cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return str(cert), str(key)


class TestCA:
    __test__ = False

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oxsync test CA")])
        now = datetime.now(timezone.utc)
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, *, not_before: timedelta = timedelta(days=-1),
              not_after: timedelta = timedelta(days=90)) -> Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + not_before).not_valid_after(now + not_after)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))
        return Pair(cert, key)


class PKI:
    def __init__(self, directory: Path):
        self.dir = directory
        self.ca = TestCA()
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.ca.pem)
        self.good = self.ca.issue()
        self.renewed = self.ca.issue(not_after=timedelta(days=120))
        self.expired = self.ca.issue(not_before=timedelta(days=-30),
                                     not_after=timedelta(days=-1))
        self.soon = self.ca.issue(not_after=timedelta(days=5))
        # The good certificate with a key that does not belong to it.
        self.mismatched = Pair(self.good.cert, ec.generate_private_key(ec.SECP256R1()))
        assert self.good.cert.serial_number != self.renewed.cert.serial_number

    def context(self) -> ssl.SSLContext:
        """What the OxideTerm client does: verification on, our CA trusted."""
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


# -- servers ------------------------------------------------------------------------------

class TlsServer(OxsyncServer):
    """OxsyncServer speaking HTTPS: the harness's request()/wait_ready() go through connect()."""

    def __init__(self, workdir: Path, env=None, args=(), database_url=None, *, pki: PKI,
                 pair: Pair | None = None, use_env: bool = False):
        self.pki = pki
        self.cert_file, self.key_file = (pair or pki.good).write(workdir)
        tls = {"TLS_CERT_FILE": self.cert_file, "TLS_KEY_FILE": self.key_file}
        flags = [] if use_env else ["--tls-cert", self.cert_file, "--tls-key", self.key_file]
        super().__init__(workdir, {**(env or {}), **(tls if use_env else {})},
                         (*flags, *args), database_url)

    def connect(self, timeout: float = 30, context: ssl.SSLContext | None = None):
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                           context=context or self.pki.context())

    def peer_certificate(self) -> bytes:
        """DER of the certificate a NEW connection is served (verified against the CA)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with self.pki.context().wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return tls.getpeercert(binary_form=True)

    def replace_pair(self, cert_pem: bytes, key_pem: bytes) -> None:
        Path(self.key_file).write_bytes(key_pem)
        Path(self.cert_file).write_bytes(cert_pem)

    def sighup_and_wait(self, marker: str, timeout: float = 10) -> str:
        """SIGHUP, then wait for one more log line containing `marker`; return it."""
        before = self.log().count(marker)
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in self.log().splitlines() if marker in line]
            if len(lines) > before:
                return lines[-1]
            time.sleep(0.05)
        raise AssertionError(f"no {marker!r} line after SIGHUP:\n{self.log()}")


@pytest.fixture
def make_tls(make_server, pki):
    """make_server for TlsServer: make_tls(pair=None, env=None, args=(), use_env=False)."""
    def make(pair=None, env=None, args=(), use_env=False, start=True):
        return make_server(env=env, args=args, start=start, server_class=TlsServer, pki=pki,
                           pair=pair, use_env=use_env)
    return make


@pytest.fixture(scope="module")
def shared(tmp_path_factory, pki, store_kind):
    """One HTTPS server for the read-mostly tests: admin on, metrics on, a 2 s request
    timeout, and the HTTP redirect listener."""
    redirect_port = free_port()
    with running_server(tmp_path_factory.mktemp("tls-shared"), {
            **ADMIN_ENV, "METRICS_TOKEN": METRICS_TOKEN, "REQUEST_TIMEOUT_SECONDS": "2"},
            ("--redirect-http", str(redirect_port)), store_kind=store_kind,
            server_class=TlsServer, pki=pki) as server:
        server.redirect_port = redirect_port
        yield server


# -- the sync cycle over HTTPS ----------------------------------------------------------

def test_sync_cycle_over_https_with_verification(shared, pki):
    server, token = shared, shared.token
    ns = "tls/sync"
    context = pki.context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    connection = server.connect(context=context)
    connection.connect()
    assert connection.sock.selected_alpn_protocol() == "http/1.1"   # never h2
    assert connection.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert connection.sock.getpeercert(binary_form=True) == pki.good.der

    snapshot = os.urandom(200_000)
    put = server.request("PUT", ns_path(ns, "blob"), snapshot, {
        "Content-Type": SNAPSHOT_TYPE, "X-OxideTerm-Revision": "rev-1",
        "X-OxideTerm-Device-Id": "laptop", "If-None-Match": "*"}, token=token,
        connection=connection)
    assert put.status == 200 and put.json["ok"] is True, put
    meta = server.request("GET", ns_path(ns, "metadata"), token=token, connection=connection)
    assert meta.status == 200 and meta.json["etag"] == put.json["etag"], meta
    assert meta.json["revision"] == "rev-1" and meta.json["contentLength"] == len(snapshot)
    blob = server.request("GET", ns_path(ns, "blob"), token=token, connection=connection)
    assert blob.status == 200 and blob.body == snapshot
    assert blob.headers["ETag"].strip('"') == put.json["etag"]
    again = server.request("PUT", ns_path(ns, "blob"), b"second", {
        "X-OxideTerm-Revision": "rev-2", "If-None-Match": "*"}, token=token,
        connection=connection)
    assert again.status == 412, again
    # Structured sync: an object, then the manifest, on the same keep-alive connection.
    obj = server.request("PUT", object_path(ns, "structured/connections/fnv1a-1.json"),
                         b'{"records": []}', {"Content-Type": "application/json"},
                         token=token, connection=connection)
    assert obj.status == 201, obj
    got = server.request("GET", object_path(ns, "structured/connections/fnv1a-1.json"),
                         token=token, connection=connection)
    assert got.status == 200 and got.body == b'{"records": []}'
    connection.close()


def test_certificate_is_really_verified(shared, pki):
    """Verification is on: the DNS name in the SAN works, a wrong name and an unknown CA fail."""
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as raw:
        with pki.context().wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.getpeercert()["subjectAltName"] == (("DNS", "localhost"),
                                                          ("IP Address", "127.0.0.1"))
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            pki.context().wrap_socket(raw, server_hostname="sync.example.com")
    stranger = ssl.create_default_context(cafile=str(write_other_ca(pki.dir)))
    with pytest.raises(ssl.SSLCertVerificationError):
        shared.request("GET", "/health", connection=shared.connect(context=stranger))
    assert shared.request("GET", "/health").status == 200       # the server is unharmed


def write_other_ca(directory: Path) -> Path:
    path = directory / "other-ca.pem"
    if not path.exists():
        path.write_bytes(TestCA().pem)
    return path


def test_tls_1_2_minimum_and_modern_ciphers(shared, pki):
    tls12 = pki.context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as raw:
        with tls12.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.2"
            name = tls.cipher()[0]
            assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name), name
    # A TLS 1.2 client offering only CBC suites (usable with this ECDSA key): refused.
    cbc = pki.context()
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            cbc.wrap_socket(raw, server_hostname="127.0.0.1")


def legacy_context(purpose: int) -> ssl.SSLContext:
    """TLS 1.0-1.1 only, every cipher allowed (the deprecation warnings are the point)."""
    context = ssl.SSLContext(purpose)
    if purpose == ssl.PROTOCOL_TLS_CLIENT:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


def tls11_client_context() -> ssl.SSLContext:
    return legacy_context(ssl.PROTOCOL_TLS_CLIENT)


def local_tls11_works(pki: PKI) -> str | None:
    """None when this OpenSSL can complete a TLS 1.1 handshake with itself, else why not."""
    try:
        client = tls11_client_context()
        server = legacy_context(ssl.PROTOCOL_TLS_SERVER)
        cert, key = pki.good.write(pki.dir, "probe")
        server.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as error:
        return f"cannot even build a TLS 1.1 context: {error}"
    listener = socket.create_server(("127.0.0.1", 0))
    errors = []

    def serve():
        try:
            conn, _ = listener.accept()
            conn.settimeout(5)
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError) as error:
            errors.append(error)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw:
            with client.wrap_socket(raw) as tls:
                version = tls.version()
                tls.sendall(b"x")
        return None if version == "TLSv1.1" else f"negotiated {version}, not TLSv1.1"
    except (OSError, ssl.SSLError) as error:
        return f"a local TLS 1.1 handshake fails: {error}"
    finally:
        thread.join(5)
        listener.close()


def test_a_tls_1_1_client_is_refused(shared, pki):
    reason = local_tls11_works(pki)
    if reason:
        pytest.skip(f"the local OpenSSL ({ssl.OPENSSL_VERSION}) cannot offer TLS 1.1: {reason}")
    with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            tls11_client_context().wrap_socket(raw)
    assert shared.request("GET", "/health").status == 200


# -- a stalled handshake ----------------------------------------------------------------

def client_hello(pki: PKI) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = pki.context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:8]
    return hello


def dribble(port: int, hello: bytes, opened: float, closed: list) -> None:
    """Send a ClientHello one byte at a time; note when the server hangs up."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(0.25)
        for byte in hello:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(4096) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
            if time.monotonic() - opened > 8:
                return
        closed.append(time.monotonic() - opened)


def test_stalled_handshakes_do_not_delay_others(shared, pki):
    server, token = shared, shared.token
    hello = client_hello(pki)
    opened = time.monotonic()
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    halves = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    for sock in halves:
        sock.sendall(hello[:len(hello) // 2])
    dribbled: list[float] = []
    dribbler = threading.Thread(target=dribble, args=(server.port, hello, opened, dribbled),
                                daemon=True)
    dribbler.start()                      # one byte of ClientHello every 0.25 s
    time.sleep(0.2)                       # the server has accepted them and is waiting
    try:
        for _ in range(3):
            started = time.monotonic()
            answer = server.request("GET", ns_path("tls/stall", "metadata"), token=token)
            elapsed = time.monotonic() - started
            assert answer.status == 200, answer
            assert elapsed < 1.0, f"a normal HTTPS request took {elapsed:.2f} s"
        # REQUEST_TIMEOUT_SECONDS=2: the server gives up on each stalled handshake.
        for sock in silent + halves:
            sock.settimeout(8)
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                data = b""
            closed_after = time.monotonic() - opened
            assert data == b"", data[:40]
            assert closed_after < 5.0, f"stalled socket closed only after {closed_after:.1f} s"
        assert closed_after > 1.5, f"stalled socket closed after {closed_after:.1f} s, " \
                                   "before the 2 s request timeout"
        # The timeout bounds the whole handshake, not each read: a dribbler is cut too.
        dribbler.join(10)
        assert dribbled and dribbled[0] < 5.0, f"dribbling handshake lived {dribbled} s"
    finally:
        for sock in silent + halves:
            sock.close()


# -- renewal --------------------------------------------------------------------------------

def test_renewed_pair_served_after_sighup_without_dropping_an_upload(make_tls, pki):
    server = make_tls(pki.good)
    token = server.create_token()
    assert server.peer_certificate() == pki.good.der

    size, chunk = 1536 * 1024, 128 * 1024
    body = os.urandom(size)
    path = ns_path("tls/renew", "blob")
    upload = server.connect()
    upload.connect()                                  # handshake done with the old pair
    assert upload.sock.getpeercert(binary_form=True) == pki.good.der
    upload.putrequest("PUT", path)
    for name, value in (("Authorization", f"Bearer {token}"), ("Content-Type", SNAPSHOT_TYPE),
                        ("X-OxideTerm-Revision", "rev-big"), ("If-None-Match", "*"),
                        ("Content-Length", str(size))):
        upload.putheader(name, value)
    upload.endheaders()
    sent = 0
    for _ in range(4):
        upload.send(body[sent:sent + chunk])
        sent += chunk
        time.sleep(0.1)

    server.replace_pair(pki.renewed.cert_pem, pki.renewed.key_pem)
    line = server.sighup_and_wait("TLS certificate reloaded")
    assert "SIGHUP" in line, line
    assert server.peer_certificate() == pki.renewed.der   # new connections: the new pair
    stated = server.request("GET", "/ready").json["tlsCertificateExpiresAt"]
    assert stated.startswith(pki.renewed.cert.not_valid_after_utc.strftime("%Y-%m-%d")), stated

    while sent < size:                                # the upload goes on, slowly
        upload.send(body[sent:sent + chunk])
        sent += chunk
        time.sleep(0.05)
    answer = upload.getresponse()
    assert answer.status == 200, (answer.status, answer.read())
    assert json.loads(answer.read())["ok"] is True
    # The old connection stays usable (keep-alive) and still speaks the old pair.
    check = server.request("GET", path, token=token, connection=upload)
    assert check.status == 200 and check.body == body
    assert upload.sock.getpeercert(binary_form=True) == pki.good.der
    upload.close()
    assert server.request("GET", path, token=token).body == body


def test_broken_renewal_keeps_the_old_pair(make_tls, pki):
    server = make_tls(pki.good)
    assert server.peer_certificate() == pki.good.der
    marker = "refused, the current one stays"
    attempts = [
        ("garbage certificate", b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n", None),
        ("mismatched key", pki.renewed.cert_pem, pki.good.key_pem),
        ("expired pair", pki.expired.cert_pem, pki.expired.key_pem),
    ]
    for what, cert_pem, key_pem in attempts:
        server.replace_pair(cert_pem, key_pem or Path(server.key_file).read_bytes())
        line = server.sighup_and_wait(marker)
        assert "SIGHUP" in line, (what, line)
        assert server.process.poll() is None, what
        assert server.peer_certificate() == pki.good.der, what
        assert server.request("GET", "/health").status == 200, what
    assert "TLS certificate reloaded" not in server.log()
    # A good pair afterwards is taken: the refusals were about the files, not SIGHUP.
    server.replace_pair(pki.renewed.cert_pem, pki.renewed.key_pem)
    server.sighup_and_wait("TLS certificate reloaded")
    assert server.peer_certificate() == pki.renewed.der


def test_renewal_with_a_pass_phrase_protected_key_is_refused_with_a_log_line(make_tls, pki):
    """OpenSSL would prompt for the pass phrase on a terminal, or raise OSError (not
    SSLError) without one: either way no refusal line, a dead reload thread, a traceback."""
    server = make_tls(pki.good)
    server.allow_traceback = True            # asserted below, as part of the expectation
    server.replace_pair(pki.renewed.cert_pem, pki.renewed.encrypted_key_pem())
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "refused" not in server.log() \
            and "Traceback" not in server.log():
        time.sleep(0.05)
    time.sleep(0.2)
    assert server.peer_certificate() == pki.good.der      # the old pair stays either way
    assert server.request("GET", "/health").status == 200
    assert "Traceback" not in server.log(), server.log()
    refusals = [line for line in server.log().splitlines()
                if "refused, the current one stays" in line]
    assert len(refusals) == 1, server.log()
    assert "Enter PEM pass phrase" not in server.log()


def test_connection_limit_answers_503_over_tls(make_tls, pki):
    """At MAX_CONNECTIONS the 503 must be readable by a TLS client: a plaintext answer on
    the TLS port is a handshake error, which the client does not retry (PROTOCOL.md 3)."""
    server = make_tls(pki.good, env={"MAX_CONNECTIONS": "2"})
    held = []
    try:
        for _ in range(2):                   # two idle keep-alive connections fill the slots
            connection = server.connect()
            assert server.request("GET", "/health", connection=connection).status == 200
            held.append(connection)
        answer = server.request("GET", "/health", connection=server.connect(timeout=10))
        assert answer.status == 503, answer
        assert answer.headers["Retry-After"], answer.headers
    finally:
        for connection in held:
            connection.close()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("OXSYNC_TLS_WATCH"),
                    reason="file-change detection is checked once a minute; "
                           "run with OXSYNC_TLS_WATCH=1 (takes ~70 s)")
def test_changed_files_are_picked_up_without_sighup(make_tls, pki):
    server = make_tls(pki.good)
    server.replace_pair(pki.renewed.cert_pem, pki.renewed.key_pem)
    deadline = time.monotonic() + 75
    while time.monotonic() < deadline and server.peer_certificate() != pki.renewed.der:
        time.sleep(1)
    assert server.peer_certificate() == pki.renewed.der
    assert "files changed" in server.log()


# -- startup --------------------------------------------------------------------------------

STARTUP_ERRORS = [
    pytest.param("expired", "expired on", id="expired"),
    pytest.param("mismatched", "does not match", id="mismatched"),
    pytest.param("missing-cert", "no such file", id="missing cert"),
    pytest.param("missing-key", "no such file", id="missing key"),
    pytest.param("unreadable", "permission denied", id="unreadable key"),
    pytest.param("garbage", "not a PEM", id="not PEM"),
    pytest.param("cert-only", "both", id="cert only"),
    pytest.param("key-only", "both", id="key only"),
    pytest.param("expired-env", "expired on", id="expired, from the environment"),
    pytest.param("directory", "is a directory", id="a directory as the certificate"),
    pytest.param("encrypted", "", id="a pass-phrase protected key"),  # wording: see below
]


@pytest.mark.parametrize("kind, fragment", STARTUP_ERRORS)
def test_bad_pair_fails_at_startup_with_one_line(make_server, pki, kind, fragment):
    server = make_server(start=False)
    tmp_path = server.workdir
    good_cert, good_key = pki.good.write(tmp_path, "good")
    env = None
    if kind in ("expired", "expired-env"):
        cert, key = pki.expired.write(tmp_path, "expired")
    elif kind == "mismatched":
        cert, key = pki.mismatched.write(tmp_path, "mismatched")
    elif kind == "missing-cert":
        cert, key = str(tmp_path / "nope.pem"), good_key
    elif kind == "missing-key":
        cert, key = good_cert, str(tmp_path / "nope.key")
    elif kind == "unreadable":
        cert, key = good_cert, good_key
        os.chmod(key, 0)
        if os.access(key, os.R_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): a chmod 000 file is "
                        "still readable, so 'unreadable' cannot be produced here")
    elif kind == "garbage":
        cert, key = str(tmp_path / "garbage.pem"), good_key
        Path(cert).write_text("this is not a certificate\n")
    elif kind == "directory":             # e.g. --tls-cert /etc/letsencrypt/live/example.com
        cert, key = str(tmp_path), good_key
    elif kind == "encrypted":
        cert, key = good_cert, str(tmp_path / "encrypted.key")
        Path(key).write_bytes(pki.good.encrypted_key_pem())
    else:
        cert, key = good_cert, good_key
    if kind == "cert-only":
        args = ["--tls-cert", cert]
    elif kind == "key-only":
        args = ["--tls-key", key]
    elif kind == "expired-env":
        args, env = [], {"TLS_CERT_FILE": cert, "TLS_KEY_FILE": key}
    else:
        args = ["--tls-cert", cert, "--tls-key", key]

    result = server.serve_once(*args, env=env)
    assert result.seconds < 10, f"took {result.seconds:.1f} s to fail"
    assert result.stdout.strip() == "", result.stdout
    line = one_error_line(result, fragment)
    assert line.startswith("oxsync: "), line
    if kind in ("expired", "expired-env"):
        expiry = pki.expired.cert.not_valid_after_utc.strftime("%Y-%m-%d")
        assert expiry in line, line


def test_a_pass_phrase_protected_key_is_named_as_such(make_server, pki):
    server = make_server(start=False)
    cert, _ = pki.good.write(server.workdir, "good")
    key = server.workdir / "encrypted.key"
    key.write_bytes(pki.good.encrypted_key_pem())
    line = one_error_line(server.serve_once("--tls-cert", cert, "--tls-key", str(key)),
                          "pass phrase")
    assert line.startswith("oxsync: ") and "not a PEM" not in line, line


def test_certificate_expiring_soon_starts_with_a_warning(make_tls, pki):
    server = make_tls(pki.soon, env={"METRICS_TOKEN": METRICS_TOKEN}, use_env=True)
    expires = pki.soon.cert.not_valid_after_utc
    warned = [line for line in server.log().splitlines()
              if "WARN" in line and "expires" in line]
    assert len(warned) == 1, server.log()
    assert expires.strftime("%Y-%m-%d") in warned[0]
    ready = server.request("GET", "/ready")
    assert ready.status == 200, ready
    stated = datetime.fromisoformat(ready.json["tlsCertificateExpiresAt"].replace("Z", "+00:00"))
    assert abs((stated - expires).total_seconds()) < 1, (stated, expires)
    metrics = server.request("GET", "/metrics",
                             headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert metrics.status == 200, metrics
    match = re.search(rb"^oxsync_tls_certificate_expiry_timestamp_seconds (\d+(?:\.\d+)?)$",
                      metrics.body, re.MULTILINE)
    assert match, metrics.body.decode()[-600:]
    assert abs(float(match.group(1)) - expires.timestamp()) < 1


def test_a_long_lived_certificate_starts_without_a_warning(shared, pki):
    assert not [line for line in shared.log().splitlines()
                if "WARN" in line and "expires" in line], shared.log()
    stated = shared.request("GET", "/ready").json["tlsCertificateExpiresAt"]
    assert stated.startswith(pki.good.cert.not_valid_after_utc.strftime("%Y-%m-%d"))


# -- admin over TLS, and the plain-HTTP redirect -------------------------------------------

def test_admin_cookies_are_secure_and_pages_carry_hsts(shared):
    cookies = cookies_of(AdminClient(shared).login())
    assert set(cookies) == {"oxsync_session", "oxsync_csrf"}, cookies
    for name, (_, attributes) in cookies.items():
        assert attributes.get("secure") is True, (name, attributes)
    page = shared.request("GET", "/admin")
    assert page.status == 200, page
    hsts = page.headers.get("Strict-Transport-Security")
    assert hsts and re.search(r"max-age=\d{6,}", hsts), hsts


def redirect_request(server, method: str, target: str, host: str | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.redirect_port, timeout=10)
    try:
        connection.putrequest(method, target, skip_host=host is not None)
        if host is not None:
            connection.putheader("Host", host)
        connection.putheader("Content-Length", "0")
        connection.endheaders()
        answer = connection.getresponse()
        return answer.status, answer.headers, answer.read()
    finally:
        connection.close()


def test_redirect_http_answers_308_to_https(shared, pki):
    port = shared.port
    target = "/v1/namespaces/team%2Fdefault/metadata?since=2026-12-01T10%3A00%3A00Z&x=%20y"
    for method in ("GET", "HEAD", "PUT", "POST"):
        status, headers, body = redirect_request(shared, method, target)
        assert status == 308, (method, status)
        assert headers["Location"] == f"https://127.0.0.1:{port}{target}", headers["Location"]
        assert body == b""
    status, headers, _ = redirect_request(shared, "GET", "/admin", host="sync.example.com:80")
    assert status == 308 and headers["Location"] == f"https://sync.example.com:{port}/admin"
    # Nothing else is served there: not even /health.
    status, headers, _ = redirect_request(shared, "GET", "/health")
    assert status == 308 and headers["Location"] == f"https://127.0.0.1:{port}/health"
    # Following the Location reaches the HTTPS server.
    location = urlsplit(headers["Location"])
    assert location.scheme == "https" and location.port == port
    followed = http.client.HTTPSConnection(location.hostname, location.port, timeout=10,
                                           context=pki.context())
    assert shared.request("GET", location.path, connection=followed).json["status"] == "ok"
    followed.close()
