"""A Hugging Face Hub stand-in on 127.0.0.1 for offline tests: just the endpoints ``huggingface_hub`` uses to create
model repos, commit files (regular uploads only, no LFS/Xet), and read them back.

Example:
    >>> with HubStandIn() as hub:  # doctest: +SKIP
    ...     HfApi(endpoint=hub.url, token="x").create_repo("org/name")
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REV = r"(?P<rev>refs%2Fpr%2F\d+|[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/{_REV}$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/{_REV}$"), "commit"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/{_REV}$"), "create_branch"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/discussions$"), "create_pull_request"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/discussions/(?P<num>\d+)$"), "pull_request"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(?:/revision/{_REV})?$"), "model_info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/{_REV}(?:/(?P<path>.*))?$"), "tree"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/{_REV}/(?P<path>.+)$"), "resolve"),
]


@dataclass
class Repo:
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # oid -> {path: content}
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> oid


class HubStandIn:
    """Serves repos from memory. ``requests`` lists ``(method, path)`` of every request received (never headers);
    ``authorized`` counts requests that carried ``Authorization: Bearer <token>``."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorized = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (a branch, ``refs/pr/N`` or a commit oid)."""
        repo = self.repos[repo_id]
        return repo.commits[repo.refs.get(revision, revision)]

    # Endpoints: each returns (status, headers, body).
    def create_repo(self, body: dict[str, Any], **_: str) -> tuple[int, dict[str, str], Any]:
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        if repo_id in self.repos:
            return 409, {}, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        empty = _oid(repo_id)
        private = body.get("visibility") == "private"
        self.repos[repo_id] = Repo(private=private, commits={empty: {}}, refs={"main": empty})
        return 200, {}, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}

    def validate_yaml(self, body: dict[str, Any], **_: str) -> tuple[int, dict[str, str], Any]:
        return 200, {}, {"errors": [], "warnings": []}

    def preupload(self, body: dict[str, Any], repo: str, rev: str) -> tuple[int, dict[str, str], Any]:
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body["files"]]
        return 200, {}, {"files": files, "commitOid": self.repos[repo].refs.get(rev)}

    def commit(self, body: bytes, repo: str, rev: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], Any]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        state = self.repos[repo]
        parent = state.refs[rev]
        files = dict(state.commits[parent])
        for line in lines[1:]:
            if line["key"] != "file":
                return 400, {}, {"error": f"The stand-in takes regular file additions only, got {line['key']!r}."}
            files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        oid = _oid(parent + json.dumps(sorted(files)) + str(len(state.commits)))
        state.commits[oid] = files
        pr_url = None
        if query.get("create_pr") == ["1"]:  # huggingface_hub without hf_xet opens the pull request this way
            rev = self.create_pull_request({"pullRequest": True}, repo)[2]["ref"]
            pr_url = f"{self.url}/{repo}/discussions/{rev.rsplit('/', 1)[1]}"
        state.refs[rev] = oid
        return 200, {}, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": pr_url}

    def create_pull_request(self, body: dict[str, Any], repo: str) -> tuple[int, dict[str, str], Any]:
        """A pull request is a ref ``refs/pr/N`` that starts at main (discussions without one are not served)."""
        state = self.repos[repo]
        number = 1 + sum(ref.startswith("refs/pr/") for ref in state.refs)
        state.refs[f"refs/pr/{number}"] = state.refs["main"]
        return 200, {}, {"num": number, "ref": f"refs/pr/{number}"}

    def pull_request(self, body: Any, repo: str, num: str) -> tuple[int, dict[str, str], Any]:
        if f"refs/pr/{num}" not in self.repos[repo].refs:
            return 404, {}, {"error": "Discussion not found"}
        details = {"title": "KALE upload", "num": int(num), "createdAt": "2026-01-01T00:00:00.000Z", "status": "draft"}
        details |= {"repo": {"name": repo, "type": "model"}, "isPullRequest": True, "events": []}
        return 200, {}, {**details, "changes": {"base": "refs/heads/main"}, "filesWithConflicts": []}

    def create_branch(self, body: dict[str, Any], repo: str, rev: str) -> tuple[int, dict[str, str], Any]:
        state = self.repos[repo]
        if rev in state.refs:
            return 409, {}, {"error": "Reference already exists"}
        state.refs[rev] = state.refs["main"]
        return 200, {}, {}

    def model_info(self, body: Any, repo: str, rev: str | None = None) -> tuple[int, dict[str, str], Any]:
        oid = self.repos[repo].refs.get(rev or "main", rev)
        files = self.files(repo, oid)
        siblings = [{"rfilename": path} for path in sorted(files)]
        info = {"id": repo, "modelId": repo, "sha": oid, "private": self.repos[repo].private}
        return 200, {}, {**info, "siblings": siblings}

    def tree(
        self, body: Any, repo: str, rev: str, query: dict[str, list[str]], path: str | None = None
    ) -> tuple[int, dict[str, str], Any]:
        files = self.files(repo, rev)
        prefix = f"{path.strip('/')}/" if path else ""
        below = {p[len(prefix) :]: content for p, content in files.items() if p.startswith(prefix)}
        if prefix and not below:
            return 404, {"X-Error-Code": "EntryNotFound"}, {"error": f"{path} does not exist"}
        recursive = query.get("recursive") in (["1"], ["true"], ["True"])
        entries: dict[str, dict[str, Any]] = {}
        for rest, content in sorted(below.items()):
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if depth == 1 or recursive:
                    entries.setdefault(folder, {"type": "directory", "oid": _oid(folder), "size": 0, "path": folder})
                if not recursive:
                    break
            if len(parts) == 1 or recursive:
                oid = _blob_oid(content)
                entries[prefix + rest] = {"type": "file", "oid": oid, "size": len(content), "path": prefix + rest}
        return 200, {}, list(entries.values())

    def resolve(self, body: Any, repo: str, rev: str, path: str) -> tuple[int, dict[str, str], Any]:
        oid = self.repos[repo].refs.get(rev, rev)
        if oid not in self.repos[repo].commits:
            return 404, {"X-Error-Code": "RevisionNotFound"}, {"error": f"Invalid rev id: {rev}"}
        files = self.repos[repo].commits[oid]
        if path not in files:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid}, {"error": f"{path} does not exist"}
        content = files[path]
        headers = {"X-Repo-Commit": oid, "ETag": f'"{_blob_oid(content)}"', "Content-Type": "application/octet-stream"}
        return 200, headers, content


