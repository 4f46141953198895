"""A small Hugging Face Hub-compatible HTTP server for tests (stdlib only).

The unmodified ``huggingface_hub`` client (directly, or through timm / transformers) can
create repos, push commits (regular + LFS files, branches, PRs) and download from it over
a real socket on 127.0.0.1.  Xet must be disabled on the client (``HF_HUB_DISABLE_XET=1``);
see ``/work/shared/docs/hub-protocol.md`` for the wire protocol this implements.

State lives in memory: repos keyed by ``(repo_type, repo_id)``, each with refs
(branches, tags, ``refs/pr/N``) pointing at immutable commits (a ``{path: StoredFile}``
map + parent), plus one server-wide LFS object store keyed by sha256.

Failure knobs for tests: ``require_token`` (401 for any other bearer token) and
``stop()`` (listening socket and open keep-alive connections are closed, so the client
sees a connection error).  Every request is appended to ``requests`` as a
``RecordedRequest`` so tests can assert what the client sent.

Usage::

    server = HubServer()
    url = server.start()          # "http://127.0.0.1:<free port>"
    ...
    server.stop()
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import re
import secrets
import socket
import sys
import threading
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HubServer", "RecordedRequest", "Headers", "StoredFile", "git_blob_sha1"]

LFS_POINTER_TEMPLATE = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
# What the Hub's default .gitattributes sends to LFS (subset relevant for ML artefacts).
LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".pkl",
    ".pickle", ".npy", ".npz", ".gz", ".zip", ".tar", ".tgz", ".zst", ".parquet", ".arrow",
    ".model", ".tflite", ".joblib", ".ot", ".7z", ".bz2", ".xz", ".rar", ".wasm",
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
DEFAULT_GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_sha1(content: bytes) -> str:
    """Git object id of ``content`` as a blob (what the Hub calls a regular file's oid/ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    """Timestamp in the Hub's format, parseable by ``huggingface_hub.utils.parse_datetime``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class StoredFile:
    """One file in a commit. ``lfs`` files are addressed by ``sha256`` (X-Linked-Etag) and
    their git oid is that of the LFS pointer; regular files are addressed by git blob sha1."""

    content: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.content)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @cached_property
    def pointer(self) -> bytes:
        return LFS_POINTER_TEMPLATE.format(oid=self.sha256, size=self.size).encode()

    @cached_property
    def git_oid(self) -> str:
        return git_blob_sha1(self.pointer if self.lfs else self.content)

    @property
    def etag(self) -> str:
        """The hash the client compares against its local file: sha256 for LFS, sha1 otherwise."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    files: dict[str, StoredFile]
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)  # "main", "refs/pr/1", "refs/tags/v1" -> sha
    commits: dict[str, Commit] = field(default_factory=dict)
    next_discussion: int = 1
    created_at: str = field(default_factory=_now)

    @property
    def branches(self) -> dict[str, str]:
        return {k: v for k, v in self.refs.items() if not k.startswith("refs/")}

    def resolve(self, revision: str) -> Commit | None:
        """Branch, ``refs/heads/x``, tag, ``refs/pr/N`` or (full or >= 7 char) commit sha."""
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/"):]
        for key in (revision, f"refs/tags/{revision}"):
            if key in self.refs:
                return self.commits[self.refs[key]]
        if revision in self.commits:
            return self.commits[revision]
        if re.fullmatch(r"[0-9a-f]{7,39}", revision):
            matches = [c for sha, c in self.commits.items() if sha.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        return None


class Headers(dict):
    """Header dict whose keys are stored lower-cased and looked up case-insensitively."""

    def __init__(self, items=()):
        super().__init__((k.lower(), v) for k, v in dict(items).items())

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key) -> bool:
        return super().__contains__(key.lower())

    def get(self, key: str, default=None):
        return super().get(key.lower(), default)


@dataclass(frozen=True)
class RecordedRequest:
    """What the client sent: method, raw path (with query), headers (case-insensitive), body."""

    method: str
    path: str
    headers: Headers
    body: bytes = b""

    @property
    def body_size(self) -> int:
        return len(self.body)

    @property
    def route(self) -> str:
        """URL-decoded path without the query string, handy for substring assertions."""
        return unquote(urlsplit(self.path).path)


class HubError(Exception):
    """Turned into a JSON error answer; ``code`` becomes the ``X-Error-Code`` header."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload, status: int = 200, headers: dict[str, str] | None = None) -> "Response":
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; stop() closes kept connections
    server: "_ThreadingServer"

    def log_message(self, format, *args):  # silence stderr access log
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self):
        body = self._read_body()
        hub = self.server.hub
        try:
            response = hub.dispatch(self.command, self.path, dict(self.headers.items()), body)
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            response = Response.json({"error": err.message, **err.extra}, err.status, headers)
        except Exception as err:  # a server bug must surface as a 500, not a hung client
            response = Response.json({"error": f"{type(err).__name__}: {err}"}, 500)
            hub.errors.append(err)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: "HubServer"

    def process_request(self, request, client_address):
        with self.hub._lock:
            self.hub._connections.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request, client_address):
        # a client hanging up, or stop() closing its connection, is not worth a traceback
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def shutdown_request(self, request):
        with self.hub._lock:
            self.hub._connections.discard(request)
        super().shutdown_request(request)


