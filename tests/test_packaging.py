"""Shipping files (issue 4): build_pyz.sh, Dockerfile, docker-compose.yml, .env.example.

Every test here runs the built archive, never only the module. No Docker engine
exists on the CI machines, so the Dockerfile is read and its exact CMD runs with
exactly its environment (paths rewritten into a temporary folder).
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import conftest
import pytest
import yaml
from conftest import TEST_KEY, free_port, ns_path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build_pyz.sh"
HEALTH = {"status": "ok", "service": "oxideterm-cloud-sync-server"}
SNAPSHOT_TYPE = "application/vnd.oxideterm.oxide"

# PROTOCOL.md section 9, plus the settings oxsync adds beyond the reference server.
CONTRACT_VARIABLES = [
    "LISTEN_ADDR", "DB_PATH", "ENCRYPTION_KEY", "ADMIN_PASSWORD", "ADMIN_USERNAME",
    "ADMIN_JWT_SECRET", "ADMIN_COOKIE_SECURE", "TRUST_PROXY_HEADERS",
    "SYNC_CORS_ALLOWED_ORIGINS", "MAX_BLOB_SIZE", "MAX_OBJECT_SIZE", "MIN_FREE_DISK_BYTES",
    "LOGIN_WINDOW_SECONDS", "LOGIN_LOCKOUT_SECONDS", "MAX_LOGIN_FAILURES",
    "DEFAULT_TOKEN_TTL_SECONDS", "OBJECT_RETENTION_SECONDS", "LOG_LEVEL",
]
EXTRA_VARIABLES = ["REQUEST_TIMEOUT_SECONDS", "MAX_CONNECTIONS", "LOG_FORMAT", "METRICS_TOKEN"]
SECRETS = ["ENCRYPTION_KEY", "ADMIN_PASSWORD", "ADMIN_JWT_SECRET", "METRICS_TOKEN"]
SOURCES = ["build_pyz.sh", "oxsync.py", "admin.html"]  # what the archive is built from


# -- helpers ------------------------------------------------------------------

def build(out_dir: Path, script: Path = BUILD, cwd: Path | None = None,
          env: dict | None = None) -> subprocess.CompletedProcess:
    """Run build_pyz.sh OUT_DIR from an unrelated working directory."""
    result = subprocess.run(["bash", str(script), str(out_dir)], cwd=cwd or out_dir.parent,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHON": sys.executable,
                                 "SOURCE_DATE_EPOCH": "", **(env or {})})
    assert result.returncode == 0, f"build_pyz.sh failed:\n{result.stdout}\n{result.stderr}"
    return result


def snapshot_sources(folder: Path) -> Path:
    """A copy of the build inputs, so a build never races an edit of the checkout."""
    folder.mkdir(parents=True)
    for name in SOURCES:
        if (ROOT / name).exists():
            shutil.copyfile(ROOT / name, folder / name)
    return folder


def get(port: int, path: str, timeout: float = 5) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


class Process:
    """One oxsync started by hand (not through the harness), output in a log file."""

    def __init__(self, command: list[str], cwd: Path, env: dict, port: int):
        self.port = port
        self.log_path = cwd / "oxsync.log"
        self.log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=self.log_file,
                                        stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"oxsync exited with {self.process.returncode}:\n"
                                     f"{self.log()}")
            try:
                if get(self.port, "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"oxsync did not answer /health on port {self.port}:\n{self.log()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()
        return self.process.returncode


@pytest.fixture
def processes():
    started: list[Process] = []

    def start(command, cwd, env, port) -> Process:
        process = Process(command, cwd, env, port)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
        assert "Traceback" not in process.log(), process.log()


def minimal_env(**extra: str) -> dict:
    """PATH and HOME only: nothing from the test environment that oxsync reads."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"), **extra}


@pytest.fixture(scope="module")
def pyz(tmp_path_factory) -> Path:
    """dist/oxsync.pyz built by build_pyz.sh into a temporary /app stand-in."""
    app = tmp_path_factory.mktemp("image") / "app"
    result = build(app, cwd=tmp_path_factory.mktemp("elsewhere"))
    archive = app / "oxsync.pyz"
    assert str(archive) in result.stdout, result.stdout
    assert hashlib.sha256(archive.read_bytes()).hexdigest() in result.stdout, result.stdout
    return archive


