"""A local, in-memory stand-in for the Hugging Face Hub HTTP API, for tests.

Why: the test suite must prove that `push_to_hub` / `from_pretrained` work through the *real*
`huggingface_hub` and `transformers` clients, but nothing may contact huggingface.co and no
installable open-source server accepts uploads. This module is standard library only.

What it implements (huggingface_hub 2.4 / transformers 5.23, with ``HF_HUB_DISABLE_XET=1``):

* A git-like store: repos (model, dataset, space) -> branches -> commits. A commit has a 40-hex
  id, a parent and a file table ``path -> StoredFile`` (bytes, LFS flag, sha256, git blob sha1).
  Every repo starts with a system "initial commit" holding ``.gitattributes``, like the Hub.
* Upload: ``POST /api/repos/create`` (409 if it exists), ``DELETE /api/repos/delete``,
  ``POST /api/validate-yaml`` (no-op), ``POST /api/{type}s/{id}/preupload/{rev}``, the git-LFS
  batch API (``POST /{id}.git/info/lfs/objects/batch``, ``PUT`` upload, ``POST`` verify),
  ``POST /api/{type}s/{id}/commit/{rev}`` (NDJSON: header with optional ``parentCommit`` -> 412
  when stale; ``file``, ``lfsFile``, ``deletedFile``, ``deletedFolder``), and branches
  (``POST``/``DELETE /api/{type}s/{id}/branch/{name}``). Minimal pull requests: a commit with
  ``?create_pr=1`` goes on top of the target branch (or ``parentCommit``) without moving it and
  opens ``refs/pr/N`` (answered as ``pullRequestUrl`` ``.../discussions/N``); ``refs/pr/N``
  resolves everywhere a revision is accepted, takes further commits, and is listed by ``refs``.
* Read: ``GET /api/{type}s/{id}`` and ``.../revision/{rev}`` (repo info with ``sha``,
  ``siblings``), ``.../tree/{rev}[/{path}]``, ``.../refs``, ``.../commits/{rev}``,
  ``HEAD``/``GET /{id}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``
  (``X-Linked-Etag``/``X-Linked-Size`` for LFS files), ``Content-Length``, ``Accept-Ranges`` and
  ``Range`` (206/416), ``GET /api/whoami-v2``, ``GET /api/agent-harnesses`` (empty registry).
* Errors as the Hub sends them, so the clients raise their usual exceptions: ``X-Error-Code``
  ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound`` (+ ``X-Repo-Commit`` on a missing
  file, which the client uses to cache the non-existence); a bad ``Authorization: Bearer`` token
  gets 401 with ``X-Error-Message: Invalid credentials in Authorization header`` (the client
  raises a plain ``HfHubHTTPError``); a private or missing repo read anonymously gets 401 +
  ``RepoNotFound`` (``RepositoryNotFoundError``), as on the Hub.
* Test hooks: ``request_log`` (every ``(method, path)``), ``response_log`` (``(method, path,
  status)``), ``unknown_routes`` (requests no route matched, answered 501 Not Implemented, a 5xx
  server error) and ``errors`` (tracebacks of handler crashes, answered 500). A client upgrade
  that changes the protocol shows up in ``unknown_routes``: assert it is empty after each test.
  Why 501 and not 500 for an unknown route: huggingface_hub retries 500 with backoff (~20 s) and
  hf_xet retries its token route on 500 for minutes, so a 500 turns protocol drift into a hang;
  501 is retried by neither and fails the client in under a second (``unknown_route_status=500``
  restores plain 500).

Known differences from the real Hub:

* No Xet: with ``hf_xet`` installed the client uploads ``lfs`` files through Xet
  (``/api/{type}s/{id}/xet-write-token/{rev}``), which lands in ``unknown_routes``; run clients
  with ``HF_HUB_DISABLE_XET=1`` (``client_env`` does). Downloads never get ``X-Xet-Hash``.
* No CDN: LFS files are served directly by ``/resolve`` with 200 (the Hub answers 302 to a
  signed CDN URL); the ``PUT`` upload URL is on this server, not S3, and needs no token but only
  accepts an object announced by a batch call (like a pre-signed URL). No multipart LFS upload.
* ``validate-yaml`` accepts everything; ``.gitignore`` / ``gitIgnore`` is not applied
  (``shouldIgnore`` is always false); LFS-vs-regular is decided by suffix, a NUL byte in the
  512-byte sample, or size >= ``lfs_threshold`` (Hub: ``.gitattributes`` + binary sniffing).
* Pull requests are only refs: no discussion, comments, status, merge or ``/api/.../discussions``
  routes (those land in ``unknown_routes``). No tags, gating, or ``CommitOperationCopy`` (its
  ``POST .../paths-info/{rev}`` has no route). The tree listing is never paginated (no
  ``Link`` header); ``expand=`` extras (last commit, security status) are not returned.
* Repo ids must be ``namespace/name`` (the Hub also has legacy one-segment ids). Any valid token
  may write to any namespace; the token's user name is the namespace when ``create_repo`` gets
  none. A commit that changes nothing is accepted and creates a new commit with the same
  ``tree_id`` (compare ``commits(...)[0].tree_id``), as git does for an empty commit.
* HF_ENDPOINT is read when ``huggingface_hub`` is imported: run clients in a subprocess
  (``run_client``) rather than in the pytest process.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

DEFAULT_TOKEN = "hf_local_test_token_0123456789"
DEFAULT_USER = "local-user"

# Suffixes the Hub's default .gitattributes stores in LFS (subset; enough for model repos).
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".onnx",
    ".msgpack",
    ".npy",
    ".npz",
    ".pkl",
    ".pickle",
    ".model",
    ".gz",
    ".zip",
    ".tar",
    ".arrow",
    ".parquet",
)
GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
).encode()

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_LFS_JSON = "application/vnd.git-lfs+json"


# --------------------------------------------------------------------------------------------------
# Store
# --------------------------------------------------------------------------------------------------


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a blob: sha1 of ``b"blob <len>\\0" + data`` (the Hub's regular-file oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-LFS pointer file stored in git in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def tree_id(files: Mapping[str, StoredFile]) -> str:
    """Hash of a file table: equal for two commits iff they hold the same paths and contents."""
    listing = "".join(f"{path}\0{f.blob_oid}\n" for path, f in sorted(files.items()))
    return hashlib.sha1(listing.encode()).hexdigest()


def pull_request_number(revision: str) -> int | None:
    """``"refs/pr/3"`` -> 3; None for anything else."""
    match = re.fullmatch(r"refs/pr/([1-9][0-9]*)", revision)
    return int(match.group(1)) if match else None


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp % 1 * 1000):03d}Z"


@dataclass(frozen=True)
class StoredFile:
    """One file of a commit. ``blob_oid`` is the git blob id (of the pointer file for LFS)."""

    data: bytes
    is_lfs: bool
    sha256: str
    blob_oid: str

    @classmethod
    def make(cls, data: bytes, is_lfs: bool) -> StoredFile:
        sha256 = hashlib.sha256(data).hexdigest()
        blob = lfs_pointer(sha256, len(data)) if is_lfs else data
        return cls(data=data, is_lfs=is_lfs, sha256=sha256, blob_oid=git_blob_sha1(blob))

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def etag(self) -> str:
        # The Hub's ETag is the sha256 for LFS files and the git blob id for regular ones.
        return self.sha256 if self.is_lfs else self.blob_oid


@dataclass(frozen=True)
class Commit:
    oid: str
    parent: str | None
    title: str
    description: str
    author: str
    created_at: float
    files: Mapping[str, StoredFile]

    @property
    def tree_id(self) -> str:
        return tree_id(self.files)


@dataclass
class Repo:
    repo_type: str  # "model" | "dataset" | "space"
    repo_id: str  # "namespace/name"
    private: bool
    created_at: float
    branches: dict[str, str] = field(default_factory=dict)  # branch -> head commit oid
    commits: dict[str, Commit] = field(default_factory=dict)  # oid -> commit (all branches)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes (uploaded, verified)
    pending_lfs: dict[str, int] = field(default_factory=dict)  # sha256 -> size announced by a batch call
    pull_requests: dict[int, str] = field(default_factory=dict)  # PR number -> head commit oid (refs/pr/N)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name, ``refs/pr/N`` or a full 40-hex commit id -> commit (None if unknown)."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        pr_number = pull_request_number(revision)
        if pr_number is not None:
            oid = self.pull_requests.get(pr_number)
            return self.commits[oid] if oid else None
        return self.commits.get(revision) if re.fullmatch(r"[0-9a-f]{40}", revision) else None

    def history(self, revision: str) -> list[Commit]:
        """Commits reachable from ``revision``, newest first (like ``git log``)."""
        commit = self.resolve(revision)
        out: list[Commit] = []
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out


class HubError(Exception):
    """An error answer: HTTP status, optional ``X-Error-Code`` and a message (header + JSON body)."""

    def __init__(
        self,
        status: int,
        message: str,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = dict(headers or {})


class Unsupported(Exception):
    """A request that matched no route, or a feature this server does not implement."""


@dataclass
class Request:
    method: str
    path: str  # raw path, percent-encoded as sent
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    base_url: str  # "http://host:port", from the Host header (what the client calls HF_ENDPOINT)
    user: str | None = None  # set by authentication
    params: dict[str, str] = field(default_factory=dict)  # regex groups of the matched route

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    def flag(self, name: str) -> bool:
        return self.query.get(name, [""])[0].lower() in ("1", "true")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, content_type: str = "application/json") -> Response:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": content_type})


# --------------------------------------------------------------------------------------------------
# Protocol: one method per route family
# --------------------------------------------------------------------------------------------------

# Path pieces. A repo id is exactly two raw segments; a revision is one segment (the clients
# quote it with safe=""), so "refs/pr/1" or "feature/x" arrive as "refs%2Fpr%2F1".
_API_REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_GIT_REPO = r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+?)\.git/info/lfs/objects"
_WEB_REPO = r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)"


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: str  # name of a HubApp method taking (Request) -> Response


def _route(method: str, pattern: str, handler: str) -> Route:
    return Route(method, re.compile(pattern), handler)


ROUTES: tuple[Route, ...] = (
    _route("GET", r"/api/agent-harnesses", "agent_harnesses"),
    _route("GET", r"/api/whoami-v2", "whoami"),
    _route("POST", r"/api/repos/create", "create_repo"),
    _route("DELETE", r"/api/repos/delete", "delete_repo"),
    _route("POST", r"/api/validate-yaml", "validate_yaml"),
    _route("GET", _API_REPO, "repo_info"),
    _route("GET", _API_REPO + r"/revision/(?P<rev>[^/]+)", "repo_info"),
    _route("GET", _API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
    _route("GET", _API_REPO + r"/refs", "refs"),
    _route("GET", _API_REPO + r"/commits/(?P<rev>[^/]+)", "list_commits"),
    _route("POST", _API_REPO + r"/preupload/(?P<rev>[^/]+)", "preupload"),
    _route("POST", _API_REPO + r"/commit/(?P<rev>[^/]+)", "commit"),
    _route("POST", _API_REPO + r"/branch/(?P<branch>[^/]+)", "create_branch"),
    _route("DELETE", _API_REPO + r"/branch/(?P<branch>[^/]+)", "delete_branch"),
    _route("POST", _GIT_REPO + r"/batch", "lfs_batch"),
    _route("PUT", _GIT_REPO + r"/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
    _route("POST", _GIT_REPO + r"/verify", "lfs_verify"),
    _route("HEAD", _WEB_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    _route("GET", _WEB_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
)


class HubApp:
    """The Hub protocol over an in-memory store; independent of the HTTP plumbing."""

    def __init__(self, tokens: Mapping[str, str], lfs_threshold: int) -> None:
        self.tokens = dict(tokens)  # token -> user name
        self.lfs_threshold = lfs_threshold
        self.repos: dict[tuple[str, str], Repo] = {}
        # One lock for the whole store: requests are small and tests need consistency, not speed.
        self.lock = threading.RLock()
        self._counter = itertools.count()

    # -- helpers -------------------------------------------------------------------------------

    def authenticate(self, req: Request) -> None:
        header = req.headers.get("Authorization")
        if header is None:
            return
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
        if token not in self.tokens:
            # What the Hub answers to a wrong token; huggingface_hub turns it into HfHubHTTPError.
            raise HubError(401, "Invalid credentials in Authorization header")
        req.user = self.tokens[token]

    @staticmethod
    def _require_user(req: Request) -> str:
        if req.user is None:
            raise HubError(401, "You must be authenticated to access this resource (send a token)")
        return req.user

    def _repo(self, req: Request, repo_type: str | None = None, repo_id: str | None = None) -> Repo:
        """The repo named by the route (or the arguments); missing or private+anonymous -> RepoNotFound."""
        repo_type = repo_type or _REPO_TYPES.get(req.params.get("type") or "models", "model")
        repo_id = repo_id or unquote(req.params["repo"])
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and req.user is None):
            # The Hub answers 401 to anonymous callers (it does not reveal whether the repo exists).
            raise HubError(404 if req.user else 401, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _commit(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _new_commit(
        self,
        repo: Repo,
        parent: Commit | None,
        files: Mapping[str, StoredFile],
        title: str,
        description: str,
        author: str,
    ) -> Commit:
        created_at = time.time()
        # Unique even for an empty commit (same tree, same message): parent + a counter enter the hash.
        seed = f"{parent.oid if parent else ''}\n{title}\n{description}\n{author}\n{created_at}\n{next(self._counter)}"
        oid = hashlib.sha1(f"tree {tree_id(files)}\n{seed}".encode()).hexdigest()
        commit = Commit(
            oid, parent.oid if parent else None, title, description, author, created_at, dict(files)
        )
        repo.commits[oid] = commit
        return commit

    def _is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        return path.endswith(LFS_SUFFIXES) or size >= self.lfs_threshold or b"\0" in sample

    @staticmethod
    def _repo_url(req: Request, repo: Repo) -> str:
        return f"{req.base_url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # -- misc ----------------------------------------------------------------------------------

    def agent_harnesses(self, req: Request) -> Response:
        # Fetched by huggingface_hub's user-agent code; an empty registry disables detection.
        return Response.json({"standardEnvVars": [], "harnesses": {}})

    def whoami(self, req: Request) -> Response:
        user = self._require_user(req)
        return Response.json(
            {
                "type": "user",
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
            }
        )

    def validate_yaml(self, req: Request) -> Response:
        # No-op: the Hub validates the README metadata; we accept anything.
        return Response.json({"errors": [], "warnings": []})

    # -- repos ---------------------------------------------------------------------------------

    def create_repo(self, req: Request) -> Response:
        user = self._require_user(req)
        body = req.json()
        repo_type = body.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        repo_id = f"{body.get('organization') or user}/{body['name']}"
        private = body.get("visibility", "private" if body.get("private") else "public") == "private"
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                url = f"{req.base_url}/{_URL_PREFIX[repo_type]}{repo_id}"
                return Response.json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
            repo = Repo(repo_type, repo_id, private, time.time())
            initial = self._new_commit(
                repo,
                None,
                {".gitattributes": StoredFile.make(GITATTRIBUTES, False)},
                "initial commit",
                "",
                "system",
            )
            repo.branches["main"] = initial.oid
            self.repos[(repo_type, repo_id)] = repo
        return Response.json({"url": self._repo_url(req, repo), "name": repo_id, "id": repo_id})

    def delete_repo(self, req: Request) -> Response:
        user = self._require_user(req)
        body = req.json()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or user}/{body['name']}"
        with self.lock:
            self._repo(req, repo_type, repo_id)
            del self.repos[(repo_type, repo_id)]
        return Response()

    def repo_info(self, req: Request) -> Response:
        with self.lock:
            repo = self._repo(req)
            commit = self._commit(repo, unquote(req.params.get("rev") or "main"))
        siblings = []
        for path, f in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if req.flag("blobs"):  # files_metadata=True
                sibling.update(size=f.size, blobId=f.blob_oid)
                if f.is_lfs:
                    sibling["lfs"] = {
                        "sha256": f.sha256,
                        "size": f.size,
                        "pointerSize": len(lfs_pointer(f.sha256, f.size)),
                    }
            siblings.append(sibling)
        namespace = repo.repo_id.split("/")[0]
        return Response.json(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": namespace,
                "sha": commit.oid,
                "lastModified": _iso(commit.created_at),
                "createdAt": _iso(repo.created_at),
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(f.size for f in commit.files.values()),
            }
        )

    def tree(self, req: Request) -> Response:
        with self.lock:
            repo = self._repo(req)
            commit = self._commit(repo, unquote(req.params["rev"]))
        prefix = unquote(req.params.get("path") or "").strip("/")
        recursive = req.flag("recursive")
        base = f"{prefix}/" if prefix else ""
        files = {p: f for p, f in commit.files.items() if p.startswith(base)}
        if prefix and not files:
            raise HubError(404, f"{prefix} does not exist on {req.params['rev']}", "EntryNotFound")
        entries: dict[str, dict[str, Any]] = {}
        for path, f in sorted(files.items()):
            parts = path[len(base) :].split("/")
            # Folders on the way to the file (only the first level unless recursive).
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folder = base + "/".join(parts[:depth])
                entries.setdefault(
                    folder,
                    {
                        "type": "directory",
                        "oid": hashlib.sha1(folder.encode()).hexdigest(),
                        "size": 0,
                        "path": folder,
                    },
                )
            if len(parts) == 1 or recursive:
                entry: dict[str, Any] = {"type": "file", "oid": f.blob_oid, "size": f.size, "path": path}
                if f.is_lfs:
                    entry["lfs"] = {
                        "oid": f.sha256,
                        "size": f.size,
                        "pointerSize": len(lfs_pointer(f.sha256, f.size)),
                    }
                entries[path] = entry
        return Response.json(list(entries.values()))

    def refs(self, req: Request) -> Response:
        with self.lock:
            repo = self._repo(req)
            branches = [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
                for name, oid in repo.branches.items()
            ]
            pull_requests = [
                {"name": f"refs/pr/{number}", "ref": f"refs/pr/{number}", "targetCommit": oid}
                for number, oid in sorted(repo.pull_requests.items())
            ]
        return Response.json(
            {"branches": branches, "converts": [], "tags": [], "pullRequests": pull_requests}
        )

    def list_commits(self, req: Request) -> Response:
        with self.lock:
            repo = self._repo(req)
            self._commit(repo, unquote(req.params["rev"]))
            history = repo.history(unquote(req.params["rev"]))
        return Response.json(
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.description,
                    "authors": [{"user": c.author}],
                    "date": _iso(c.created_at),
                }
                for c in history
            ]
        )

    def create_branch(self, req: Request) -> Response:
        self._require_user(req)
        branch = unquote(req.params["branch"])
        start = req.json().get("startingPoint") or "main"
        with self.lock:
            repo = self._repo(req)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = self._commit(repo, start).oid
        return Response.json({})

    def delete_branch(self, req: Request) -> Response:
        self._require_user(req)
        branch = unquote(req.params["branch"])
        with self.lock:
            repo = self._repo(req)
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            del repo.branches[branch]
        return Response.json({})

    # -- upload --------------------------------------------------------------------------------

    def preupload(self, req: Request) -> Response:
        self._require_user(req)
        with self.lock:
            repo = self._repo(req)
            commit = self._commit(repo, unquote(req.params["rev"]))
        answers = []
        for item in req.json().get("files", []):
            path, size = item["path"], int(item["size"])
            is_lfs = self._is_lfs(path, size, base64.b64decode(item.get("sample", "")))
            current = commit.files.get(path)
            # The client skips a file whose oid matches its own hash: sha256 for lfs, git sha1 else.
            oid = None if current is None else (current.sha256 if is_lfs else current.blob_oid)
            answers.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if is_lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return Response.json({"files": answers, "commitOid": commit.oid})

    def lfs_batch(self, req: Request) -> Response:
        self._require_user(req)
        body = req.json()
        if body.get("operation") != "upload":
            raise Unsupported(f"LFS batch operation {body.get('operation')!r} (only 'upload' is implemented)")
        objects = []
        with self.lock:
            repo = self._repo(req)
            git_url = f"{self._repo_url(req, repo)}.git/info/lfs/objects"
            for obj in body.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                if oid in repo.lfs_objects:
                    objects.append({"oid": oid, "size": size})  # no "actions": already stored
                    continue
                repo.pending_lfs[oid] = size
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {
                            "upload": {"href": f"{git_url}/{oid}"},
                            "verify": {"href": f"{git_url}/verify", "header": {}},
                        },
                    }
                )
        return Response.json(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, content_type=_LFS_JSON
        )

    def lfs_upload(self, req: Request) -> Response:
        # Stands for the pre-signed S3 URL: no token needed, but only for an object a batch announced.
        oid = req.params["oid"]
        with self.lock:
            repo = self.repos.get(
                (_REPO_TYPES.get(req.params.get("type") or "models", "model"), unquote(req.params["repo"]))
            )
            if repo is None or oid not in repo.pending_lfs:
                raise HubError(403, "Upload URL not issued by a batch call")
            if hashlib.sha256(req.body).hexdigest() != oid or len(req.body) != repo.pending_lfs[oid]:
                raise HubError(400, "Uploaded content does not match the announced oid/size")
            repo.lfs_objects[oid] = req.body
            del repo.pending_lfs[oid]
        return Response(200, b"", {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})

    def lfs_verify(self, req: Request) -> Response:
        self._require_user(req)
        body = req.json()
        with self.lock:
            repo = self._repo(req)
            data = repo.lfs_objects.get(body.get("oid", ""))
        if data is None or len(data) != int(body.get("size", -1)):
            raise HubError(404, f"LFS object {body.get('oid')} not found or wrong size")
        return Response.json({"success": True}, content_type=_LFS_JSON)

    def commit(self, req: Request) -> Response:
        user = self._require_user(req)
        create_pr = req.flag("create_pr")
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line must be the commit header")
        header = lines[0]["value"]
        ref = unquote(req.params["rev"])
        pr_number = pull_request_number(ref)
        with self.lock:
            repo = self._repo(req)
            if ref not in repo.branches and pr_number not in repo.pull_requests:
                # Commits go to branches and open PRs only (a commit id or a missing branch is refused).
                raise HubError(404, f"Invalid rev id: {ref}", "RevisionNotFound")
            if create_pr and pr_number is not None:
                raise HubError(400, "create_pr=1 needs a branch, not a pull request ref")
            head = repo.resolve(ref)
            assert head is not None
            parent_commit = header.get("parentCommit")
            if create_pr and parent_commit is not None:
                # A PR may start from an older commit of the branch (the Hub's create_pr + parent_commit).
                head = self._commit(repo, parent_commit)
            elif parent_commit is not None and parent_commit != head.oid:
                raise HubError(
                    412, f"A commit has happened since {parent_commit}. Please refresh and try again."
                )
            files = dict(head.files)
            for line in lines[1:]:
                self._apply_operation(repo, files, line["key"], line["value"])
            commit = self._new_commit(
                repo, head, files, header.get("summary", ""), header.get("description", ""), user
            )
            pull_request_url = None
            if create_pr:  # the branch stays where it was; the commit lives on refs/pr/N
                pr_number = max(repo.pull_requests, default=0) + 1
                repo.pull_requests[pr_number] = commit.oid
                pull_request_url = f"{self._repo_url(req, repo)}/discussions/{pr_number}"
            elif pr_number is not None:
                repo.pull_requests[pr_number] = commit.oid
            else:
                repo.branches[ref] = commit.oid
        return Response.json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self._repo_url(req, repo)}/commit/{commit.oid}",
                "commitMessage": commit.title,
                "hookOutput": "",
                "pullRequestUrl": pull_request_url,
            }
        )

    @staticmethod
    def _apply_operation(repo: Repo, files: dict[str, StoredFile], key: str, value: dict[str, Any]) -> None:
        path = value["path"]
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
            files[path] = StoredFile.make(base64.b64decode(value["content"]), False)
        elif key == "lfsFile":
            data = repo.lfs_objects.get(value["oid"])
            if data is None:
                raise HubError(
                    422,
                    f"Your push was rejected because an LFS pointer pointed to a file that does not exist ({path})",
                )
            files[path] = StoredFile.make(data, True)
        elif key == "deletedFile":
            if path not in files:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            del files[path]
        elif key == "deletedFolder":
            prefix = path.rstrip("/") + "/"
            doomed = [p for p in files if p.startswith(prefix)]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in doomed:
                del files[p]
        else:
            raise Unsupported(f"commit operation {key!r}")

    # -- download ------------------------------------------------------------------------------

    def resolve(self, req: Request) -> Response:
        with self.lock:
            repo = self._repo(req)
            commit = self._commit(repo, unquote(req.params["rev"]))
        path = unquote(req.params["path"])
        stored = commit.files.get(path)
        if stored is None:
            # X-Repo-Commit lets the client cache "this file does not exist at this commit".
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{stored.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'inline; filename="{quote(path.rsplit("/", 1)[-1])}";',
        }
        if stored.is_lfs:
            # The Hub sends these on its 302 to the CDN; the client prefers them over ETag/Content-Length.
            headers["X-Linked-Etag"] = f'"{stored.sha256}"'
            headers["X-Linked-Size"] = str(stored.size)
        byte_range = _parse_range(req.headers.get("Range"), stored.size)
        if byte_range is None:
            return Response(200, stored.data, headers)
        if byte_range == (-1, -1):
            headers["Content-Range"] = f"bytes */{stored.size}"
            return Response(416, b"", headers)
        start, end = byte_range
        headers["Content-Range"] = f"bytes {start}-{end}/{stored.size}"
        return Response(206, stored.data[start : end + 1], headers)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end); (-1, -1) if unsatisfiable.

    None means "send the whole file" (no header, or a multi-range we do not implement)."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # suffix: the last n bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return (-1, -1)
    return (start, end)


# --------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: LocalHub


class _Handler(BaseHTTPRequestHandler):
    server: _HubHTTPServer
    # HTTP/1.1 keeps connections alive like the real Hub; every response carries Content-Length.
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection ends after this

    def setup(self) -> None:
        super().setup()
        self.server.hub._track_connection(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.hub._track_connection(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the hub keeps its own request_log; stderr noise would clutter pytest output

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            # httpx streams file objects (the LFS PUT) with chunked encoding when it cannot size them.
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        hub._log_request(self.command, split.path)
        req = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            body=self._read_body(),
            base_url=f"http://{self.headers.get('Host') or hub.host_port}",
        )
        try:
            response = hub._app_call(req)
        except Exception:  # a bug in this server must fail the test, not hang the client
            hub._record_error(self.command, split.path, traceback.format_exc())
            response = Response.json({"error": "LocalHub internal error (see hub.errors)"}, 500)
        self._send(response)
        hub._log_response(self.command, split.path, response.status)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        headers = {"Content-Type": "application/json", **response.headers}
        headers["Content-Length"] = str(len(response.body))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)


class LocalHub:
    """A Hub-compatible HTTP server on 127.0.0.1 for tests.

    >>> with LocalHub() as hub:  # doctest: +SKIP
    ...     env = client_env(hub.url, hf_home)
    ...     run_client("from huggingface_hub import create_repo; create_repo('me/x')", env)
    ...     assert hub.unknown_routes == []

    ``tokens``: valid tokens, as an iterable (user name ``DEFAULT_USER``) or a mapping token -> user.
    ``lfs_threshold``: files at least this large are LFS (the Hub uses 10 MB).
    ``unknown_route_status``: status answered to an unknown route; 501 because the clients do not
    retry it (they retry 500: a drift would then take from ~20 s to minutes to surface).
    """

    def __init__(
        self,
        tokens: Iterable[str] | Mapping[str, str] = (DEFAULT_TOKEN,),
        *,
        lfs_threshold: int = 10 * 1024 * 1024,
        unknown_route_status: int = 501,
    ) -> None:
        token_map = dict(tokens) if isinstance(tokens, Mapping) else dict.fromkeys(tokens, DEFAULT_USER)
        self.app = HubApp(token_map, lfs_threshold)
        self.unknown_route_status = unknown_route_status
        self.request_log: list[tuple[str, str]] = []
        self.response_log: list[tuple[str, str, int]] = []
        self.unknown_routes: list[tuple[str, str, str]] = []  # (method, path, reason)
        self.errors: list[str] = []  # tracebacks of handler crashes
        self._log_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.host_port = ""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> str:
        """Serve on a free port of 127.0.0.1 in a background thread; returns the base URL."""
        if self._server is not None:
            raise RuntimeError("LocalHub already started")
        self._server = _HubHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        host, port = self._server.server_address[:2]
        self.host_port = f"{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="LocalHub", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the port and any kept-alive connections (the store is kept)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._log_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        if not self.host_port:
            raise RuntimeError("LocalHub not started")
        return f"http://{self.host_port}"

    def __enter__(self) -> LocalHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test API ------------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """A valid token (the first one given)."""
        return next(iter(self.app.tokens))

    def create_repo(self, repo_id: str, *, repo_type: str = "model", private: bool = False) -> None:
        """Create a repo directly in the store (no HTTP), with its initial commit."""
        namespace, name = repo_id.split("/")
        req = Request("POST", "", {}, {}, b"", self.url if self.host_port else "http://local", user=namespace)
        req.body = json.dumps(
            {"name": name, "organization": namespace, "type": repo_type, "private": private}
        ).encode()
        response = self.app.create_repo(req)
        if response.status != 200:
            raise ValueError(f"create_repo({repo_id!r}) failed: {response.body.decode()}")

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self.app.lock:
            return self.app.repos[(repo_type, repo_id)]

    def commits(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> list[Commit]:
        """The commits reachable from ``branch``, newest first (``len()`` is the commit count)."""
        with self.app.lock:
            return self.repo(repo_id, repo_type).history(branch)

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        return self.commits(repo_id, branch, repo_type)[0].oid

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, StoredFile]:
        with self.app.lock:
            commit = self.repo(repo_id, repo_type).resolve(revision)
            if commit is None:
                raise KeyError(f"{repo_id}@{revision}")
            return dict(commit.files)

    def file_bytes(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        return self.files(repo_id, revision, repo_type)[path].data

    def requests_since(self, mark: int) -> list[tuple[str, str]]:
        """``request_log[mark:]``; take ``mark = len(hub.request_log)`` before a client call."""
        with self._log_lock:
            return list(self.request_log[mark:])

    # -- used by the handler -------------------------------------------------------------------

    def _app_call(self, req: Request) -> Response:
        for route in ROUTES:
            if route.method != req.method:
                continue
            match = route.pattern.fullmatch(req.path)
            if match is None:
                continue
            req.params = {k: v for k, v in match.groupdict().items() if v is not None}
            try:
                self.app.authenticate(req)
                handler: Callable[[Request], Response] = getattr(self.app, route.handler)
                return handler(req)
            except HubError as err:
                return _error_response(err)
            except Unsupported as err:
                return self._unknown(req, str(err))
        return self._unknown(req, "no route")

    def _unknown(self, req: Request, reason: str) -> Response:
        hint = " (Xet is not implemented: set HF_HUB_DISABLE_XET=1)" if "xet" in req.path else ""
        with self._log_lock:
            self.unknown_routes.append((req.method, req.path, reason + hint))
        message = f"LocalHub does not implement {req.method} {req.path}: {reason}{hint}"
        return _error_response(HubError(self.unknown_route_status, message))

    def _log_request(self, method: str, path: str) -> None:
        with self._log_lock:
            self.request_log.append((method, path))

    def _log_response(self, method: str, path: str, status: int) -> None:
        with self._log_lock:
            self.response_log.append((method, path, status))

    def _record_error(self, method: str, path: str, tb: str) -> None:
        with self._log_lock:
            self.errors.append(f"{method} {path}\n{tb}")

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None:
        with self._log_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


def _error_response(err: HubError) -> Response:
    response = Response.json({"error": err.message}, err.status)
    # X-Error-Message must be latin-1 for http.server; the JSON body keeps the full text.
    response.headers["X-Error-Message"] = err.message.encode("latin-1", "replace").decode("latin-1")
    if err.error_code:
        response.headers["X-Error-Code"] = err.error_code
    response.headers.update(err.headers)
    return response


# --------------------------------------------------------------------------------------------------
# Helpers for tests: a fixture body and a subprocess runner
# --------------------------------------------------------------------------------------------------


def serve_local_hub(**kwargs: Any) -> Iterator[LocalHub]:
    """Generator fixture body: ``local_hub = pytest.fixture(scope="module")(serve_local_hub)``.

    Yields a started LocalHub and stops it afterwards (conftest.py is owned elsewhere, so the
    test module wraps this itself). Keyword arguments go to ``LocalHub``.
    """
    hub = LocalHub(**kwargs)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


# Variables that would point the client elsewhere or change its behaviour behind the test's back.
_CLIENT_ENV_DROP = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "HF_TOKEN_PATH",
    "HF_MODULES_CACHE",
    "HF_XET_CACHE",
    "HF_ASSETS_CACHE",
    "HF_HUB_ENABLE_HF_TRANSFER",
)


def client_env(
    endpoint: str,
    hf_home: str | os.PathLike[str],
    token: str | None = DEFAULT_TOKEN,
    *,
    offline: bool = False,
) -> dict[str, str]:
    """Environment for a client subprocess talking to ``endpoint`` with a private HF_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_ENV_DROP}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_XET="1",  # else hf_xet uploads/downloads through the unimplemented Xet API
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TRANSFORMERS_VERBOSITY="error",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    env.pop("HF_TOKEN", None)
    if token is not None:
        env["HF_TOKEN"] = token
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    # Never route loopback traffic through a proxy the machine may define.
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


