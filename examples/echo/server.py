"""Example jobnode service: returns its input unchanged.

A jobnode service is any HTTP server in a container that answers:
  POST /service_output   body {"source": int, "destination": int,
                         "data": <any JSON>, "requires_proof": bool}
                         -> 200 with the output as the JSON body
  GET  /health           -> 200 {"status": "ok"}
  GET  /service-resources -> 200 JSON describing the service
It listens on $HOST:$PORT (default 0.0.0.0:3000). Standard library only.
"""

import json
import os
import signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply has a Content-Length
    wbufsize = 64 * 1024  # send headers and body together
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # no per-request logging
        pass

    def reply(self, status, body):
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/health":
            self.reply(200, {"status": "ok"})
        elif path == "/service-resources":
            self.reply(200, {"name": "echo", "description": "returns its input"})
        else:
            self.reply(404, {"detail": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urlsplit(self.path).path != "/service_output":
            return self.reply(404, {"detail": "not found"})
        try:
            request = json.loads(body)
            data = request["data"]
        except (ValueError, TypeError, KeyError):
            return self.reply(400, {"detail": 'expected a JSON object with "data"'})
        self.reply(200, data)  # the service's work goes here


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung request never blocks shutdown
    request_queue_size = 128  # room for many clients connecting at once


def main():
    # Exit promptly on SIGTERM: as PID 1 in a container there is no default handler.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    host, port = os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "3000"))
    server = Server((host, port), Handler)
    print(f"echo service listening on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
