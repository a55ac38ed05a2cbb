#!/usr/bin/env python3
"""A tiny static HTTP/1.1 file server with Range support, for bench/remote.sh.

Python's http.server ignores Range headers; shardprep's remote reader resumes with
`Range: bytes=N-`, and object_store expects a proper 206 with Content-Range. This serves the
regular files of one folder (no subfolders, no listing) on 127.0.0.1 only:

- HEAD and GET; `Range: bytes=A-`, `bytes=A-B`, `bytes=-N` (one range) -> 206 + Content-Range;
  an unsatisfiable range -> 416; anything else -> 200 with the whole file;
- Content-Length, Accept-Ranges: bytes, ETag "SIZE-MTIME_NS", Last-Modified;
- If-Match / If-None-Match against that ETag (412 / 304);
- keep-alive (HTTP/1.1), one thread per connection, bodies sent with sendfile(2).

Usage: remote_server.py DIR [--port 0] [--port-file FILE]
The chosen port is printed on stdout (and written to --port-file) once listening.
Each request is logged on stderr: method, path, range, status, bytes sent, seconds.
"""

import argparse
import email.utils
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "shardprep-bench/1"
    root = "."
    log_lock = threading.Lock()

    def log_message(self, fmt, *args):  # quiet default logging; see log_request_line
        pass

    def log_request_line(self, status, rng, sent, t0):
        with self.log_lock:
            sys.stderr.write(
                f"{time.strftime('%H:%M:%S')} {self.command} {self.path} "
                f"range={rng or '-'} {status} sent={sent} {time.monotonic() - t0:.3f}s\n"
            )
            sys.stderr.flush()

    def simple(self, code, extra=None, body=b""):
        self.send_response(code)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def resolve(self):
        name = unquote(urlsplit(self.path).path).lstrip("/")
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            return None
        path = os.path.join(self.root, name)
        return path if os.path.isfile(path) else None

    def do_HEAD(self):
        self.serve()

    def do_GET(self):
        self.serve()

    def serve(self):
        t0 = time.monotonic()
        rng = self.headers.get("Range")
        path = self.resolve()
        if path is None:
            self.simple(404, body=b"not found\n")
            self.log_request_line(404, rng, 0, t0)
            return
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = f'"{size}-{st.st_mtime_ns}"'
            common = {
                "ETag": etag,
                "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
                "Accept-Ranges": "bytes",
                "Content-Type": "application/x-tar",
            }
            if_match = self.headers.get("If-Match")
            if if_match and if_match.strip() != "*" and etag not in [
                t.strip() for t in if_match.split(",")
            ]:
                self.simple(412, common)
                self.log_request_line(412, rng, 0, t0)
                return
            if_none = self.headers.get("If-None-Match")
            if if_none and (if_none.strip() == "*" or etag in [t.strip() for t in if_none.split(",")]):
                self.simple(304, common)
                self.log_request_line(304, rng, 0, t0)
                return
            start, end, status = 0, size - 1, 200
            m = RANGE_RE.match(rng.strip()) if rng else None
            if m and (m.group(1) or m.group(2)):
                a, b = m.group(1), m.group(2)
                if a:
                    start = int(a)
                    end = min(int(b), size - 1) if b else size - 1
                else:  # suffix range: the last N bytes
                    start, end = max(size - int(b), 0), size - 1
                if start >= size or start > end:
                    self.simple(416, {**common, "Content-Range": f"bytes */{size}"})
                    self.log_request_line(416, rng, 0, t0)
                    return
                status = 206
            length = end - start + 1 if size else 0
            self.send_response(status)
            for k, v in common.items():
                self.send_header(k, v)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(length))
            self.end_headers()  # flushes the headers
            sent = 0
            if self.command == "GET" and length:
                try:
                    sent = self.connection.sendfile(f, offset=start, count=length)
                except (BrokenPipeError, ConnectionResetError):
                    # The client went away (e.g. a finished or cancelled read): not our problem.
                    self.close_connection = True
            self.log_request_line(status, rng, sent, t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    args = ap.parse_args()
    Handler.root = os.path.realpath(args.dir)
    ThreadingHTTPServer.daemon_threads = True
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    port = httpd.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(port, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
