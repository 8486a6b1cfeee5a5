"""Container-protocol test service for jobnode (standard library only).

One image, many behaviours: the env var MODE picks what ``POST /service_output``
does. It runs as a container (``FROM python:3.11-slim-bookworm``) or straight on
the host: ``MODE=echo PORT=3001 python3 tests/services/server.py``.

Environment
    HOST    bind address (default 0.0.0.0)
    PORT    bind port (default 3000)
    MODE    echo | transform | fail | badjson | slow | exit | count | answer |
            flaky (default echo)
    NAME    service name, reported by /service-resources and used by transform
            (default: the MODE, so "transform" for MODE=transform)
    FACTOR  transform multiplier (default 2)
    ADD     transform addend (default 0)
    DELAY   seconds (float) to sleep before answering: default 5 for MODE=slow,
            0 for every other mode (so e.g. MODE=count DELAY=0.2 is a slow counter)
    FAILS   flaky: how many calls of each key fail before it echoes (default 1)
    STATUS  flaky: the status of those failures (default 503)
    RETRY_AFTER  flaky: the Retry-After header value sent with them (default none)

Endpoints
    POST   /service_output   body {"source": int, "destination": int,
                             "data": <any JSON>, "requires_proof": bool};
                             the body must be a JSON object with a "data" key,
                             else 400 {"detail": ...}. Then by MODE:
        echo       200, the body is ``data`` itself (so chained echoes keep it)
        transform  200, ``{"value": value * FACTOR + ADD, "seen": [*seen, NAME]}``
                   where, if data is an object, value = data.get("value", 0) and
                   seen = data.get("seen", []); if data is a bare number,
                   value = data and seen = []; anything else -> 400.
                   E.g. FACTOR=3 ADD=1 NAME=a, data {"value": 2}
                   -> {"value": 7, "seen": ["a"]}.
        fail       500 {"detail": "boom"} (valid JSON: a node that ignores the
                   status code would wrongly take it as output)
        badjson    200, body ``not json``, Content-Type text/plain
        slow       sleeps DELAY seconds, then echoes
        exit       the process exits at once (os._exit(1)) without answering,
                   like a container dying mid-request
        count      echoes (the per-key counting below happens in every mode)
        flaky      the first FAILS calls of each key (as counted by /calls)
                   answer STATUS {"detail": "flaky"}, with a Retry-After
                   header when RETRY_AFTER is set; later calls echo
        answer     by ``data["answer"]`` when data is an object: "nul" -> 200
                   {"text": "a\\u0000b"} (a NUL character, which PostgreSQL
                   cannot store); "nulbyte" -> 200, the bytes ``a``, NUL, ``b``
                   as text/plain; "deep" -> 200, arrays nested
                   ``data["depth"]`` deep (default 990); anything else -> echoes
    GET    /calls            200 {key: count} of POST /service_output calls that
                             passed validation, in every mode; key is
                             str(data["job"]) when data is an object with a
                             "job" key, else the compact sorted JSON of data.
                             Counted on arrival (before any DELAY).
    GET    /call-times       200 {key: [unix seconds of each call's arrival]}, keyed
                             as /calls (the spacing of a node's retries)
    DELETE /calls            resets the counts and times; 200 {}
    GET    /health           200 {"status": "ok"}
    GET    /service-resources  200 {"mode": MODE, "name": NAME}, plus
                             "model_id" when the query string has model_id
    anything else            404 {"detail": "not found"}

HTTP/1.1 with keep-alive, Content-Length on every response, one send per
response, TCP_NODELAY, no per-request logging. SIGTERM exits at once, so
``docker stop`` is fast even when the server is PID 1.
"""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MODES = ("echo", "transform", "fail", "badjson", "slow", "exit", "count", "answer", "flaky")

HOST = os.environ.get("HOST", "0.0.0.0")
PORT = int(os.environ.get("PORT", "3000"))
MODE = os.environ.get("MODE", "echo").strip().lower() or "echo"
NAME = os.environ.get("NAME", MODE)


def _number(text):
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


FACTOR = _number(os.environ.get("FACTOR", "2"))
ADD = _number(os.environ.get("ADD", "0"))
DELAY = float(os.environ.get("DELAY", "5" if MODE == "slow" else "0"))
FAILS = int(os.environ.get("FAILS", "1"))
STATUS = int(os.environ.get("STATUS", "503"))
RETRY_AFTER = os.environ.get("RETRY_AFTER")

