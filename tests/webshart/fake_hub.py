"""A fake Hugging Face Hub on 127.0.0.1 for the webshart tests, serving one
dataset repository from a local folder: the dataset info API (`siblings`,
what webshart 0.6.0 lists), the tree API (what shardprep lists), and
`resolve/main/...` files with Range support. It counts the bytes of tar files
it sends.

webshart 0.6.0 always talks to https://huggingface.co (it ignores
HF_ENDPOINT), so the Hub is served twice: over plain HTTP for shardprep
(`HF_ENDPOINT`), and over TLS as `huggingface.co` behind a CONNECT proxy for
webshart (`HTTPS_PROXY`, with `SSL_CERT_FILE` naming a test CA that signed
the certificate). Only the standard library and the `openssl` command.
bench/index_remote.py serves its shard sets with it too.
"""

import hashlib
import json
import os
import select
import socket
import socketserver
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def make_certs(folder):
    """A test CA and a certificate for huggingface.co signed by it: (ca.pem, cert, key)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "hub.key", "hub.csr", "hub.pem"))
    ext = folder / "hub.ext"
    ext.write_text("subjectAltName=DNS:huggingface.co\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=shardprep test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=huggingface.co")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca, cert, key


class Hub:
    """Serves `folder` as the dataset repository `repo` (revision main)."""

    def __init__(self, folder, repo="acme/mini"):
        self.folder = Path(folder)
        self.repo = repo
        self.tar_bytes_sent = 0
        self.tar_requests = 0
        self.requests = []
        self.lock = threading.Lock()
        self.servers = []

    def files(self):
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def rel(self, p):
        return p.relative_to(self.folder).as_posix()

    def dataset_info(self):
        siblings = [{"rfilename": self.rel(p), "size": p.stat().st_size} for p in self.files()]
        return {"id": self.repo, "siblings": siblings}

    def tree(self, under):
        out = []
        for p in self.files():
            rel = self.rel(p)
            if under and not rel.startswith(under + "/"):
                continue
            st = p.stat()
            oid = hashlib.sha1(f"{rel}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
            out.append({"type": "file", "path": rel, "size": st.st_size, "oid": oid})
        return out

    def handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms Nagle + delayed-ACK stall per small answer

            def log_message(self, *args):
                pass

            def send_json(self, doc):
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def not_found(self):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                path = unquote(urlsplit(self.path).path)
                with hub.lock:
                    hub.requests.append((self.command, path, self.headers.get("Range")))
                api = f"/api/datasets/{hub.repo}"
                resolve = f"/datasets/{hub.repo}/resolve/main/"
                if path == api:
                    return self.send_json(hub.dataset_info())
                if path.startswith(api + "/tree/main"):
                    return self.send_json(hub.tree(path[len(api + "/tree/main"):].strip("/")))
                if path.startswith(resolve):
                    return self.send_file(hub.folder / path[len(resolve):])
                return self.not_found()

            def send_file(self, p):
                if not p.is_file() or hub.folder not in p.resolve().parents:
                    return self.not_found()
                total = p.stat().st_size
                start, end, status = 0, total, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[len("bytes="):].partition("-")
                    start = int(a)
                    end = min(int(b) + 1, total) if b else total
                    status = 206
                    if start >= total:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(status)
                self.send_header("Content-Length", str(end - start))
                self.send_header("Accept-Ranges", "bytes")
                st = p.stat()
                self.send_header("ETag", f'"{st.st_size}-{st.st_mtime_ns}"')
                self.send_header("Last-Modified", "Wed, 26 Nov 2025 10:00:00 GMT")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
                self.end_headers()
                if self.command == "HEAD":
                    return
                sent = 0
                with open(p, "rb") as f:
                    f.seek(start)
                    while sent < end - start:
                        chunk = f.read(min(1 << 20, end - start - sent))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        sent += len(chunk)
                if p.suffix == ".tar":
                    with hub.lock:
                        hub.tar_bytes_sent += sent
                        hub.tar_requests += 1

        return Handler

    def serve(self, tls=None):
        """Starts one server (plain HTTP, or TLS with (cert, key)); returns its port."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        server.daemon_threads = True
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)
        return server.server_address[1]

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


class ConnectProxy:
    """An HTTP CONNECT proxy that sends every tunnel to 127.0.0.1:`port`
    (whatever host it names); it records the hosts asked for."""

    def __init__(self, port):
        target = port
        self.hosts = []
        proxy = self

        class Tunnel(socketserver.BaseRequestHandler):
            def handle(self):
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
                if len(line) < 2 or line[0] != "CONNECT":
                    self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                    return
                proxy.hosts.append(line[1])
                upstream = socket.create_connection(("127.0.0.1", target))
                self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pipe(self.request, upstream)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tunnel)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def pipe(a, b):
    """Copies bytes both ways until one side closes."""
    socks = [a, b]
    try:
        while True:
            ready, _, _ = select.select(socks, [], [], 30)
            if not ready:
                return
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    finally:
        b.close()


def webshart_env(proxy_port, ca_file):
    """The environment that makes webshart reach this Hub as https://huggingface.co."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "hf_token", "hf_endpoint")}
    env.update({"HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}", "https_proxy": f"http://127.0.0.1:{proxy_port}",
                "SSL_CERT_FILE": str(ca_file), "WEBSHART_DISABLE_XET": "1"})
    return env
