from conftest import ns_path


def test_health(server):
    answer = server.request("GET", "/health")
    assert answer.status == 200
    assert answer.json == {"status": "ok", "service": "oxideterm-cloud-sync-server"}


def test_empty_namespace_metadata(server, token):
    answer = server.request("GET", ns_path("team/default", "metadata"), token=token)
    assert answer.status == 200
    assert answer.json == {"exists": False, "contentLength": 0}
