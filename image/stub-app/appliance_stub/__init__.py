"""Stub appliance: `appliance run [--host H] [--port P] [--https-port P] [--config FILE]`.

Serves GET /api/status like the real app and speaks sd_notify (READY=1,
WATCHDOG=1) so the image's systemd unit can be tested without the engine.
"""
import argparse
import http.server
import json
import os
import socket
import threading
import time
import tomllib


def _notify(message: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="appliance")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--host", default=None)
    run.add_argument("--port", type=int, default=None)
    run.add_argument("--https-port", type=int, default=None)   # accepted; the stub has no TLS
    run.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    config = {}
    if args.config:
        with open(args.config, "rb") as f:
            config = tomllib.load(f)
    server_cfg = config.get("server", {})
    host = args.host or server_cfg.get("host", "0.0.0.0")
    port = args.port or server_cfg.get("port", 8080)
    started = time.monotonic()
    status = {"name": config.get("name", socket.gethostname()), "stub": True,
              "sources": ["test-tone"], "sinks": ["main"]}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/api/status":
                self.send_error(404)
                return
            body = json.dumps({**status, "uptime": time.monotonic() - started}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer((host, port), Handler)
    usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    if usec:
        def kick():
            while True:
                _notify("WATCHDOG=1")
                time.sleep(usec / 2e6)
        threading.Thread(target=kick, daemon=True).start()
    _notify("READY=1")
    httpd.serve_forever()
