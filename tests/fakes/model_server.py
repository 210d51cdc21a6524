#!/usr/bin/env python3
"""A loopback server for model downloads in tests; standard library only (Python 3.8+), as the e2e
tests copy it onto a sandbox host and run it there:

    python3 model_server.py --root DIR --port P [--bind 127.0.0.1]

It prints `listening PORT` once it accepts connections (--port 0 takes a free one) and serves:
  GET/HEAD /PATH        DIR/PATH, with one byte range (206 + Content-Range; 416 past the end);
                        names starting with "." and the gcs/ folder are not served
  GET /storage/v1/b/BUCKET/o/OBJECT?alt=media
                        Cloud Storage's media download of DIR/gcs/BUCKET/OBJECT (OBJECT url-encoded,
                        "/" as %2F), ranges as above; needs `Authorization: Bearer <DIR/.token>`
  GET /computeMetadata/v1/instance/service-accounts/default/token
                        the metadata server's token (needs `Metadata-Flavor: Google`):
                        {"access_token": <DIR/.token>, "expires_in": 3599, "token_type": "Bearer"}

DIR/.control.json is read again for every request; all keys are optional:
  cut_after_bytes N   close the connection after N bytes of each body (headers promise them all)
  stop_after_cut      and then stop the whole server (a test starts it again)
  ignore_range        answer 200 and the whole file, whatever Range asks
  fail_next K         answer the next K requests with fail_status (counted down in the file)
  fail_status         the status fail_next answers with (default 503)
  stale_token_next K  the metadata server hands out a wrong token the next K times (counted down)
  redirect_to URL     answer file and storage requests for any other path with 302 to URL

Every request is appended to DIR/.requests.log as a JSON line: method, path, range (the Range
header or null), auth (whether an Authorization header came), status and bytes (of body sent).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
LOCK = threading.Lock()


def read_control(root: str, countdown: str) -> tuple:
    """The control options, and whether COUNTDOWN (a counter key) was above zero: it then goes
    down by one in the file."""
    path = os.path.join(root, ".control.json")
    with LOCK:
        try:
            with open(path, encoding="utf-8") as f:
                control = json.load(f)
        except (OSError, ValueError):
            return {}, False
        left = int(control.get(countdown) or 0)
        if left > 0:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(dict(control, **{countdown: left - 1}), f)
        return control, left > 0


class Handler(BaseHTTPRequestHandler):
    root = "."
    sent = 0

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request log below replaces stderr noise

    def do_HEAD(self) -> None:
        self.handle_request(body=False)

    def do_GET(self) -> None:
        self.handle_request(body=True)

    def handle_request(self, body: bool) -> None:
        self.status, self.sent = 0, 0
        try:
            self.route(body)
        except ConnectionError:  # the client went away mid-body: logged with what was sent
            self.close_connection = True
        finally:
            self._log_request()

    def _log_request(self) -> None:
        entry = {"method": self.command, "path": self.path, "range": self.headers.get("Range")}
        entry.update(auth="Authorization" in self.headers, status=self.status, bytes=self.sent)
        with LOCK, open(os.path.join(self.root, ".requests.log"), "a") as log:
            log.write(json.dumps(entry) + "\n")

    def route(self, body: bool) -> None:
        control, fail = read_control(self.root, "fail_next")
        url = urlsplit(self.path)
        if fail:
            return self.answer(int(control.get("fail_status") or 503), b"failing on purpose\n")
        if url.path == TOKEN_PATH:
            return self.metadata_token()
        target = control.get("redirect_to")
        if target and urlsplit(target).path != url.path:
            return self.answer(302, b"moved\n", "text/plain", {"Location": target})
        if url.path.startswith("/storage/v1/"):
            return self.storage(url, control, body)
        rel = unquote(url.path).lstrip("/")
        parts = rel.split("/")
        if not rel or parts[0] == "gcs" or any(p.startswith(".") or not p for p in parts):
            return self.answer(404, b"not served\n")
        self.send_file(os.path.join(self.root, *parts), control, body)

    def token(self) -> str:
        try:
            with open(os.path.join(self.root, ".token"), encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return ""

    def metadata_token(self) -> None:
        if self.headers.get("Metadata-Flavor") != "Google":
            return self.answer(403, b"missing Metadata-Flavor: Google\n")
        _, stale = read_control(self.root, "stale_token_next")
        token = ("stale-" if stale else "") + self.token()
        answer = {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
        self.answer(200, json.dumps(answer).encode(), "application/json")

    def storage(self, url, control: dict, body: bool) -> None:  # type: ignore[no-untyped-def]
        match = re.fullmatch(r"/storage/v1/b/([^/]+)/o/([^/]+)", url.path)
        if not match or parse_qs(url.query).get("alt") != ["media"]:
            return self.answer(400, b'{"error": "only ?alt=media of an encoded object"}')
        if not self.token() or self.headers.get("Authorization") != "Bearer " + self.token():
            return self.answer(401, b'{"error": {"code": 401, "message": "Invalid Credentials"}}')
        bucket, name = unquote(match.group(1)), unquote(match.group(2))
        base = os.path.realpath(os.path.join(self.root, "gcs", bucket))
        path = os.path.realpath(os.path.join(base, name))
        if "/" in bucket or not path.startswith(base + os.sep):
            return self.answer(404, b'{"error": {"code": 404}}')
        self.send_file(path, control, body)

    def send_file(self, path: str, control: dict, body: bool) -> None:
        if not os.path.isfile(path):
            return self.answer(404, b"no such file\n")
        size = os.path.getsize(path)
        start, end, status = 0, size - 1, 200
        asked = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
        if asked and not control.get("ignore_range") and asked.group(0) != "bytes=-":
            first, last = asked.groups()
            if first:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            else:
                start = max(size - int(last), 0)
            if start >= size or start > end:
                extra = {"Content-Range": f"bytes */{size}"}
                return self.answer(416, b"", "text/plain", extra)
            status = 206
        length = end - start + 1
        self.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        cut = control.get("cut_after_bytes")
        todo = length if cut is None else min(length, int(cut))
        with open(path, "rb") as f:
            f.seek(start)
            while todo > 0:
                chunk = f.read(min(todo, 1 << 16))
                if not chunk:
                    break
                self.wfile.write(chunk)
                self.sent += len(chunk)
                todo -= len(chunk)
        self.close_connection = True
        if cut is not None and int(cut) < length and control.get("stop_after_cut"):
            self.wfile.flush()
            self._log_request()
            os._exit(0)  # the server stops mid-file, as a crashed or restarted one does

    def answer(self, status: int, data: bytes, kind: str = "text/plain", extra=None) -> None:  # type: ignore[no-untyped-def]
        self.status = status
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
            self.sent += len(data)


def main(argv: list) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    args = parser.parse_args(argv)
    Handler.root = os.path.realpath(args.root)
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
