"""GET /openapi.json (OpenAPI 3.1) describes the sync and admin APIs, and the live server
keeps to it: schemathesis finds no 5xx and no answer that breaks the schema (issue 4)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import AdminClient, ns_path

ADMIN_PASSWORD = "openapi-admin-password"

# Every operation of PROTOCOL.md sections 4 and 8 (plus history, rollback and gc).
EXPECTED = {
    "/v1/namespaces/{ns}/metadata": {"get", "put"},
    "/v1/namespaces/{ns}/blob": {"get", "put"},
    "/v1/namespaces/{ns}/objects/{path}": {"get", "put"},
    "/health": {"get"},
    "/ready": {"get"},
    "/admin/api/login": {"post"},
    "/admin/api/logout": {"post"},
    "/admin/api/me": {"get"},
    "/admin/api/me/password": {"post"},
    "/admin/api/stats": {"get"},
    "/admin/api/users": {"get", "post"},
    "/admin/api/users/{name}": {"patch", "delete"},
    "/admin/api/namespaces": {"get", "post"},
    "/admin/api/namespaces/{ns}": {"delete"},
    "/admin/api/namespaces/{ns}/restore": {"post"},
    "/admin/api/namespaces/{ns}/history": {"get"},
    "/admin/api/namespaces/{ns}/rollback": {"post"},
    "/admin/api/tokens": {"get", "post"},
    "/admin/api/tokens/{id}": {"patch", "delete"},
    "/admin/api/tokens/{id}/rotate": {"post"},
    "/admin/api/conflicts": {"get"},
    "/admin/api/devices": {"get"},
    "/admin/api/gc": {"post"},
}
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance")
HTTP_METHODS = {"get", "put", "post", "patch", "delete", "head", "options", "trace"}


def test_openapi_document_lists_every_path(make_server):
    server = make_server(env={"ADMIN_PASSWORD": ADMIN_PASSWORD})
    answer = server.request("GET", "/openapi.json")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    document = answer.json
    assert document["openapi"].startswith("3.1"), document["openapi"]
    assert document["info"]["title"] and document["info"]["version"]
    paths = document["paths"]
    documented = {path: {m for m in item if m in HTTP_METHODS} for path, item in paths.items()}
    for path, methods in EXPECTED.items():
        assert path in documented, f"{path} is not in /openapi.json"
        assert methods <= documented[path], (path, documented[path])
    # Every $ref resolves.
    schemas = document["components"]["schemas"]
    for ref in set(_refs(document)):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    # Every documented operation exists on the server (a wrong method would be 405, an
    # unknown path 404 "no such endpoint").
    samples = {"{ns}": "openapi%2Fcheck", "{path}": "structured/a.json",
               "{name}": "nobody", "{id}": "0000000000"}
    for path, methods in documented.items():
        concrete = path
        for name, value in samples.items():
            concrete = concrete.replace(name, value)
        for method in methods:
            probe = server.request(method.upper(), concrete)
            assert probe.status != 405, (method, path, probe)
            if probe.status == 404:
                assert b"no such endpoint" not in probe.body, (method, path, probe)


def _refs(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def schemathesis_command() -> list[str]:
    found = shutil.which("schemathesis") or shutil.which("st")
    if found:
        return [found]
    try:
        import schemathesis  # noqa: F401
    except ImportError:
        pytest.skip("schemathesis is not installed (pip install -r requirements-dev.txt)")
    return [sys.executable, "-m", "schemathesis.cli"]


def test_schemathesis_finds_no_failures(make_server, tmp_path):
    server = make_server(env={"ADMIN_PASSWORD": ADMIN_PASSWORD})
    token = server.create_token(name="schemathesis")
    admin = AdminClient(server)
    admin.login()
    # Data for the operations to find: a namespace with a blob, objects and a manifest.
    assert server.request("PUT", ns_path("st", "blob"), b"snapshot",
                          {"X-OxideTerm-Revision": "r1"}, token=token).status == 200
    assert server.request("PUT", ns_path("st", "metadata"), {"revision": "r2"},
                          token=token).status == 200
    report_dir = tmp_path / "report"
    command = schemathesis_command() + [
        "run", f"http://127.0.0.1:{server.port}/openapi.json",
        "--checks", CHECKS, "--max-examples", "10", "--workers", "1", "--seed", "1",
        "--generation-database", "none", "--no-color", "--request-timeout", "10",
        "--header", f"Authorization: Bearer {token}",
        "--header", f"Cookie: oxsync_session={admin.session}; oxsync_csrf={admin.csrf}",
        "--header", f"X-CSRF-Token: {admin.csrf}",
        "--report", "json", "--report-dir", str(report_dir),
        # Logging out ends the session on the server: the operations after it would only
        # see 401s. The logout itself is covered by tests/test_admin_api.py.
        "--exclude-path", "/admin/api/logout"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False,
                            cwd=tmp_path)
    output = result.stdout + result.stderr
    reports = sorted(report_dir.glob("*.json"))
    assert reports, output[-5000:]
    report = json.loads(reports[-1].read_text())
    failures = json.dumps(report.get("failures"), indent=1)[:5000]
    assert not report["failures"], f"schemathesis found failures:\n{failures}\n{output[-3000:]}"
    assert not report["errors"], json.dumps(report["errors"], indent=1)[:5000]
    assert report["test_cases"]["with_failures"] == 0
    assert report["operations"]["tested"] >= sum(len(m) for m in EXPECTED.values()) - 1
    assert result.returncode == 0, output[-5000:]
    # The credentials worked: authenticated operations were accepted, not just refused.
    rates = report["valid_rates"]
    for operation in ("GET /v1/namespaces/{ns}/metadata", "PUT /v1/namespaces/{ns}/objects/{path}",
                      "GET /admin/api/stats", "GET /admin/api/tokens", "POST /admin/api/gc"):
        accepted = sum(phase.get("accepted", 0) for phase in rates.get(operation, {}).values())
        assert accepted > 0, (operation, rates.get(operation))
    assert server.request("GET", "/health").status == 200
    print(f"\n[schemathesis] {report['test_cases']['generated']} test cases over "
          f"{report['operations']['tested']} operations, no failures")
