"""Throwaway PostgreSQL servers for the tests (Debian's `postgresql` package).

The suite's databases live on one shared server: the one OXSYNC_TEST_POSTGRES_URL
names (a superuser URL with a password; .ci/run starts one for the whole run and all
pytest-xdist workers share it), or else a cluster this process (each xdist worker) starts
on first use in a temporary folder and stops at exit. Database names are random, so
workers sharing a server never collide.

A test that stops the database under load starts a Cluster of its own, so no other test
notices; start() brings it back on the same port with the same data:

    cluster = _postgres.Cluster()              # removed at exit at the latest
    url = _postgres.new_database(cluster.url)
    ...; cluster.stop(); ...; cluster.start(); ...
    cluster.remove()

Every URL handed to oxsync carries a password (password(url) gives it back), so that its
masking is tested too; the password has a '%' in it, on purpose. Clusters listen on
127.0.0.1 only, with scram-sha-256 on TCP and trust on their Unix socket; as root they
run as the `postgres` user (PostgreSQL refuses root).

Self-check by hand: python3 tests/_postgres.py
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from urllib.parse import quote, unquote, urlsplit, urlunsplit

PASSWORD = "pg%secret-8v"  # a '%' on purpose: it must survive URL quoting and masking


def binary(name: str) -> str | None:
    """initdb, pg_ctl, postgres: on PATH, or in Debian's /usr/lib/postgresql/N/bin
    (the newest N installed)."""
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> int:
        number = path.split("/")[-3]
        return int(number) if number.isdigit() else 0

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version)
    return candidates[-1] if candidates else None


def password(url: str | None = None) -> str:
    """The password in a URL (by default the shared server's): what no log may show."""
    return unquote(urlsplit(url or server_url()).password or "")


def with_database(url: str, name: str) -> str:
    """The same server, user and options; another database."""
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(name, safe="")))


def available() -> str | None:
    """None when PostgreSQL can be used here, else why not."""
    if os.environ.get("OXSYNC_TEST_POSTGRES_URL"):
        return None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if binary("initdb") is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: then it runs as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] + command if os.geteuid() == 0 else command


class Cluster:
    """initdb into a temporary folder; listens on 127.0.0.1 only, password logins."""

    def __init__(self):
        self._pid = os.getpid()  # a forked child never removes its parent's cluster
        self.directory = tempfile.mkdtemp(prefix="oxsync-pg-")
        self.data = os.path.join(self.directory, "data")
        self.port = free_port()
        if os.geteuid() == 0:
            os.chown(self.directory, pwd.getpwnam("postgres").pw_uid, -1)
        password_file = os.path.join(self.directory, "password")
        with open(password_file, "w") as file:
            file.write(PASSWORD)
        if os.geteuid() == 0:
            os.chown(password_file, pwd.getpwnam("postgres").pw_uid, -1)
        self._run([binary("initdb"), "-D", self.data, "-U", "postgres", "-E", "UTF8",
                   "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256",
                   f"--pwfile={password_file}", "--no-sync", "--no-instructions"], "initdb")
        os.unlink(password_file)
        self.url = (f"postgresql://postgres:{quote(PASSWORD, safe='')}@127.0.0.1:"
                    f"{self.port}/postgres")
        atexit.register(self.remove)
        self.start()

    def _run(self, command: list[str], what: str, check: bool = True):
        # In its own folder: the postgres user may not be allowed into the caller's.
        result = subprocess.run(as_server_user(command), cwd=self.directory, text=True,
                                capture_output=True, stdin=subprocess.DEVNULL, timeout=120,
                                env={**os.environ, "LC_ALL": "C.UTF-8"})
        if check and result.returncode != 0:
            raise RuntimeError(f"{what} failed ({result.returncode}): {result.stdout}"
                               f"{result.stderr}{self.log()}")
        return result

    def log(self) -> str:
        try:
            with open(os.path.join(self.directory, "log"), errors="replace") as file:
                return file.read()[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        """Start (again): the same port, the same data; returns once it accepts logins."""
        options = (f"-h 127.0.0.1 -p {self.port} -k {self.directory} -F "
                   f"-c max_connections=300")
        self._run([binary("pg_ctl"), "-D", self.data, "-o", options, "-l",
                   os.path.join(self.directory, "log"), "-w", "-t", "60", "start"],
                  f"starting PostgreSQL on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        """fast: sessions are ended, everything committed stays; immediate: like a crash
        (the next start recovers from the WAL)."""
        self._run([binary("pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop"],
                  "stopping PostgreSQL", check=False)

    def remove(self) -> None:
        if os.getpid() != self._pid or not os.path.isdir(self.directory):
            return
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


_shared: list[str] = []


def server_url() -> str:
    """The superuser URL of the shared server (started on first use)."""
    if not _shared:
        url = os.environ.get("OXSYNC_TEST_POSTGRES_URL")
        if not url:
            cluster = Cluster()
            atexit.register(cluster.remove)
            url = cluster.url
        _shared.append(url)
    return _shared[0]


def new_database(url: str | None = None) -> str:
    """A fresh, empty database, owned by the URL's user -> its postgresql:// URL."""
    import psycopg
    admin = url or server_url()
    name = f"oxsync_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as db:
        db.execute(f"CREATE DATABASE {name}")
    return with_database(admin, name)


def database_name(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/"))


def clone_database(url: str, origin: str, name: str) -> None:
    """Make database `name` on url's server (dropped first if it exists) a copy of
    `origin`. Nobody may be connected to `origin`."""
    import psycopg
    with psycopg.connect(with_database(url, "postgres"), autocommit=True,
                         connect_timeout=10) as db:
        db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        db.execute(f"CREATE DATABASE {name} TEMPLATE {origin}")


def wait_until_accepting(url: str, timeout: float = 15) -> None:
    import psycopg
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


if __name__ == "__main__":  # the self-check: python3 tests/_postgres.py
    import psycopg

    first, second = new_database(), new_database()
    assert first != second and password(first) and password(first) == password()
    for url in (first, second):
        with psycopg.connect(url) as db:
            print(db.execute("SELECT current_database(), current_user").fetchone())
    cluster = Cluster()
    url = new_database(cluster.url)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE kept (value TEXT)")
        db.execute("INSERT INTO kept VALUES ('committed before the stop')")
    for mode in ("fast", "immediate"):
        cluster.stop(mode)
        try:
            psycopg.connect(url, connect_timeout=2).close()
            raise AssertionError("connected to a stopped server")
        except psycopg.OperationalError:
            pass
        cluster.start()
        with psycopg.connect(url) as db:
            assert db.execute("SELECT value FROM kept").fetchall() == \
                [("committed before the stop",)], mode
    cluster.remove()
    print("ok", first.replace(quote(password(first), safe=""), "***"))
