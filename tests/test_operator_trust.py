"""What an operator does beside the page (issue 15): ADMIN_PASSWORD never undoes a
password changed since, a locked-out address can be let back in, and a version can be
inspected before rolling back."""

from __future__ import annotations

import json

from conftest import AdminClient, assert_json_error, ns_path

FIRST, CHANGED, NEW = "first password 1", "changed in the page", "a brand new value"


def test_admin_password_keeps_a_changed_password_until_its_value_changes(make_server):
    server = make_server(env={"ADMIN_PASSWORD": FIRST, "ADMIN_JWT_SECRET": "j" * 40})
    admin = AdminClient(server)
    admin.login()
    answer = admin.post("/admin/api/me/password", {"currentPassword": FIRST,
                                                   "newPassword": CHANGED})
    assert answer.status == 200, answer
    server.remember(CHANGED, NEW)

    server.restart()  # the same ADMIN_PASSWORD: the page's change stays
    assert "kept as it is" in server.log()
    AdminClient(server).login(FIRST, expect=401)
    AdminClient(server).login(CHANGED)

    server.stop()
    server.env["ADMIN_PASSWORD"] = NEW  # a new value: the forgotten-password way back in
    server.start()
    assert "has a new value" in server.log()
    AdminClient(server).login(CHANGED, expect=401)
    AdminClient(server).login(NEW)


def test_admin_unlock_lets_a_locked_out_address_log_in_again(make_server):
    server = make_server(env={"ADMIN_PASSWORD": FIRST, "MAX_LOGIN_FAILURES": "2"})
    for _ in range(2):
        AdminClient(server).login("wrong password", expect=None)
    locked = AdminClient(server).login(expect=429)
    message = assert_json_error(locked, 429, "try again in", "oxsync admin unlock")
    assert message.count(".") == 1 and message.endswith("."), message  # one sentence
    assert "cleared failed logins" in server.cli("admin", "unlock").stderr
    AdminClient(server).login()


def test_namespace_show_says_what_a_version_changed(server, token):
    namespace = "team/inspect"
    for revision, count in (("r1", 3), ("r2", 5)):
        manifest = {"revision": revision, "format": "structured-v2", "sections": {
            "connections": {"revision": f"c-{revision}", "recordCount": count,
                            "path": f"structured/c-{revision}.json"}}}
        assert server.request("PUT", ns_path(namespace, f"objects/structured/c-{revision}"
                                             ".json"), b"{}", token=token).status == 201
        assert server.request("PUT", ns_path(namespace, "metadata"), manifest,
                              token=token).status == 200

    shown = json.loads(server.cli("namespace", "show", namespace, "2", "--json").stdout)
    assert shown["previousSeq"] == 1 and shown["current"] is True
    assert shown["recordCounts"]["connections"] == {"before": 3, "after": 5}
    assert shown["manifest"]["revision"] == "r2" and shown["missingObjectPaths"] == []
    text = server.cli("namespace", "show", namespace, "2").stdout
    assert "connections 3 → 5" in text and "against   version 1" in text, text

    history = json.loads(server.cli("namespace", "history", namespace, "--json").stdout)
    assert [v["manifest"]["revision"] for v in history["versions"]] == ["r2", "r1"]
    missing = server.cli("namespace", "show", namespace, "9", check=False)
    assert missing.returncode == 1 and "no version 9" in missing.stderr, missing
