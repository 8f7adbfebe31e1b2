"""A small local server that replays recorded real streams (tests/attach/data), and the faults.

Run as its own process on 127.0.0.1 (a free port, or argv[2]; printed on the first stdout
line), so "a server that dies" is a real process dying mid-stream. Each first path segment is a server:

    /oai     transformers serve's recorded streams (/v1/models, /v1/completions, chat)
    /multi   the recorded stream whose tokens arrive fewer chunks than the usage counts
    /tgi     TGI: /info, /generate_stream (recorded), /metrics (TGI's gauge names)
    /cut     streams 3 events of the recording, then ends the body cleanly, unfinished
    /dies    streams 3 events, then the process exits (connection reset mid-body)
    /slow    the recorded stream, one event a second (for Ctrl-C)
    /json    answers a streamed request with the recorded non-streamed JSON
    /e400    400 with FastAPI's {"detail": ...};  /e503: 503 with OpenAI's {"error": {...}}
    /secure  /v1/models needs "Authorization: Bearer test-key" (401 otherwise)

Anything else is a 404. Bodies are sent with chunked transfer encoding, as real servers do,
each event `PACE_S` after the last.
"""

from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DATA = Path(__file__).parent / "data"
PACE_S = 0.01
KEY = "test-key"
TGI_METRICS = """# HELP tgi_queue_size Current queue size
# TYPE tgi_queue_size gauge
tgi_queue_size 0
# HELP tgi_batch_current_size Current batch size
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 1
"""


def events(name: str) -> list[bytes]:
    """The recorded SSE events of a file, each with its blank-line terminator."""
    text = (DATA / name).read_text()
    return [e.strip("\n").encode() + b"\n\n" for e in text.split("\n\n") if e.strip()]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, chunks: list[bytes], die_after: int | None = None, pace_s: float = PACE_S) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, chunk in enumerate(chunks):
            if die_after is not None and i == die_after:
                self.wfile.flush()
                os._exit(1)
            time.sleep(pace_s)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        prefix, _, rest = self.path.lstrip("/").partition("/")
        if rest == "v1/models" and prefix in ("oai", "multi", "cut", "dies", "slow", "json",
                                                       "e400", "e503"):
            return self._json(200, json.loads((DATA / "transformers_serve_models.json").read_text()))
        if prefix == "secure" and rest == "v1/models":
            if self.headers.get("Authorization") != f"Bearer {KEY}":
                return self._json(401, {"error": {"message": "Invalid API key"}})
            return self._json(200, json.loads((DATA / "transformers_serve_models.json").read_text()))
        if prefix == "tgi" and rest == "info":
            return self._json(200, json.loads((DATA / "tgi_info.json").read_text()))
        if prefix == "tgi" and rest == "metrics":
            data = TGI_METRICS.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self.wfile.write(data)
        return self._json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        prefix, _, rest = self.path.lstrip("/").partition("/")
        recorded = {"v1/completions": "transformers_serve_completions.sse",
                    "v1/chat/completions": "transformers_serve_chat.sse"}
        if prefix == "tgi" and rest == "generate_stream":
            return self._stream(events("tgi_generate_stream.sse"))
        if rest not in recorded:
            return self._json(404, {"detail": "Not Found"})
        if prefix == "oai":
            return self._stream(events(recorded[rest]))
        if prefix == "slow":
            return self._stream(events(recorded[rest]), pace_s=1.0)
        if prefix == "multi":
            return self._stream(events("transformers_serve_multibyte.sse"))
        if prefix == "cut":
            return self._stream(events(recorded[rest])[:3])
        if prefix == "dies":
            return self._stream(events(recorded[rest]), die_after=3)
        if prefix == "json":
            return self._json(200, json.loads((DATA / "transformers_serve_completions.json").read_text()))
        if prefix == "e400":
            return self._json(400, {"detail": "max_tokens must be a positive integer"})
        if prefix == "e503":
            return self._json(503, {"error": {"message": "The server is overloaded", "code": 503}})
        return self._json(404, {"detail": "Not Found"})


def main() -> None:
    ThreadingHTTPServer.allow_reuse_address = True   # a restarted server takes its old port
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0),
                                 Handler)
    print(server.server_address[1], flush=True)
    deadline = float(sys.argv[1]) if len(sys.argv) > 1 else 600.0  # stops by itself
    server.timeout = 0.5
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        server.handle_request()


if __name__ == "__main__":
    main()
