"""Settings the reference server's newer releases have (issue 23): STORE_METADATA_* and
the one-shot maintenance runs BACKUP_TO, RESTORE_FROM and VERIFY_BACKUP."""

from __future__ import annotations

import pytest
from conftest import SNAPSHOT_TYPE, ns_path, one_error_line, run_oxsync

MANIFEST = {"format": "structured-v2", "revision": "m-1", "deviceId": "laptop-7",
            "uploadedAt": "2026-01-02T03:04:05Z", "sections": {}, "scope": {"pluginIds": None}}
UNKEPT = {"STORE_METADATA_REVISION": "revision", "STORE_METADATA_UPLOADED_AT": "uploadedAt",
          "STORE_METADATA_DEVICE_ID": "deviceId", "STORE_METADATA_CONTENT_HASH": "contentHash"}


def put_blob(server, token, namespace="default"):
    return server.request("PUT", ns_path(namespace, "blob"), b"snapshot bytes",
                          {"X-OxideTerm-Revision": "b-1", "X-OxideTerm-Device-Id": "laptop-7",
                           "Content-Type": SNAPSHOT_TYPE, "If-None-Match": "*"}, token=token)


def metadata(server, token, namespace="default") -> dict:
    answer = server.request("GET", ns_path(namespace, "metadata"), token=token)
    assert answer.status == 200, answer
    return answer.json


@pytest.mark.parametrize("setting", sorted(UNKEPT))
def test_a_field_set_not_to_be_stored_is_never_stored_and_the_rest_are(make_server, setting):
    server = make_server(env={setting: "false"})
    token = server.create_token()
    answer = put_blob(server, token)
    assert answer.status == 200, answer
    assert answer.json["revision"] == "b-1"  # the answer names what was sent
    after_blob = metadata(server, token)
    assert server.request("PUT", ns_path("other", "metadata"), MANIFEST,
                          token=token).status == 200
    after_manifest = metadata(server, token, "other")
    gone = UNKEPT[setting]
    for stored in (after_blob, after_manifest):
        assert gone not in stored, stored
        assert None not in stored.values(), stored  # left out, never null
    kept_by_blob = {"revision", "uploadedAt", "deviceId", "contentHash"} - {gone}
    assert kept_by_blob <= set(after_blob), after_blob
    assert {"revision", "uploadedAt", "deviceId"} - {gone} <= set(after_manifest)
    history = server.cli("namespace", "history", "other", "--json").stdout
    if gone in ("revision", "deviceId"):
        assert MANIFEST[gone] not in history


def test_every_field_is_stored_by_default(server):
    token = server.create_token()
    assert put_blob(server, token).status == 200
    stored = metadata(server, token)
    assert {"revision", "uploadedAt", "deviceId", "contentHash"} <= set(stored), stored


def test_a_bad_store_metadata_value_is_one_line_and_exit_2(make_server):
    server = make_server(start=False)
    result = server.serve_once(env={"STORE_METADATA_DEVICE_ID": "maybe"})
    assert result.returncode == 2
    assert "STORE_METADATA_DEVICE_ID" in one_error_line(result)


def test_backup_to_and_verify_backup_in_the_environment_run_once_and_exit(server, tmp_path):
    token = server.create_token()
    assert put_blob(server, token).status == 200
    target = tmp_path / "backups" / "one.db"
    env = {"BACKUP_TO": str(target)}
    backup = run_oxsync("serve", *server.store_args(), env=server.environment(env))
    assert backup.returncode == 0, backup.stderr
    assert target.is_file() and (tmp_path / "backups" / "one.db.sha256").is_file()
    verify = run_oxsync(env=server.environment({"VERIFY_BACKUP": str(target)}))
    assert verify.returncode == 0 and "ok" in verify.stdout, verify
    target.write_bytes(target.read_bytes()[:-1] + b"\x01")
    damaged = run_oxsync(env=server.environment({"VERIFY_BACKUP": str(target)}))
    assert damaged.returncode == 2 and "does not match" in one_error_line(damaged)


def test_restore_from_in_the_environment_restores_a_stopped_servers_file(make_server, tmp_path):
    server = make_server()
    token = server.create_token()
    assert put_blob(server, token).status == 200
    backup = tmp_path / "b.db"
    server.cli("backup", "--to", str(backup))
    assert server.request("PUT", ns_path("later", "metadata"), MANIFEST,
                          token=token).status == 200
    server.stop()
    env = server.environment({"RESTORE_FROM": str(backup)})
    refused = run_oxsync("serve", *server.store_args(), env=env)
    assert refused.returncode == 2 and "--force" in one_error_line(refused)
    restored = run_oxsync("serve", "--force", *server.store_args(), env=env)
    assert restored.returncode == 0, restored.stderr
    server.start()
    assert metadata(server, token, "later") == {"exists": False, "contentLength": 0}
    assert metadata(server, token)["revision"] == "b-1"


def test_two_maintenance_settings_at_once_are_refused():
    result = run_oxsync(env={"BACKUP_TO": "/tmp/x.db", "VERIFY_BACKUP": "/tmp/x.db",
                             "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "only one of BACKUP_TO" in one_error_line(result)
