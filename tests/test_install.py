"""Installing as Python users expect (issue 15): `pip install .` into a fresh venv gives an
`oxsync` command, the installed server finds its admin page under share/oxsync, and
without the extras it syncs on SQLite with the standard library alone; a setting that
needs a missing package gets one line naming the pip command.

The checkout's files are copied first, so the build (setuptools writes build/ and
*.egg-info/ beside the sources) never touches the checkout. Offline when this Python has
setuptools >= 77 (requirements-dev.txt): the wheel is built here without build isolation
and installed into the venv without an index. Otherwise the venv's pip builds it the
ordinary way, which fetches setuptools from PyPI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TEST_KEY, OxsyncServer, ns_path, one_error_line

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
    assert sorted(meta["extras"]) == ["encryption", "postgres", "reference-import"]
    requires = " ".join(meta["requires"])
    assert 'cryptography; extra == "encryption"' in requires, requires
    assert 'psycopg[binary]; extra == "postgres"' in requires, requires
    assert 'xxhash; extra == "reference-import"' in requires, requires
    assert meta["python"] == ">=3.11"


def installed_server(venv, workdir: Path, **env: str) -> OxsyncServer:
    """A server run by the venv's `oxsync` command, in a clean environment (the venv has
    neither cryptography nor psycopg: oxsync was installed without its extras)."""
    workdir.mkdir()
    server = OxsyncServer(workdir)
    server.command = [str(venv / "bin" / "oxsync")]
    server.env = clean_env(**env)
    return server


def test_installed_server_serves_the_admin_page_and_syncs_on_sqlite(venv, tmp_path):
    installed = venv / "share" / "oxsync" / "admin.html"
    assert installed.is_file(), "admin.html was not installed under share/oxsync"
    page = (ROOT / "admin.html").read_bytes()
    assert installed.read_bytes() == page
    # No admin.html in the working folder or beside the installed module.
    server = installed_server(venv, tmp_path / "run", ADMIN_PASSWORD=PASSWORD).start()
    try:
        answer = server.request("GET", "/admin")
        assert answer.status == 200, answer
        assert answer.headers["Content-Type"].startswith("text/html")
        assert answer.body == page
        # The standard library alone is enough for sync on SQLite.
        token = server.create_token()
        stored = server.request("PUT", ns_path("install/check", "metadata"), token=token,
                                body={"format": "structured-v2", "revision": "r1"})
        assert stored.status == 200, stored
        read = server.request("GET", ns_path("install/check", "metadata"), token=token)
        assert read.json["revision"] == "r1" and read.json["etag"] == stored.json["etag"]
    finally:
        assert server.stop() == 0, server.log()
    server.assert_log_clean()


def test_an_encryption_key_without_cryptography_is_one_line_naming_the_pip_command(
        venv, tmp_path):
    server = installed_server(venv, tmp_path / "run", ENCRYPTION_KEY=TEST_KEY)
    one_error_line(server.serve_once(), "ENCRYPTION_KEY", "cryptography",
                   "pip install cryptography", code=2)
    assert not server.db_path.exists(), "a store was created for a server that cannot start"


@pytest.mark.parametrize("command", [["serve"], ["token", "list"], ["gc"]],
                         ids=lambda command: "-".join(command))
def test_a_database_url_without_psycopg_is_one_line_naming_the_pip_command(
        venv, tmp_path, command):
    server = installed_server(venv, tmp_path / "run")
    server.database_url = "postgresql://oxsync:pw-never-shown@127.0.0.1:1/oxsync"
    result = server.cli(*command, check=False)
    line = one_error_line(result, "psycopg", "pip install 'psycopg[binary]'", code=2)
    assert "pw-never-shown" not in result.stdout + line
