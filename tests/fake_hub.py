"""A small stand-in for the Hugging Face hub, for tests/test_hub.py (and tools/check_hub_interop.py).

Two http.server instances on 127.0.0.1 in threads: the hub, answering HEAD/GET {repo}/resolve/{revision}/{file}
with the headers huggingface_hub reads, and a "CDN" on another port (another origin) that serves LFS files, as the
real hub redirects LFS downloads to a CDN. Behaviour modelled on huggingface_hub's file_download.py and utils/_http.py
(what it reads) and the hub's answers it expects:
    small git file:  200, ETag "<git blob sha1>", X-Repo-Commit, Content-Length
    LFS file:        302 to the CDN, X-Linked-Etag "<sha256>", X-Linked-Size, X-Repo-Commit, ETag of the pointer
    renamed repo:    307 with a relative Location on the same host
    missing file:    404 X-Error-Code: EntryNotFound;  missing revision: 404 RevisionNotFound;
    missing repo:    401 X-Error-Code: RepoNotFound;   token required but absent or wrong: 401
Switches for failures: `truncate` (the CDN announces the full length and closes half way), `corrupt` (one byte of
the body changed, same length), `token` (required by the hub; the CDN records whether it received one).
Switches for hostile servers (tests/test_hostile.py):
    lfs_location   the hub's LFS redirect points there instead of the CDN (file:///..., ftp://...)
    cdn_redirect   the CDN answers 302 to this URL instead of serving the file
    cdn_unsized    the CDN sends no Content-Length and closes the connection after the body (HTTP/1.0 style)
    cdn_extra      that many bytes sent after the body (with cdn_unsized: a body longer than announced)
    git_unsized    small git files are served without Content-Length
    git_truncate   ... and cut in half (a truncated config.json whose ETag is the full file's git blob sha1)
    stall          a threading.Event: the CDN sends half the body, then waits for it (at most 120 s)
"""

import hashlib
import http.server
import threading
import urllib.parse

REPO = "tiny-org/tiny-model"
RENAMED = "tiny-org/old-name"                      # redirects to REPO


def commit_of(name):
    return hashlib.sha1(name.encode()).hexdigest()   # 40 hex digits, like a git commit


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def make_repo():
    """{commit: {filename: bytes}} and {revision name: commit}: main, the tag v1.0 and refs/pr/1 differ."""
    commits, refs = {}, {}
    for i, name in enumerate(["main", "v1.0", "refs/pr/1"]):
        commit = commit_of(name)
        refs[name] = commit
        commits[commit] = {
            "config.json": b'{"model_type": "rt_detr_v2", "revision": "%s"}\n' % name.encode(),
            "model.safetensors": bytes((j * 7 + i) % 251 for j in range(3000 + 1000 * i)),   # LFS
            "sub/dir/notes.txt": b"nested file of %s\n" % name.encode(),
        }
    return commits, refs


LFS = {"model.safetensors"}


class FakeHub:
    def __init__(self):
        self.commits, self.refs = make_repo()
        self.blobs = {hashlib.sha256(d).hexdigest(): d for files in self.commits.values() for d in files.values()}
        self.log = []                               # (server, method, path, Authorization header or None)
        self.truncate = False
        self.corrupt = False
        self.token = None
        self.lfs_location = None
        self.cdn_redirect = None
        self.cdn_unsized = False
        self.cdn_extra = 0
        self.git_unsized = False
        self.git_truncate = False
        self.stall = None
        self.cdn_sent = []                          # bytes the CDN managed to send, per GET
        self.hub = self._serve(self._hub_handler)
        self.cdn = self._serve(self._cdn_handler)
        self.endpoint = f"http://127.0.0.1:{self.hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def _serve(self, handler_factory):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_factory())
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return server

    def close(self):
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()

    def requests(self, server=None, method=None):
        return [r for r in self.log if (server is None or r[0] == server) and (method is None or r[1] == method)]

    # -- the hub ------------------------------------------------------------------------------------------------
    def _hub_handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._resolve(send_body=False)

            def do_GET(self):
                self._resolve(send_body=True)

            def _answer(self, code, headers, body=b"", send_body=True):
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body and body:
                    self.wfile.write(body)

            def _resolve(self, send_body):
                hub.log.append(("hub", self.command, self.path, self.headers.get("Authorization")))
                path = urllib.parse.urlsplit(self.path).path
                parts = path.lstrip("/").split("/", 4)
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._answer(404, {"X-Error-Code": "EntryNotFound"}, b"not a resolve url", send_body)
                repo = f"{parts[0]}/{parts[1]}"
                revision = urllib.parse.unquote(parts[3])
                filename = urllib.parse.unquote(parts[4])
                if repo == RENAMED:
                    new = f"/{REPO}/resolve/{parts[3]}/{parts[4]}"
                    return self._answer(307, {"Location": new}, b"", send_body)
                if hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._answer(401, {"X-Error-Code": "GatedRepo"}, b"token needed", send_body)
                if repo != REPO:
                    return self._answer(401, {"X-Error-Code": "RepoNotFound"}, b"no such repo", send_body)
                commit = revision if revision in hub.commits else hub.refs.get(revision)
                if commit is None:
                    return self._answer(404, {"X-Error-Code": "RevisionNotFound"}, b"no such revision", send_body)
                files = hub.commits[commit]
                if filename not in files:
                    return self._answer(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit},
                                        b"no such file", send_body)
                data = files[filename]
                if filename in LFS:
                    sha = hashlib.sha256(data).hexdigest()
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
                    return self._answer(302, {
                        "Location": hub.lfs_location or f"{hub.cdn_url}/lfs/{sha}?X-Signature=abc",
                        "X-Repo-Commit": commit, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                        "ETag": f'"{git_blob_sha1(pointer.encode())}"'}, b"", send_body)
                headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_sha1(data)}"',
                           "Content-Type": "application/octet-stream"}
                if hub.git_unsized:                 # HTTP/1.0 style: the body ends when the connection closes
                    self.close_connection = True
                    self.send_response(200)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if send_body:
                        self.wfile.write(data[: len(data) // 2] if hub.git_truncate else data)
                    return
                return self._answer(200, headers, data, send_body)

        return Handler

    # -- the CDN ------------------------------------------------------------------------------------------------
    def _cdn_handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.log.append(("cdn", "GET", self.path, self.headers.get("Authorization")))
                sha = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
                data = hub.blobs.get(sha)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if hub.cdn_redirect:
                    self.send_response(302)
                    self.send_header("Location", hub.cdn_redirect)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if hub.corrupt:
                    data = data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]
                self.send_response(200)
                if hub.cdn_unsized:
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                sent = 0
                hub.cdn_sent.append(sent)
                try:
                    if hub.truncate or hub.stall is not None:
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        hub.cdn_sent[-1] = sent = len(data) // 2
                        if hub.stall is not None:
                            hub.stall.wait(120)
                        self.close_connection = True
                        return
                    self.wfile.write(data)
                    hub.cdn_sent[-1] = sent = len(data)
                    for _ in range(hub.cdn_extra // 1024):      # bounded: stops early if the client hangs up
                        self.wfile.write(b"\0" * 1024)
                        hub.cdn_sent[-1] = sent = sent + 1024
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        return Handler