RESULT_MARKER = "@@RESULT@@"
_PRELUDE = f"""\
import json as _json, os as _os
ARGS = _json.loads(_os.environ.get("LOCAL_HUB_ARGS", "{{}}"))
def result(obj):
    print({RESULT_MARKER!r} + _json.dumps(obj), flush=True)
"""


def run_client(
    code: str,
    env: Mapping[str, str],
    *,
    args: Mapping[str, Any] | None = None,
    timeout: float = 120,
    cwd: str | None = None,
) -> Any:
    """Run ``code`` in a fresh interpreter with ``env``; return what it passed to ``result(...)``.

    A fresh interpreter is needed because huggingface_hub reads HF_ENDPOINT (and HF_HUB_OFFLINE)
    at import time. The code sees ``ARGS`` (``args``, sent as JSON through the environment, so no
    quoting inside the code string) and ``result(obj)``, which prints ``obj`` as JSON after a
    marker line. A non-zero exit or a timeout raises ``RuntimeError`` with the subprocess output.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
            env={**env, "LOCAL_HUB_ARGS": json.dumps(dict(args or {}))},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:  # show what the client said before it hung
        raise RuntimeError(
            f"client timed out after {timeout} s\n--- stdout\n{err.stdout}\n--- stderr\n{err.stderr}"
        ) from None
    if proc.returncode != 0:
        raise RuntimeError(
            f"client exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    return None
