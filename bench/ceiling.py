"""The ceiling: the fastest oxsync could be on its own architecture.

A minimal http.server.ThreadingHTTPServer handler (HTTP/1.1 keep-alive, TCP_NODELAY,
Content-Length on every answer, head and body in one send) that answers the benchmarked
sync routes with the same response bodies as oxsync, but with no authentication, no
routing table, no validation and no database. Blobs are kept in memory.

    python3 bench/ceiling.py --listen 127.0.0.1:PORT [--metadata-file FILE]
"""

from __future__ import annotations

import argparse
import http.server
import json
import signal
import sys
import threading
import uuid

HEALTH = b'{"status":"ok","service":"oxideterm-cloud-sync-server"}'
EMPTY_METADATA = b'{"exists":false,"contentLength":0}'
PHRASES = {200: "OK", 201: "Created", 404: "Not Found"}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "ceiling"
    sys_version = ""

    def log_message(self, format, *args):
        pass

    def handle(self):
        try:
            super().handle()
        except OSError:
            pass  # the load generator resets its connections when it stops

    def answer(self, status: int, body: bytes, content_type: str, etag: str | None = None):
        head = [f"HTTP/1.1 {status} {PHRASES[status]}", f"Content-Type: {content_type}",
                f"Content-Length: {len(body)}"]
        if etag:
            head.append(f'ETag: "{etag}"')
        head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if len(body) <= 65536:
            self.wfile.write(head + body)  # one send, as oxsync does for small answers
        else:
            self.wfile.write(head)
            self.wfile.write(body)

    def not_found(self):
        self.answer(404, b'{"error":{"code":"not_found","message":"not found"}}',
                    "application/json")

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):
        path = self.path
        if path.endswith("/metadata"):
            self.answer(200, self.server.metadata, "application/json")
        elif path.endswith("/blob"):
            ns = path.split("/")[3]
            blob = self.server.blobs.get(ns)
            if blob is None:
                self.not_found()
            else:
                self.answer(200, blob[0], "application/vnd.oxideterm.oxide", blob[1])
        elif path == "/health":
            self.answer(200, HEALTH, "application/json")
        else:
            self.not_found()

    def do_PUT(self):
        body = self.read_body()
        etag = str(uuid.uuid4())
        if "/objects/" in self.path:
            self.answer(201, b'{"ok":true,"etag":"%s"}' % etag.encode(), "application/json",
                        etag)
        elif self.path.endswith("/blob"):
            self.server.blobs[self.path.split("/")[3]] = (body, etag)
            revision = self.headers.get("X-OxideTerm-Revision") or ""
            answer = json.dumps({"ok": True, "revision": revision, "etag": etag},
                                separators=(",", ":")).encode()
            self.answer(200, answer, "application/json", etag)
        else:
            self.not_found()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8731")
    parser.add_argument("--metadata-file", help="body answered to GET .../metadata")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = Server((host, int(port)), Handler)
    server.metadata = EMPTY_METADATA
    if args.metadata_file:
        with open(args.metadata_file, "rb") as file:
            server.metadata = file.read()
    server.blobs = {}

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"ceiling listening on {host}:{server.server_port}", file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=0.25)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