_calls = {}
_times = {}
_calls_lock = threading.Lock()


class BadRequest(Exception):
    pass


def _count(data):
    if isinstance(data, dict) and "job" in data:
        key = str(data["job"])
    else:
        key = json.dumps(data, sort_keys=True, separators=(",", ":"))
    with _calls_lock:
        _calls[key] = _calls.get(key, 0) + 1
        _times.setdefault(key, []).append(time.time())
        return _calls[key]


def _transform(data):
    if isinstance(data, dict):
        value, seen = data.get("value", 0), data.get("seen", [])
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        value, seen = data, []
    else:
        raise BadRequest("transform needs an object or a number as data")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest("transform needs a numeric data.value")
    if not isinstance(seen, list):
        raise BadRequest("transform needs a list as data.seen")
    return {"value": value * FACTOR + ADD, "seen": [*seen, NAME]}


def _answer(data):
    """The body of an ``answer`` mode response, as bytes (json.dumps would recurse as
    deep as the nesting asked for)."""
    if data["answer"] == "nul":
        return json.dumps({"text": "a\u0000b"}).encode()
    if data["answer"] == "nulbyte":
        return b"a\x00b"
    depth = int(data.get("depth", 990))
    return b"[" * depth + b"]" * depth


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "jobnode-test-service"
    sys_version = ""
    wbufsize = 64 * 1024  # headers + body leave in one send (flushed per request)
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # quiet: no per-request logging
        pass

    # -- helpers -----------------------------------------------------------
    def _send(self, status, body, content_type="application/json", headers=()):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _path(self):
        return urlsplit(self.path)

    # -- methods -----------------------------------------------------------
    def do_GET(self):
        url = self._path()
        if url.path == "/health":
            self._send(200, {"status": "ok"})
        elif url.path == "/service-resources":
            body = {"mode": MODE, "name": NAME}
            model_id = parse_qs(url.query).get("model_id")
            if model_id:
                body["model_id"] = model_id[0]
            self._send(200, body)
        elif url.path == "/calls":
            with _calls_lock:
                snapshot = dict(_calls)
            self._send(200, snapshot)
        elif url.path == "/call-times":
            with _calls_lock:
                snapshot = {key: list(times) for key, times in _times.items()}
            self._send(200, snapshot)
        else:
            self._not_found()

    def do_DELETE(self):
        if self._path().path == "/calls":
            with _calls_lock:
                _calls.clear()
                _times.clear()
            self._send(200, {})
        else:
            self._not_found()

    def do_POST(self):
        if self._path().path != "/service_output":
            self._read_body()  # keep the connection usable
            return self._not_found()
        try:
            try:
                request = json.loads(self._read_body())
            except ValueError:
                raise BadRequest("body is not valid JSON") from None
            if not isinstance(request, dict) or "data" not in request:
                raise BadRequest('body must be a JSON object with a "data" key')
            data = request["data"]
            output = _transform(data) if MODE == "transform" else data
        except BadRequest as exc:
            return self._send(400, {"detail": str(exc)})

        calls = _count(data)
        if MODE == "exit":
            os._exit(1)
        if DELAY > 0:
            time.sleep(DELAY)
        if MODE == "fail":
            self._send(500, {"detail": "boom"})
        elif MODE == "flaky" and calls <= FAILS:
            headers = [("Retry-After", RETRY_AFTER)] if RETRY_AFTER is not None else []
            self._send(STATUS, {"detail": "flaky"}, headers=headers)
        elif MODE == "badjson":
            self._send(200, b"not json", "text/plain")
        elif MODE == "answer" and isinstance(data, dict) and data.get("answer") in ("nul", "nulbyte", "deep"):
            self._send(200, _answer(data), "text/plain" if data["answer"] == "nulbyte" else "application/json")
        else:
            self._send(200, output)

    def _not_found(self):
        self._send(404, {"detail": "not found"})

    def do_PUT(self):
        self._read_body()
        self._not_found()

    do_PATCH = do_PUT


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def main():
    if MODE not in MODES:
        sys.exit(f"unknown MODE {MODE!r}; expected one of {', '.join(MODES)}")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server = Server((HOST, PORT), Handler)
    print(f"test service mode={MODE} name={NAME} listening on {HOST}:{PORT}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