class HubServer:
    """In-memory Hub. ``start()`` binds 127.0.0.1 on a free port and returns the base URL.

    Attributes tests use: ``url``, ``requests`` (list of ``RecordedRequest``), ``errors``
    (server-side exceptions, should stay empty), ``unrouted`` (requests no handler knew),
    ``require_token`` (settable at any time),
    ``repos`` / ``lfs_objects`` (raw state), and helpers ``file_bytes`` / ``head`` / ``reset``.
    """

    def __init__(self, require_token: str | None = None, username: str = "user"):
        self.require_token = require_token
        self.username = username
        self.url: str | None = None
        self.requests: list[RecordedRequest] = []
        self.errors: list[Exception] = []
        self.unrouted: list[str] = []  # requests no handler matched (answered 404 without X-Error-Code)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self._upload_key = secrets.token_hex(8)  # LFS PUTs carry no Authorization, like S3 presigned URLs
        self._commit_counter = 0
        self._lock = threading.RLock()
        self._connections: set[socket.socket] = set()
        self._httpd: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        self._httpd = _ThreadingServer(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self
        port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"hub-server-{port}", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Close the listening socket and every kept-alive connection (idempotent)."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        self._thread.join(timeout=5)
        self._httpd = None

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def __enter__(self) -> "HubServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget all repos, LFS objects, recorded requests and errors."""
        with self._lock:
            self.repos.clear()
            self.lfs_objects.clear()
            self.requests.clear()
            self.errors.clear()
            self.unrouted.clear()

    # ------------------------------------------------------------------ test helpers
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def file_bytes(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        commit = self.repo(repo_id, repo_type).resolve(revision)
        return commit.files[path].content

    def requests_to(self, method: str, route_contains: str = "") -> list[RecordedRequest]:
        """Recorded requests with this method whose decoded route contains ``route_contains``."""
        return [r for r in self.requests if r.method == method and route_contains in r.route]

    # ------------------------------------------------------------------ dispatch
    def dispatch(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Response:
        """Route one request; raises ``HubError`` for error answers (the handler formats them)."""
        headers = Headers(headers)
        with self._lock:
            self.requests.append(RecordedRequest(method, raw_path, headers, body))
        split = urlsplit(raw_path)
        path, query = split.path, {k.lower(): v[-1] for k, v in parse_qs(split.query).items()}

        if method == "PUT" and path.startswith("/lfs-upload/"):
            return self._lfs_put(path.rsplit("/", 1)[-1], query, body)
        self._check_auth(headers)

        with self._lock:
            if path == "/api/whoami-v2" and method == "GET":
                return self._whoami()
            if path == "/api/repos/create" and method == "POST":
                return self._create_repo(json.loads(body or b"{}"))
            if path == "/api/repos/delete" and method == "DELETE":
                return self._delete_repo(json.loads(body or b"{}"))
            if path == "/api/validate-yaml" and method == "POST":
                return Response.json({"errors": [], "warnings": []})
            m = re.fullmatch(r"/api/(models|datasets|spaces)/(.+)", path)
            if m:
                return self._api(method, REPO_TYPES[m.group(1)], m.group(2).split("/"), query, body)
            m = re.fullmatch(r"/(datasets/|spaces/)?(.+)\.git/info/lfs/objects/batch", path)
            if m and method == "POST":
                repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(m.group(1) or "", "model")
                return self._lfs_batch(self._get_repo(repo_type, unquote(m.group(2))), json.loads(body))
            m = re.fullmatch(r"/(datasets/|spaces/)?(.+)", path)
            if m and method in ("GET", "HEAD"):
                repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(m.group(1) or "", "model")
                segments = m.group(2).split("/")
                for n in (2, 1):
                    if len(segments) > n + 2 and segments[n] == "resolve":
                        repo_id = unquote("/".join(segments[:n]))
                        revision = unquote(segments[n + 1])
                        file_path = unquote("/".join(segments[n + 2:]))
                        return self._resolve(repo_type, repo_id, revision, file_path, headers)
        self.unrouted.append(f"{method} {raw_path}")
        raise HubError(404, f"No route for {method} {path}")

    def _check_auth(self, headers: Headers) -> None:
        if self.require_token is None:
            return
        if headers.get("authorization", "") != f"Bearer {self.require_token}":
            raise HubError(401, INVALID_CREDENTIALS)

    def _split_repo(self, repo_type: str, segments: list[str]) -> tuple[str, list[str]]:
        """Split ``ns/name/action/...`` (or ``name/action/...``) into repo id and the rest."""
        segments = [unquote(s) if i < 2 else s for i, s in enumerate(segments)]
        if len(segments) >= 2 and (repo_type, "/".join(segments[:2])) in self.repos:
            return "/".join(segments[:2]), segments[2:]
        if (repo_type, segments[0]) in self.repos:
            return segments[0], segments[1:]
        n = 2 if len(segments) >= 2 else 1
        return "/".join(segments[:n]), segments[n:]

    def _get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository Not Found for url: {repo_type} {repo_id}.", "RepoNotFound")
        return repo

    def _get_commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # ------------------------------------------------------------------ account / repos
    def _whoami(self) -> Response:
        return Response.json({
            "type": "user", "id": "0" * 24, "name": self.username, "fullname": self.username,
            "email": f"{self.username}@example.com", "emailVerified": True, "canPay": False,
            "isPro": False, "orgs": [], "periodEnd": None,
            "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
        })

    def _repo_id_from_payload(self, payload: dict) -> str:
        name, org = payload["name"], payload.get("organization")
        if "/" in name:
            return name
        return f"{org or self.username}/{name}"

    def _create_repo(self, payload: dict) -> Response:
        repo_type = payload.get("type") or "model"
        repo_id = self._repo_id_from_payload(payload)
        url = f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            # create_repo(exist_ok=True) reads the repo url from the 409 body
            raise _conflict(f"You already created this {repo_type} repo", url=url)
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        repo = Repo(repo_type, repo_id, private)
        self.repos[(repo_type, repo_id)] = repo
        initial = self._new_commit(repo, None, "initial commit", "",
                                   {".gitattributes": StoredFile(DEFAULT_GITATTRIBUTES.encode(), False)})
        repo.refs["main"] = initial.sha
        return Response.json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict) -> Response:
        repo_type = payload.get("type") or "model"
        repo = self._get_repo(repo_type, self._repo_id_from_payload(payload))
        del self.repos[(repo.repo_type, repo.repo_id)]
        return Response.json({})

    def _new_commit(self, repo: Repo, parent: str | None, title: str, message: str,
                    files: dict[str, StoredFile]) -> Commit:
        self._commit_counter += 1
        digest = hashlib.sha1()
        for part in (repo.repo_id, parent or "", title, message, str(self._commit_counter)):
            digest.update(part.encode() + b"\0")
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + files[path].git_oid.encode())
        commit = Commit(digest.hexdigest(), parent, title, message, files)
        repo.commits[commit.sha] = commit
        return commit

    # ------------------------------------------------------------------ /api/{type}s/{repo}/...
    def _api(self, method: str, repo_type: str, segments: list[str], query: dict, body: bytes) -> Response:
        repo_id, rest = self._split_repo(repo_type, segments)
        repo = self._get_repo(repo_type, repo_id)
        action = rest[0] if rest else ""
        arg = unquote("/".join(rest[1:]))  # revision / branch name; quoted "refs%2Fpr%2F1" or plain
        if method == "GET" and action == "":
            return self._info(repo, self._get_commit(repo, "main"))
        if method == "GET" and action == "revision":
            return self._info(repo, self._get_commit(repo, arg))
        if method == "GET" and action == "tree":
            commit = self._get_commit(repo, unquote(rest[1]) if len(rest) > 1 else "main")
            prefix = unquote("/".join(rest[2:])).strip("/")
            return self._tree(commit, prefix, query.get("recursive", "").lower() in ("1", "true"))
        if method == "POST" and action == "paths-info":
            return self._paths_info(self._get_commit(repo, arg), body)
        if method == "POST" and action == "preupload":
            return self._preupload(repo, arg, json.loads(body))
        if method == "POST" and action == "commit":
            return self._commit(repo, arg, body, query.get("create_pr", "").lower() in ("1", "true"))
        if action == "branch" and method in ("POST", "DELETE"):
            return self._branch(repo, arg, method, json.loads(body or b"{}"))
        if action == "tag" and method == "POST":
            payload = json.loads(body or b"{}")
            if f"refs/tags/{payload['tag']}" in repo.refs:
                raise _conflict(f"Tag {payload['tag']} already exists")
            repo.refs[f"refs/tags/{payload['tag']}"] = self._get_commit(repo, arg).sha
            return Response.json({})
        if method == "GET" and action == "refs":
            return self._refs(repo, query.get("include_prs", "").lower() in ("1", "true"))
        if method == "GET" and action == "commits":
            return self._commits(repo, self._get_commit(repo, arg or "main"))
        self.unrouted.append(f"{method} /api/{repo_type}s/{repo_id}/{'/'.join(rest)}")
        raise HubError(404, f"No route for {method} api/{repo_type}s/{repo_id}/{'/'.join(rest)}")

    def _info(self, repo: Repo, commit: Commit) -> Response:
        siblings = [
            {"rfilename": path, "size": f.size, "blobId": f.git_oid,
             **({"lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}} if f.lfs else {})}
            for path, f in sorted(commit.files.items())
        ]
        return Response.json({
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.sha,
            "lastModified": commit.date, "createdAt": repo.created_at, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings,
        })

    def _tree(self, commit: Commit, prefix: str, recursive: bool) -> Response:
        if prefix and prefix not in _folders(commit.files) and prefix not in commit.files:
            raise HubError(404, f"Entry not found: {prefix}", "EntryNotFound")
        base = f"{prefix}/" if prefix else ""
        entries, seen_dirs = [], set()
        for path in sorted(commit.files):
            if not path.startswith(base):
                continue
            parts = path[len(base):].split("/")
            for depth in range(1, len(parts)):
                folder = base + "/".join(parts[:depth])
                if folder not in seen_dirs and (recursive or depth == 1):
                    seen_dirs.add(folder)
                    entries.append({"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                    "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                entries.append(_file_entry(path, commit.files[path]))
        return Response.json(entries)

    def _paths_info(self, commit: Commit, body: bytes) -> Response:
        try:
            payload = json.loads(body)
            paths = payload.get("paths", [])
        except ValueError:  # form-encoded: paths=a&paths=b&expand=...
            paths = parse_qs(body.decode()).get("paths", [])
        paths = [paths] if isinstance(paths, str) else paths
        out = []
        folders = _folders(commit.files)
        for p in paths:
            p = p.strip("/")
            if p in commit.files:
                out.append(_file_entry(p, commit.files[p]))
            elif p in folders:
                out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
        return Response.json(out)

    def _refs(self, repo: Repo, include_prs: bool) -> Response:
        def ref(name: str, full: str, sha: str) -> dict:
            return {"name": name, "ref": full, "targetCommit": sha}
        out = {
            "branches": [ref(b, f"refs/heads/{b}", s) for b, s in repo.branches.items()],
            "converts": [],
            "tags": [ref(k[len("refs/tags/"):], k, s) for k, s in repo.refs.items() if k.startswith("refs/tags/")],
        }
        if include_prs:
            out["pullRequests"] = [ref(k[len("refs/"):], k, s) for k, s in repo.refs.items() if k.startswith("refs/pr/")]
        return Response.json(out)

    def _commits(self, repo: Repo, commit: Commit | None) -> Response:
        out = []
        while commit is not None:
            out.append({"id": commit.sha, "title": commit.title, "message": commit.message,
                        "authors": [{"user": self.username}], "date": commit.date})
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return Response.json(out)

    def _branch(self, repo: Repo, branch: str, method: str, payload: dict) -> Response:
        if method == "DELETE":
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            del repo.refs[branch]
            return Response.json({})
        if branch in repo.refs:
            raise _conflict(f"Reference already exists: refs/heads/{branch}")
        start = payload.get("startingPoint") or "main"
        repo.refs[branch] = self._get_commit(repo, start).sha
        return Response.json({})

    # ------------------------------------------------------------------ upload
    def _preupload(self, repo: Repo, revision: str, payload: dict) -> Response:
        commit = repo.resolve(revision)  # a not-yet-existing branch/PR simply has no remote oids
        out = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            sample = base64.b64decode(item.get("sample", ""))
            is_lfs = path.lower().endswith(LFS_SUFFIXES) or size >= LFS_SIZE_THRESHOLD or b"\0" in sample
            entry = {"path": path, "uploadMode": "lfs" if is_lfs else "regular", "shouldIgnore": False}
            existing = commit.files.get(path) if commit else None
            if existing is not None:
                entry["oid"] = existing.etag
            out.append(entry)
        return Response.json({"files": out, "commitOid": commit.sha if commit else None})

    def _lfs_batch(self, repo: Repo, payload: dict) -> Response:
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the upload operation is supported")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs_objects:  # no "actions" tells the client the object is already stored
                entry["actions"] = {"upload": {
                    "href": f"{self.url}/lfs-upload/{oid}?size={size}&key={self._upload_key}",
                    "expires_at": "2099-01-01T00:00:00Z",
                }}
            objects.append(entry)
        return Response.json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                             headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str, query: dict, body: bytes) -> Response:
        if query.get("key") != self._upload_key:
            raise HubError(403, "Bad LFS upload signature")
        if hashlib.sha256(body).hexdigest() != oid or len(body) != int(query.get("size", -1)):
            raise HubError(400, f"LFS object {oid} does not match its sha256/size")
        with self._lock:
            self.lfs_objects[oid] = body
        return Response(200)

    def _commit(self, repo: Repo, revision: str, body: bytes, create_pr: bool) -> Response:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((ln["value"] for ln in lines if ln["key"] == "header"), {})
        parent_sha = header.get("parentCommit")
        base = self._get_commit(repo, revision)  # the Hub does not create branches on commit
        if parent_sha:
            parent = self._get_commit(repo, parent_sha)
            if not create_pr and parent.sha != base.sha:
                raise HubError(412, f"A commit has happened since. Please refresh and try again "
                                    f"(parent {parent_sha} is not the head of {revision}).")
            base = parent
        files = dict(base.files)
        for line in lines:
            key, value = line["key"], line.get("value", {})
            if key == "file":
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                content = self.lfs_objects.get(value["oid"])
                if content is None:
                    raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = StoredFile(content, True)
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, f"Entry not found: {value['path']}", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(folder)}
            elif key != "header":
                raise HubError(400, f"Unsupported commit operation {key!r}")
        commit = self._new_commit(repo, base.sha, header.get("summary", ""), header.get("description", ""), files)
        repo_url = f"{self.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"
        answer = {"success": True, "commitOid": commit.sha, "commitUrl": f"{repo_url}/commit/{commit.sha}"}
        if create_pr:
            number, repo.next_discussion = repo.next_discussion, repo.next_discussion + 1
            repo.refs[f"refs/pr/{number}"] = commit.sha
            answer["pullRequestUrl"] = f"{repo_url}/discussions/{number}"
        else:
            ref = revision[len("refs/heads/"):] if revision.startswith("refs/heads/") else revision
            if ref in repo.refs:
                repo.refs[ref] = commit.sha
            # a commit to a bare sha creates a dangling commit, as on the Hub
        return Response.json(answer)

    # ------------------------------------------------------------------ download
    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, headers: Headers) -> Response:
        repo = self._get_repo(repo_type, repo_id)
        commit = self._get_commit(repo, revision)
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        out_headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream", "ETag": f'"{stored.git_oid}"'}
        if stored.lfs:
            out_headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(stored.size),
                                "ETag": f'"{stored.sha256}"'})
        content = stored.content
        range_header = headers.get("range")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip()) if range_header else None
        if m and (m.group(1) or m.group(2)):
            size = len(content)
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range "bytes=-N"
                start, end = max(size - int(m.group(2)), 0), size - 1
            if start >= size:
                return Response(416, b"", {"Content-Range": f"bytes */{size}", **out_headers})
            out_headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return Response(206, content[start:end + 1], out_headers)
        return Response(200, content, out_headers)


def _conflict(message: str, **extra) -> HubError:
    return HubError(409, message, **extra)


def _folders(files: dict[str, StoredFile]) -> set[str]:
    return {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}


def _file_entry(path: str, stored: StoredFile) -> dict:
    entry = {"type": "file", "oid": stored.git_oid, "size": stored.size, "path": path}
    if stored.lfs:
        entry["lfs"] = {"oid": stored.sha256, "size": stored.size, "pointerSize": len(stored.pointer)}
    return entry
