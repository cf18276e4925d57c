"""Installing as Python users expect (issue 15): `pip install .` into a fresh venv gives an
`oxsync` command, and the installed server finds its admin page under share/oxsync.

The checkout's files are copied first, so the build (setuptools writes build/ and
*.egg-info/ beside the sources) never touches the checkout. Offline when this Python has
setuptools >= 77 (requirements-dev.txt): the wheel is built here without build isolation
and installed into the venv without an index. Otherwise the venv's pip builds it the
ordinary way, which fetches setuptools from PyPI.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port

SOURCES = ["pyproject.toml", "README.md", "LICENSE", "oxsync.py", "admin.html"]
PASSWORD = "install-test-password"


def run(command: list, **options) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                            timeout=120, **options)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n" \
        f"{result.stdout}\n{result.stderr}"
    return result


def clean_env(**extra: str) -> dict:
    """Nothing from the test environment that pip or oxsync reads (no PYTHONPATH)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1", **extra}


def modern_setuptools() -> bool:
    try:
        from importlib.metadata import version
        return int(version("setuptools").split(".")[0]) >= 77
    except Exception:
        return False


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with the checkout installed (without dependencies)."""
    missing = [name for name in SOURCES if not (ROOT / name).is_file()]
    assert not missing, f"not in the checkout: {missing}"
    base = tmp_path_factory.mktemp("install")
    source = base / "src"
    source.mkdir()
    for name in SOURCES:
        shutil.copyfile(ROOT / name, source / name)
    target = base / "venv"
    run([sys.executable, "-m", "venv", target], env=clean_env())
    python = target / "bin" / "python"
    if modern_setuptools():
        wheels = base / "wheels"
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", wheels, source], cwd=base, env=clean_env())
        (wheel,) = wheels.glob("oxsync-*.whl")
        run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
            cwd=base, env=clean_env())
    else:
        run([python, "-m", "pip", "install", "-q", "--no-deps", source], cwd=base,
            env=clean_env())
    return target


def source_version() -> str:
    return re.search(r'^VERSION = "([^"]+)"', (ROOT / "oxsync.py").read_text(), re.M).group(1)


def test_oxsync_command_and_version(venv, tmp_path):
    command = venv / "bin" / "oxsync"
    assert command.is_file(), sorted(path.name for path in (venv / "bin").iterdir())
    shown = run([command, "--version"], cwd=tmp_path, env=clean_env())
    assert shown.stdout == f"oxsync {source_version()}\n", shown.stdout
    helped = run([command, "--help"], cwd=tmp_path, env=clean_env())
    assert helped.stdout.startswith("usage: oxsync"), helped.stdout
    # the module is the installed one, not the checkout's
    where = run([venv / "bin" / "python", "-c", "import oxsync; print(oxsync.__file__)"],
                cwd=tmp_path, env=clean_env())
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout


def test_metadata_has_the_extras(venv, tmp_path):
    script = ("import json; from importlib.metadata import metadata as m; d = m('oxsync'); "
              "print(json.dumps({'version': d['Version'], 'license': d['License-Expression'], "
              "'extras': d.get_all('Provides-Extra'), 'requires': d.get_all('Requires-Dist'), "
              "'python': d['Requires-Python']}))")
    meta = json.loads(run([venv / "bin" / "python", "-c", script], cwd=tmp_path,
                          env=clean_env()).stdout)
    assert meta["version"] == source_version()
    assert meta["license"] == "AGPL-3.0-only"
    assert sorted(meta["extras"]) == ["encryption", "postgres"]
    requires = " ".join(meta["requires"])
    assert 'cryptography; extra == "encryption"' in requires, requires
    assert 'psycopg[binary]; extra == "postgres"' in requires, requires
    assert meta["python"] == ">=3.11"


def test_installed_server_serves_the_admin_page(venv, tmp_path):
    installed = venv / "share" / "oxsync" / "admin.html"
    assert installed.is_file(), "admin.html was not installed under share/oxsync"
    page = (ROOT / "admin.html").read_bytes()
    assert installed.read_bytes() == page
    workdir = tmp_path / "run"  # no admin.html here or beside the installed module
    workdir.mkdir()
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [str(venv / "bin" / "oxsync"), "serve", "--listen", f"127.0.0.1:{port}",
             "--db-path", str(tmp_path / "data" / "sync.db")],
            cwd=workdir, env=clean_env(ADMIN_PASSWORD=PASSWORD), stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        status, content_type, body = None, "", b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert server.poll() is None, log_path.read_text()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/admin")
                response = connection.getresponse()
                status, content_type, body = (response.status,
                                              response.getheader("Content-Type", ""),
                                              response.read())
                connection.close()
                break
            except OSError:
                time.sleep(0.05)
        assert status == 200, (status, body[:200], log_path.read_text())
        assert content_type.startswith("text/html"), content_type
        assert body == page
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(15) == 0, log_path.read_text()
        finally:
            if server.poll() is None:
                server.kill()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()