def _handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet, and request lines never reach a log
            pass

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with hub.lock:
                hub.requests.append((method, url.path))
                if hub.token and self.headers.get("Authorization") == f"Bearer {hub.token}":
                    hub.authorized += 1
                status, headers, body = self._route(method, url.path, parse_qs(url.query), raw)
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            if not isinstance(body, bytes):
                headers = {"Content-Type": "application/json", **headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)

        def _route(self, method: str, path: str, query: dict[str, list[str]], raw: bytes):
            for verb, pattern, name in _ROUTES:
                match = pattern.match(path) if verb == method or (verb, method) == ("GET", "HEAD") else None
                if match is None:
                    continue
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                if "repo" in params and params["repo"] not in hub.repos:
                    return 404, {"X-Error-Code": "RepoNotFound"}, {"error": "Repository not found"}
                if name in ("tree", "commit"):
                    params["query"] = query
                body: Any = raw if name == "commit" else (json.loads(raw) if raw else None)
                try:
                    return getattr(hub, name)(body, **params)
                except KeyError as missing:
                    return 404, {"X-Error-Code": "RevisionNotFound"}, {"error": f"Unknown revision {missing}"}
            return 404, {}, {"error": f"The stand-in does not serve {method} {path}"}

    return Handler


def _oid(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


def _blob_oid(content: bytes) -> str:
    """The git blob id, which the Hub sends as the ETag of a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