# -- Dockerfile reading ---------------------------------------------------------

def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """[(INSTRUCTION, arguments)] per build stage; continuations joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (and parser directives), also inside continuations
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        instruction = (pending + stripped).strip()
        pending = ""
        if not instruction:
            continue
        keyword, _, arguments = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        assert stages, f"instruction before FROM: {instruction}"
        stages[-1].append((keyword, arguments.strip()))
    return stages


def exec_form(arguments: str, what: str) -> list[str]:
    assert arguments.startswith("["), f"{what} must use the exec form (JSON array) so " \
        f"oxsync is PID 1 and gets SIGTERM from docker stop: {arguments}"
    command = json.loads(arguments)
    assert isinstance(command, list) and all(isinstance(part, str) for part in command)
    return command


def env_instruction(arguments: str) -> dict[str, str]:
    words = shlex.split(arguments)
    if "=" not in words[0]:  # legacy form: ENV KEY value with spaces
        key, _, value = arguments.partition(" ")
        return {key: value.strip()}
    return dict(word.split("=", 1) for word in words)


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages((ROOT / "Dockerfile").read_text())[-1]


def instructions(stage, keyword: str) -> list[str]:
    return [arguments for name, arguments in stage if name == keyword]


def healthcheck_command(stage) -> list[str]:
    (arguments,) = instructions(stage, "HEALTHCHECK")[-1:] or [""]
    assert arguments and arguments.upper() != "NONE", "the Dockerfile needs a HEALTHCHECK"
    match = re.fullmatch(r"(?:--\S+\s+)*CMD\s+(.*)", arguments, re.DOTALL | re.IGNORECASE)  # --interval=...
    assert match, arguments
    return exec_form(match.group(1).strip(), "HEALTHCHECK CMD")


class Rewriter:
    """Image paths -> temporary folders; the fixed port -> a free one; python -> this one."""

    def __init__(self, paths: dict[str, Path], port: int):
        self.paths, self.port = paths, port

    def path(self, value: str) -> str:
        for image_path, local in self.paths.items():
            if value == image_path or value.startswith(image_path + "/"):
                return str(local) + value[len(image_path):]
        return value

    def env_value(self, value: str) -> str:
        value = self.path(value)
        return re.sub(r":8730$", f":{self.port}", value)

    def command(self, command: list[str]) -> list[str]:
        program = sys.executable if command[0] in ("python", "python3") else command[0]
        return [program] + [self.path(part) for part in command[1:]]


# -- (a) the build ------------------------------------------------------------------

def test_build_is_reproducible(tmp_path):
    """Two builds of one tree, different file times and folders: the same bytes."""
    first_tree = snapshot_sources(tmp_path / "tree1")
    second_tree = tmp_path / "tree2"
    shutil.copytree(first_tree, second_tree)
    for number, path in enumerate(sorted(second_tree.iterdir())):
        os.utime(path, (1_700_000_000 + number * 7919, 1_700_000_000 + number * 7919))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = build(tmp_path / "out1", first_tree / "build_pyz.sh", cwd=elsewhere)
    second = build(tmp_path / "out2", second_tree / "build_pyz.sh", cwd=elsewhere)
    one = (tmp_path / "out1" / "oxsync.pyz").read_bytes()
    two = (tmp_path / "out2" / "oxsync.pyz").read_bytes()
    assert hashlib.sha256(one).hexdigest() == hashlib.sha256(two).hexdigest(), \
        (first.stdout, second.stdout)
    assert one == two
    # SOURCE_DATE_EPOCH is honoured, and only changes the timestamps
    build(tmp_path / "out3", first_tree / "build_pyz.sh", cwd=elsewhere,
          env={"SOURCE_DATE_EPOCH": "1767225600"})  # 2026-01-01
    with zipfile.ZipFile(tmp_path / "out3" / "oxsync.pyz") as zf:
        assert {info.date_time for info in zf.infolist()} == {(2026, 1, 1, 0, 0, 0)}
        with zipfile.ZipFile(tmp_path / "out1" / "oxsync.pyz") as reference:
            assert {n: zf.read(n) for n in zf.namelist()} == \
                {n: reference.read(n) for n in reference.namelist()}


def test_archive_holds_exactly_three_files_with_fixed_dates_and_modes(pyz):
    data = pyz.read_bytes()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    assert pyz.stat().st_mode & 0o111 == 0o111, oct(pyz.stat().st_mode)
    with zipfile.ZipFile(pyz) as zf:
        names = zf.namelist()
        assert names == ["__main__.py", "admin.html", "oxsync.py"], names
        assert zf.testzip() is None
        for info in zf.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0), info
            assert info.external_attr >> 16 & 0o777 == 0o644, oct(info.external_attr)
            assert info.compress_type == zipfile.ZIP_DEFLATED
        main = zf.read("__main__.py").decode()
        assert "import oxsync" in main and "sys.exit(oxsync.main())" in main
        source = zf.read("oxsync.py")
    assert b"def main(" in source and b"SERVICE_NAME" in source


def test_build_warns_without_admin_page(tmp_path):
    tree = snapshot_sources(tmp_path / "tree")
    (tree / "admin.html").unlink(missing_ok=True)
    result = build(tmp_path / "out", tree / "build_pyz.sh", cwd=tmp_path)
    assert "admin.html" in result.stderr and "warning" in result.stderr.lower(), result.stderr
    with zipfile.ZipFile(tmp_path / "out" / "oxsync.pyz") as zf:
        assert zf.namelist() == ["__main__.py", "oxsync.py"]


def test_build_default_output_is_dist_next_to_script(tmp_path):
    tree = snapshot_sources(tmp_path / "tree")
    result = subprocess.run(["bash", str(tree / "build_pyz.sh")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHON": sys.executable, "OUT_DIR": "",
                                 "SOURCE_DATE_EPOCH": ""})
    assert result.returncode == 0, result.stderr
    assert (tree / "dist" / "oxsync.pyz").is_file()
    assert re.search(r"sha256 [0-9a-f]{64}", result.stdout), result.stdout


# -- (b) --help and --version from anywhere -----------------------------------------

def test_help_and_version_from_another_directory(pyz, tmp_path):
    version = subprocess.run([sys.executable, str(pyz), "--version"], cwd=tmp_path,
                             env=minimal_env(), capture_output=True, text=True, timeout=30)
    assert version.returncode == 0, version.stderr
    assert re.fullmatch(r"oxsync \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout
    shown = subprocess.run([sys.executable, str(pyz), "--help"], cwd=tmp_path,
                           env=minimal_env(), capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: oxsync"), shown.stdout
    for command in ("serve", "token", "namespace", "admin"):
        assert command in shown.stdout
    # the shebang and executable bit: ./oxsync.pyz runs by itself
    direct = subprocess.run([str(pyz), "--version"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=30)
    assert direct.returncode == 0 and direct.stdout == version.stdout, direct.stderr
    assert not list(tmp_path.iterdir()), "running the archive left files behind"


# -- (c) the server from the archive --------------------------------------------------

def test_server_from_archive_round_trips_a_blob(pyz, make_server, monkeypatch):
    monkeypatch.setattr(conftest, "OXSYNC", [sys.executable, str(pyz)])
    server = make_server(env={"ENCRYPTION_KEY": TEST_KEY})  # cryptography from inside the zip
    token = server.create_token(namespace="team/*")
    assert re.fullmatch(r"\S{20,}", token), token
    snapshot = os.urandom(4096)
    put = server.request("PUT", ns_path("team/default", "blob"), body=snapshot, token=token,
                         headers={"Content-Type": SNAPSHOT_TYPE, "If-None-Match": "*",
                                  "X-OxideTerm-Revision": "rev-1",
                                  "X-OxideTerm-Device-Id": "packaging-test"})
    assert put.status == 200, put
    assert put.json["ok"] is True
    got = server.request("GET", ns_path("team/default", "blob"), token=token)
    assert got.status == 200, got
    assert got.body == snapshot
    assert got.headers["ETag"].strip('"') == put.json["etag"]
    assert server.request("GET", ns_path("team/default", "blob")).status == 401
    ready = server.request("GET", "/ready")
    assert ready.json["encryptionEnabled"] is True, ready


@pytest.mark.parametrize("spelling", ["absolute", "relative", "dotted"])
def test_admin_page_is_served_from_inside_the_archive_however_it_is_named(pyz, make_server, monkeypatch, tmp_path, spelling):
    """GET /admin reads admin.html from inside the archive, however the archive is named.

    Python keeps '.' and '..' in the archive's path (sys.path[0], zipimporter.archive),
    as in `python3 ./dist/oxsync.pyz`, `./oxsync.pyz` or `python3 ../oxsync.pyz`.
    """
    with zipfile.ZipFile(pyz) as zf:
        page = zf.read("admin.html")
    workdir = tmp_path / "run"
    workdir.mkdir()
    archive = {"absolute": str(pyz), "relative": os.path.relpath(pyz, workdir),
               "dotted": f"{pyz.parent}/./{pyz.name}"}[spelling]
    monkeypatch.setattr(conftest, "OXSYNC", [sys.executable, archive])
    server = make_server(env={"ADMIN_PASSWORD": "packaging-test-password"}, workdir=workdir)
    answer = server.request("GET", "/admin")
    assert answer.status == 200, answer
    assert answer.headers["Content-Type"].startswith("text/html"), answer.headers
    assert answer.body == page


# -- (d) the Dockerfile's CMD with the Dockerfile's environment -------------------------

def test_dockerfile_command_serves_health(pyz, tmp_path, processes):
    stage = final_stage()
    command = exec_form(instructions(stage, "ENTRYPOINT")[-1], "ENTRYPOINT") \
        if instructions(stage, "ENTRYPOINT") else []
    command += exec_form(instructions(stage, "CMD")[-1], "CMD")
    image_env: dict[str, str] = {}
    for arguments in instructions(stage, "ENV"):
        image_env.update(env_instruction(arguments))
    workdir = (instructions(stage, "WORKDIR") or ["/"])[-1]

    assert "/app/oxsync.pyz" in command, command
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    rewrite = Rewriter({"/app": pyz.parent, "/data": data}, port)
    run = rewrite.command(command)
    env = minimal_env(**{key: rewrite.env_value(value) for key, value in image_env.items()})
    assert env["LISTEN_ADDR"].endswith(f":{port}"), env
    cwd = Path(rewrite.path(workdir))
    assert cwd == pyz.parent or cwd.is_dir(), workdir

    server = processes(run, cwd, env, port)
    server.wait_healthy()
    status, content_type, body = get(port, "/health")
    assert status == 200 and content_type.startswith("application/json")
    assert json.loads(body) == HEALTH
    assert Path(env["DB_PATH"]).is_file(), "DB_PATH from the Dockerfile was not used"
    assert Path(env["DB_PATH"]).parent == data

    check = rewrite.command(healthcheck_command(stage))
    healthy = subprocess.run(check, env=env, capture_output=True, text=True, timeout=15)
    assert healthy.returncode == 0, healthy.stderr

    assert server.stop() == 0, f"docker stop (SIGTERM) should exit 0:\n{server.log()}"
    unhealthy = subprocess.run(check, env=env, capture_output=True, text=True, timeout=15)
    assert unhealthy.returncode != 0, "the HEALTHCHECK passes with no server running"


# -- (e) what the Dockerfile promises --------------------------------------------------

def test_dockerfile_runtime_settings():
    stages = dockerfile_stages((ROOT / "Dockerfile").read_text())
    stage = stages[-1]
    assert instructions(stage, "FROM")[0].split()[0].startswith("python:3"), stage[0]

    users = instructions(stage, "USER")
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert any("10001" in run and user in run for run in instructions(stage, "RUN")), \
        "create the non-root user with the fixed uid 10001"

    volumes = [v for arguments in instructions(stage, "VOLUME")
               for v in (json.loads(arguments) if arguments.startswith("[")
                         else arguments.split())]
    assert "/data" in volumes, volumes
    exposed = [port for arguments in instructions(stage, "EXPOSE") for port in arguments.split()]
    assert "8730" in exposed or "8730/tcp" in exposed, exposed
    check = healthcheck_command(stage)
    assert check[0] in ("python", "python3") and "/health" in " ".join(check), check

    # /data exists and belongs to the user before VOLUME freezes it
    keywords = [name for name, _ in stage]
    chown = [i for i, (name, arguments) in enumerate(stage)
             if name == "RUN" and "chown" in arguments and "/data" in arguments]
    assert chown and chown[0] < keywords.index("VOLUME"), "chown /data before VOLUME /data"

    runs = " ".join(instructions(stage, "RUN"))
    assert "pip install" in runs and "--no-cache-dir" in runs and "cryptography" in runs
    assert exec_form(instructions(stage, "CMD")[-1], "CMD")[1:] == ["/app/oxsync.pyz", "serve"]
    env: dict[str, str] = {}
    for arguments in instructions(stage, "ENV"):
        env.update(env_instruction(arguments))
    assert env.get("DB_PATH") == "/data/sync.db" and env.get("LISTEN_ADDR") == "0.0.0.0:8730"
    # config only through the contract's variables: no flags baked into the command
    assert not [part for part in exec_form(instructions(stage, "CMD")[-1], "CMD")
                if part.startswith("--")]

    if len(stages) > 1:  # the pyz is built by build_pyz.sh in an earlier stage
        assert any("build_pyz.sh" in a for s in stages[:-1] for a in instructions(s, "RUN"))
        assert any(a.startswith("--from=") and "oxsync.pyz" in a
                   for a in instructions(stage, "COPY"))


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if fnmatch.fnmatch(path, pattern.lstrip("!").strip("/")):
            excluded = not negate
    return excluded


def test_build_context_holds_sources_and_no_secrets():
    ignore = ROOT / ".dockerignore"
    patterns = [line.strip() for line in ignore.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for needed in SOURCES:
        assert not dockerignore_excludes(patterns, needed), f"{needed} left out of the build"
    for secret in (".env", "sync.db", "dist/oxsync.pyz", ".git/config"):
        assert dockerignore_excludes(patterns, secret), f"{secret} sent to the Docker build"


# -- (f) docker-compose.yml and .env.example ------------------------------------------

def test_compose_file_builds_the_image_and_keeps_data_in_a_named_volume():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["oxsync"]
    assert service["build"] in (".", {"context": "."}), service["build"]
    assert service.get("image"), "name the image"
    assert service["restart"] == "unless-stopped"
    assert "8730:8730" in [str(port) for port in service["ports"]]
    env_files = service["env_file"]
    assert ".env" in ([env_files] if isinstance(env_files, str) else env_files)
    mounts = [str(volume).split(":") for volume in service["volumes"]]
    named = [source for source, target, *_ in mounts if target == "/data"]
    assert named and named[0] in (compose.get("volumes") or {}), mounts


def test_scale_out_compose_file_runs_two_processes_behind_the_tested_nginx_config():
    """docker-compose.postgres.yml: PostgreSQL, two oxsync processes made alike, and nginx
    with deploy/nginx-scaleout.conf (the file test_scaleout_proxy.py runs) in front."""
    compose = yaml.safe_load((ROOT / "docker-compose.postgres.yml").read_text())
    services = compose["services"]
    processes = {name: service for name, service in services.items()
                 if name.startswith("oxsync")}
    assert sorted(processes) == ["oxsync1", "oxsync2"], sorted(services)
    first, second = processes.values()
    assert first == second, "the two processes must be configured alike"
    environment = first["environment"]
    for required in ("DATABASE_URL", "ADMIN_JWT_SECRET"):  # refused, not defaulted, if unset
        assert environment[required].startswith(f"${{{required}:?"), environment[required]
    assert environment["TRUST_PROXY_HEADERS"] == "true"
    assert "/ready" in " ".join(first["healthcheck"]["test"])
    assert first["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "ports" not in first, "only nginx is published: the processes trust its headers"

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    data = [str(volume).split(":")[0] for volume in postgres["volumes"]]
    assert data[0] in compose["volumes"], postgres["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    nginx = services["nginx"]
    assert [str(port) for port in nginx["ports"]] == ["8730:80"]
    config = [str(volume).split(":")[0] for volume in nginx["volumes"]]
    assert config == ["./deploy/nginx-scaleout.conf"], nginx["volumes"]
    upstreams = re.findall(r"^\s*server\s+([\w.-]+):(\d+)\s",
                           (ROOT / "deploy" / "nginx-scaleout.conf").read_text(), re.M)
    assert sorted(upstreams) == [(name, "8730") for name in sorted(processes)], upstreams


def test_scale_out_health_check_asks_the_port_of_listen_addr(server):
    """The compose file's health check runs in the oxsync container, where LISTEN_ADDR may
    name another port than 8730: it must ask that one (and fail when nothing answers)."""
    compose = yaml.safe_load((ROOT / "docker-compose.postgres.yml").read_text())
    test = compose["services"]["oxsync1"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python", test
    check = [sys.executable] + test[2:]
    env = minimal_env(LISTEN_ADDR=f"0.0.0.0:{server.port}")
    healthy = subprocess.run(check, env=env, capture_output=True, text=True, timeout=15)
    assert healthy.returncode == 0, healthy.stderr
    env["LISTEN_ADDR"] = f"0.0.0.0:{free_port()}"
    unhealthy = subprocess.run(check, env=env, capture_output=True, text=True, timeout=15)
    assert unhealthy.returncode != 0


def read_env_example() -> list[tuple[str, str, list[str]]]:
    """(KEY, value, comment lines just above it) for every KEY=VALUE line."""
    entries, comments = [], []
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("#"):
            comments.append(line)
        elif line.strip():
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), line
            entries.append((key, value, comments))
            comments = []
        else:
            comments = []
    return entries


def archive_options(pyz: Path) -> dict[str, str]:
    """{ENV: default} of every `serve` setting, read from the built archive."""
    probe = ("import json, sys; sys.path.insert(0, sys.argv[1]); import oxsync; "
             "print(json.dumps({o.env: o.default for o in oxsync.SERVER_OPTIONS}))")
    result = subprocess.run([sys.executable, "-c", probe, str(pyz)], capture_output=True,
                            text=True, timeout=30, env=minimal_env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_env_example_lists_every_setting(pyz):
    entries = read_env_example()
    keys = [key for key, _, _ in entries]
    assert len(keys) == len(set(keys)), f"listed twice: {keys}"
    values = {key: value for key, value, _ in entries}
    missing = [name for name in CONTRACT_VARIABLES + EXTRA_VARIABLES if name not in values]
    assert not missing, f".env.example lacks {missing}"
    options = archive_options(pyz)
    undocumented = sorted(set(options) - set(values))
    assert not undocumented, f"oxsync reads {undocumented}; add them to .env.example"
    unknown = sorted(set(values) - set(options) - set(EXTRA_VARIABLES))
    assert not unknown, f".env.example sets {unknown}, which oxsync does not read"
    for key, value, comments in entries:
        assert comments, f"{key} needs a comment line above it"
        assert " #" not in value, f"{key}: no comment after a value (it would be read as data)"
        if key in SECRETS:
            assert value == "", f"{key}: leave secrets empty in the example"
        elif key in options:
            assert value == options[key], f"{key}={value} but oxsync's default is {options[key]}"
    assert "python3 -c 'import secrets; print(secrets.token_hex(32))'" in \
        (ROOT / ".env.example").read_text()


@pytest.mark.parametrize("secrets_filled", [False, True], ids=["as-shipped", "secrets-filled"])
def test_serve_accepts_env_example(pyz, tmp_path, processes, secrets_filled):
    """`oxsync serve` with no flags, configured only by .env.example copied to ./.env."""
    port = free_port()
    db_path = tmp_path / "state" / "sync.db"
    filled = {"LISTEN_ADDR": f"127.0.0.1:{port}", "DB_PATH": str(db_path)}
    if secrets_filled:  # made the way the file says: secrets.token_hex(32)
        import secrets
        filled.update({name: secrets.token_hex(32) for name in SECRETS})
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        key = line.partition("=")[0]
        lines.append(f"{key}={filled[key]}" if not line.startswith("#") and key in filled
                     else line)
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")

    server = processes([sys.executable, str(pyz)], tmp_path, minimal_env(), port)
    server.wait_healthy()
    status, _, body = get(port, "/health")
    assert status == 200 and json.loads(body) == HEALTH
    assert db_path.is_file(), "DB_PATH from ./.env was not used"
    status, _, body = get(port, "/ready")
    ready = json.loads(body)
    assert status == 200, ready
    assert ready["encryptionEnabled"] is secrets_filled, ready
    assert ready["adminEnabled"] is secrets_filled, ready
    assert ready["jwtSecretPersistent"] is secrets_filled, ready
    assert server.stop() == 0, server.log()
