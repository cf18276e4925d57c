"""The operator CLI and configuration (PROTOCOL.md 2, 8, 9)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re

import pytest
from conftest import (db_rows, ns_path, object_path, one_error_line, run_oxsync,
                      running_server)

NS = "team/default"


# -- helpers ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory, store_kind):
    """A running server whose database the token commands share."""
    with running_server(tmp_path_factory.mktemp("cli"), token=False,
                        store_kind=store_kind) as server:
        yield server


def token_list(server) -> list[dict]:
    return json.loads(server.cli("token", "list", "--json").stdout)


def commands_in(help_text: str) -> list[str]:
    """The sub-commands an argparse help lists under its positional argument."""
    block = help_text.split("positional arguments:", 1)[-1].split("options:", 1)[0]
    return re.findall(r"^    (\w[\w-]*)", block, re.MULTILINE)


def put_blob(server, token, data, namespace=NS):
    return server.request("PUT", ns_path(namespace, "blob"), data,
                          {"X-OxideTerm-Revision": "r"}, token=token)


# -- help and version --------------------------------------------------------------------------

def test_every_command_and_subcommand_has_help():
    top = run_oxsync("--help")
    assert top.returncode == 0 and top.stdout.startswith("usage:"), top
    commands = commands_in(top.stdout)
    assert {"serve", "token", "namespace", "admin"} <= set(commands), commands
    invocations = [()] + [(command,) for command in commands]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        helps = dict(zip(invocations, pool.map(lambda words: run_oxsync(*words, "--help"),
                                               invocations)))
        nested = {}
        for (command,), result in ((k, v) for k, v in helps.items() if k):
            if "ACTION" in result.stdout.split("\n", 1)[0]:
                nested[command] = commands_in(result.stdout)
        expected = {"token": {"create", "list", "enable", "disable", "rotate", "delete"},
                    "namespace": {"list", "create", "delete", "restore", "purge"},
                    "admin": {"set-password"}}
        for command, actions in expected.items():
            assert actions <= set(nested.get(command, ())), (command, nested.get(command))
        deeper = [(command, action) for command, actions in nested.items()
                  for action in actions]
        helps.update(zip(deeper, pool.map(lambda words: run_oxsync(*words, "--help"), deeper)))
    for words, result in helps.items():
        assert result.returncode == 0, (words, result.stderr)
        assert result.stdout.startswith("usage: oxsync"), (words, result.stdout[:200])
        assert "Traceback" not in result.stderr
    serve_help = helps[("serve",)].stdout
    for flag in ("--listen", "--db-path", "--encryption-key", "--max-blob-size",
                 "--sync-cors-allowed-origins", "--log-level", "--admin-password"):
        assert flag in serve_help, flag


def test_version_prints_the_version_number():
    result = run_oxsync("--version")
    assert result.returncode == 0, result
    assert re.fullmatch(r"oxsync \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


# -- tokens --------------------------------------------------------------------------------------

def test_token_create_prints_only_the_secret(shared):
    result = shared.cli("token", "create", "--name", "laptop", "--namespace", "team/*",
                        "--permissions", "read")
    secret = result.stdout.strip()
    assert result.stdout == secret + "\n"
    assert secret.startswith("oxs_") and len(secret) >= 40
    assert re.fullmatch(r"[A-Za-z0-9_\-]+", secret)
    assert secret not in result.stderr
    token_id = shared.token_id("laptop")
    assert token_id in result.stderr and "laptop" in result.stderr
    # the server (running on the same database) accepts it at once, as configured
    assert shared.request("GET", ns_path(NS, "metadata"), token=secret).status == 200
    assert shared.request("GET", ns_path("other", "metadata"), token=secret).status == 403
    assert shared.request("PUT", ns_path(NS, "metadata"), b'{"revision": "r"}',
                          token=secret).status == 403
    second = shared.create_token(name="laptop-2")
    assert second != secret


def test_token_list_never_shows_secrets(shared):
    secrets = [shared.create_token(name=f"listed-{i}", permissions=p)
               for i, p in enumerate(("read", "write", "read,write"))]
    table = shared.cli("token", "list")
    listing = shared.cli("token", "list", "--json")
    tokens = [t for t in json.loads(listing.stdout) if t["name"].startswith("listed-")]
    assert [t["name"] for t in tokens] == ["listed-0", "listed-1", "listed-2"]
    assert [t["permissions"] for t in tokens] == [["read"], ["write"], ["read", "write"]]
    for token in tokens:
        assert token["id"] in table.stdout and token["name"] in table.stdout
        assert token["enabled"] is True and token["useCount"] == 0
    hashes = [row["token_hash"] for row in db_rows(shared, "SELECT token_hash FROM tokens")]
    assert {hashlib.sha256(s.encode()).hexdigest() for s in secrets} <= set(hashes)
    for text in (table.stdout, table.stderr, listing.stdout, listing.stderr):
        for secret in secrets:
            assert secret not in text
            assert secret[4:20] not in text
        for digest in hashes:
            assert digest[:16] not in text


def test_token_actions_on_an_unknown_id(shared):
    def settings():  # usage counters of other tests' tokens may move meanwhile
        return [{k: t[k] for k in ("id", "name", "namespacePattern", "permissions", "enabled",
                                   "expiresAt", "rotatedAt")} for t in token_list(shared)]
    before = settings()
    for action in ("enable", "disable", "rotate", "delete"):
        result = shared.cli("token", action, "doesnotexist", check=False)
        assert result.returncode == 1, (action, result)
        assert result.stdout == ""
        assert "doesnotexist" in result.stderr and "Traceback" not in result.stderr
    assert settings() == before


BAD_TOKEN_VALUES = [
    (("--namespace", "a*b*"), "pattern"), (("--namespace", "../x"), "pattern"),
    (("--namespace", "*", "--permissions", "admin"), "permission"),
    (("--namespace", "*", "--permissions", ""), "permission"),
    (("--namespace", "*", "--expires-at", "tomorrow"), "RFC 3339"),
    (("--namespace", "*", "--expires-at", "2027-01-01T00:00:00"), "zone"),
]


def test_token_create_rejects_bad_values(shared):
    for args, fragment in BAD_TOKEN_VALUES:
        result = shared.cli("token", "create", "--name", "bad", *args, check=False)
        one_error_line(result, fragment, code=2)
        assert result.stdout == ""
    assert not any(t["name"] == "bad" for t in token_list(shared))


# -- namespaces --------------------------------------------------------------------------------

def namespaces(server) -> dict[str, dict]:
    return {view["name"]: view for view in
            json.loads(server.cli("namespace", "list", "--json").stdout)}


def test_namespace_commands_create_list_delete_restore_and_purge(server, token):
    keep = "team/keep"
    assert server.request("PUT", object_path(NS, "structured/a.json"), b"object",
                          token=token).status == 201
    assert put_blob(server, token, b"snapshot").status == 200
    assert server.request("PUT", ns_path(NS, "metadata"), b'{"revision": "m"}',
                          token=token).status == 200
    assert server.request("PUT", ns_path(NS, "metadata"), b'{"revision": "n"}',
                          {"If-Match": '"stale"'}, token=token).status == 412
    assert put_blob(server, token, b"kept", keep).status == 200

    server.cli("namespace", "create", "team/empty")
    views = namespaces(server)
    assert set(views) == {NS, keep, "team/empty"}
    assert views[NS]["deleted"] is False and views[NS]["revision"] == "m"
    table = server.cli("namespace", "list").stdout
    assert NS in table and "team/empty" in table
    one_error_line(server.cli("namespace", "create", "team/empty", check=False), "exists",
                   code=1)

    refused = server.cli("namespace", "purge", NS, check=False)
    one_error_line(refused, "delete", code=1)
    assert server.request("GET", object_path(NS, "structured/a.json"), token=token).body == \
        b"object"

    server.cli("namespace", "delete", NS)
    assert namespaces(server)[NS]["deleted"] is True
    assert server.request("GET", ns_path(NS, "metadata"), token=token).status == 410
    server.cli("namespace", "restore", NS)
    assert server.request("GET", ns_path(NS, "metadata"), token=token).json["revision"] == "m"

    server.cli("namespace", "delete", NS)
    server.cli("namespace", "purge", NS)
    assert NS not in namespaces(server)
    assert server.request("GET", ns_path(NS, "metadata"), token=token).json == \
        {"exists": False, "contentLength": 0}
    assert server.request("GET", ns_path(NS, "blob"), token=token).status == 404
    assert server.request("GET", object_path(NS, "structured/a.json"), token=token).status == 404
    for table, column in (("namespaces", "name"), ("blobs", "namespace"),
                          ("objects", "namespace"), ("manifests", "namespace"),
                          ("conflicts", "namespace")):
        assert db_rows(server, f"SELECT count(*) AS n FROM {table} WHERE {column} = ?",
                       (NS,)) == [{"n": 0}], table
    # the other namespace is untouched
    assert server.request("GET", ns_path(keep, "blob"), token=token).body == b"kept"

    for action in ("delete", "restore", "purge"):
        one_error_line(server.cli("namespace", action, "team/missing", check=False),
                       "team/missing", code=1)
    one_error_line(server.cli("namespace", "create", "bad/../name", check=False), "namespace",
                   code=2)


# -- configuration errors ------------------------------------------------------------------------

BAD_CONFIG = [
    (("--listen", "nope"), {}, "--listen"),
    (("--listen", "1.2.3.4:99999"), {}, "--listen"),
    (("--listen", "127.0.0.1:0x50"), {}, "--listen"),
    ((), {"LISTEN_ADDR": "localhost"}, "LISTEN_ADDR"),
    ((), {"MAX_BLOB_SIZE": "-5"}, "MAX_BLOB_SIZE"),
    ((), {"MAX_OBJECT_SIZE": "lots"}, "MAX_OBJECT_SIZE"),
    (("--max-blob-size", "0"), {}, "--max-blob-size"),
    ((), {"ADMIN_COOKIE_SECURE": "maybe"}, "ADMIN_COOKIE_SECURE"),
    ((), {"TRUST_PROXY_HEADERS": "sometimes"}, "TRUST_PROXY_HEADERS"),
    ((), {"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ((), {"SYNC_CORS_ALLOWED_ORIGINS": "ftp://x"}, "SYNC_CORS_ALLOWED_ORIGINS"),
    ((), {"SYNC_CORS_ALLOWED_ORIGINS": "https://a.example/path"}, "SYNC_CORS_ALLOWED_ORIGINS"),
    ((), {"MIN_FREE_DISK_BYTES": "1.5"}, "MIN_FREE_DISK_BYTES"),
    ((), {"OBJECT_RETENTION_SECONDS": "-1"}, "OBJECT_RETENTION_SECONDS"),
    ((), {"ADMIN_JWT_SECRET": "short"}, "ADMIN_JWT_SECRET"),
]


@pytest.mark.parametrize("args, env, name", BAD_CONFIG, ids=[
    f"{n}={a[1] if a else list(e.values())[0]}" for a, e, n in BAD_CONFIG])
def test_bad_config_exits_2_with_one_line(make_server, args, env, name):
    server = make_server(start=False)
    result = server.serve_once(*args, env=env,
                               listen="--listen" not in args and "LISTEN_ADDR" not in env)
    one_error_line(result, name, code=2)
    assert result.stdout == ""
    assert not server.db_path.exists()


def test_flags_win_over_the_environment(make_server):
    server = make_server(env={"MAX_BLOB_SIZE": "100"}, args=["--max-blob-size", "1000"])
    token = server.create_token()
    assert put_blob(server, token, b"x" * 500).status == 200
    assert put_blob(server, token, b"x" * 1001).status == 413
    control = make_server(env={"MAX_BLOB_SIZE": "100"})
    control_token = control.create_token()
    assert put_blob(control, control_token, b"x" * 500).status == 413
    assert put_blob(control, control_token, b"x" * 100).status == 200


def test_dotenv_in_the_working_directory_is_read(make_server):
    server = make_server(start=False)
    (server.workdir / ".env").write_text("# settings\nMAX_BLOB_SIZE=100\n"
                                         "export SYNC_CORS_ALLOWED_ORIGINS='https://a.example'\n")
    server.start()
    token = server.create_token()
    assert put_blob(server, token, b"x" * 101).status == 413
    answer = put_blob(server, token, b"x" * 100)
    assert answer.status == 200
    origin = server.request("GET", "/v1/namespaces/x/metadata", token=token,
                            headers={"Origin": "https://a.example"})
    assert origin.headers["Access-Control-Allow-Origin"] == "https://a.example"

    # the environment wins over .env
    override = make_server(start=False, env={"MAX_BLOB_SIZE": "1000"})
    (override.workdir / ".env").write_text("MAX_BLOB_SIZE=100\n")
    override.start()
    assert put_blob(override, override.create_token(), b"x" * 500).status == 200

    # operator commands read it too (DB_PATH here)
    (server.workdir / ".env").write_text(f"DB_PATH={server.db_path}\n")
    env = {k: v for k, v in server.env.items() if k != "DB_PATH"}
    listing = run_oxsync("token", "list", "--json", env=env, cwd=server.workdir)
    assert listing.returncode == 0, listing
    assert [t["name"] for t in json.loads(listing.stdout)] == ["test"]


@pytest.mark.parametrize("command", [("token", "list"), ("namespace", "list"),
                                     ("token", "create", "--name", "x", "--namespace", "*"),
                                     ("namespace", "create", "a")])
def test_cli_on_a_missing_database(tmp_path, command):
    missing = tmp_path / "nowhere" / "sync.db"
    result = run_oxsync(*command, "--db-path", str(missing), cwd=tmp_path)
    one_error_line(result, str(missing), code=2)
    assert result.stdout == ""
    assert not missing.exists() and not missing.parent.exists()
