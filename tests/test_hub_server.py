"""The local Hub (tests/hub_server.py) works with the real huggingface_hub and transformers clients.

Every client call runs in a fresh interpreter (``run_client``) because huggingface_hub reads
HF_ENDPOINT at import time; each gets its own HF_HOME so downloads really go over HTTP.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:  # tests/ as a package (rootdir on sys.path) or as a plain folder (pytest prepends it)
    from tests.hub_server import (
        DEFAULT_TOKEN,
        LocalHub,
        client_env,
        git_blob_sha1,
        run_client,
        serve_local_hub,
    )
except ImportError:
    from hub_server import DEFAULT_TOKEN, LocalHub, client_env, git_blob_sha1, run_client, serve_local_hub


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    yield from serve_local_hub()


def _client(hub: LocalHub, home: Path, code: str, *, token: str | None = DEFAULT_TOKEN, **args: Any) -> Any:
    return run_client(code, client_env(hub.url, home, token), args=args)


def _assert_clean(hub: LocalHub) -> None:
    """(g) No request fell outside the implemented protocol and no handler crashed."""
    assert hub.unknown_routes == []
    assert hub.errors == []


def _write_folder(folder: Path, seed: int, text: str) -> Path:
    """A text file, a nested JSON file and a ~100 KB ``model.safetensors`` written by safetensors."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text(text)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "config.json").write_text(json.dumps({"hidden": 8}))
    generator = torch.Generator().manual_seed(seed)
    save_file({"weight": torch.randn(25_000, generator=generator)}, str(folder / "model.safetensors"))
    return folder


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


UPLOAD = """
    from huggingface_hub import HfApi
    api = HfApi()
    api.create_repo(ARGS["repo"], exist_ok=True)
    info = api.upload_folder(repo_id=ARGS["repo"], folder_path=ARGS["folder"], commit_message=ARGS["message"])
    result(info.oid)
"""


def _upload(hub: LocalHub, home: Path, repo: str, folder: Path, message: str = "upload") -> str:
    return _client(hub, home, UPLOAD, repo=repo, folder=str(folder), message=message)


def test_upload_folder_then_snapshot_download_roundtrip(hub: LocalHub, tmp_path: Path) -> None:
    """(a) create_repo + upload_folder, then snapshot_download in a fresh HF_HOME gives the same bytes."""
    folder = _write_folder(tmp_path / "folder", seed=0, text="hello hub\n")
    assert 100_000 <= (folder / "model.safetensors").stat().st_size < 110_000
    mark = len(hub.request_log)
    oid = _upload(hub, tmp_path / "home-up", "alice/roundtrip", folder, "first upload")

    assert oid == hub.head("alice/roundtrip")
    assert [c.title for c in hub.commits("alice/roundtrip")] == ["first upload", "initial commit"]
    stored = hub.files("alice/roundtrip")
    assert stored["model.safetensors"].is_lfs and not stored["notes.txt"].is_lfs
    assert (
        hub.file_bytes("alice/roundtrip", "sub/config.json", oid) == (folder / "sub/config.json").read_bytes()
    )
    # The binary went through the LFS batch API (not Xet, not inline in the commit).
    lfs = "/alice/roundtrip.git/info/lfs/objects"
    sha256 = stored["model.safetensors"].sha256
    assert {("POST", f"{lfs}/batch"), ("PUT", f"{lfs}/{sha256}"), ("POST", f"{lfs}/verify")} <= set(
        hub.requests_since(mark)
    )

    snapshot = _client(
        hub,
        tmp_path / "home-down",
        "from huggingface_hub import snapshot_download\nresult(snapshot_download(ARGS['repo']))",
        repo="alice/roundtrip",
    )
    assert Path(snapshot).name == oid  # the cache folder is named by X-Repo-Commit / the info sha
    downloaded = _folder_bytes(Path(snapshot))
    assert downloaded.pop(".gitattributes").startswith(b"*.safetensors filter=lfs")  # the initial commit
    assert downloaded == _folder_bytes(folder)
    _assert_clean(hub)


def test_identical_reupload_changes_nothing(hub: LocalHub, tmp_path: Path) -> None:
    """(b) Uploading the same folder again leaves the branch as it was.

    How it is detected: preupload answers each file's current oid (git sha1, or sha256 for LFS).
    The client still asks the LFS batch API about model.safetensors, which answers "already
    stored" (no upload action), so nothing is PUT; then it sees every oid match, sends no commit
    at all and returns the current head (GET .../revision/main). So the server's commit list for
    main (count, head, tree) is unchanged. (A commit that does reach the server with the same
    content is accepted and gets the same ``tree_id``: see test_protocol_details_over_raw_http.)
    """
    folder = _write_folder(tmp_path / "folder", seed=1, text="same\n")
    first = _upload(hub, tmp_path / "home", "alice/idempotent", folder)
    commits_before = hub.commits("alice/idempotent")

    mark = len(hub.request_log)
    second = _upload(hub, tmp_path / "home", "alice/idempotent", folder)

    assert second == first
    assert hub.commits("alice/idempotent") == commits_before
    methods_paths = hub.requests_since(mark)
    assert not [r for r in methods_paths if r[1].endswith("/commit/main") or r[0] == "PUT"], methods_paths
    assert ("GET", "/api/models/alice/idempotent/revision/main") in methods_paths
    _assert_clean(hub)


def test_changed_file_makes_new_commit_and_old_revision_stays(hub: LocalHub, tmp_path: Path) -> None:
    """(c) A changed file gives a new commit; hf_hub_download(revision=<old sha>) still returns the old bytes."""
    v1 = _write_folder(tmp_path / "v1", seed=2, text="version one\n")
    v2 = _write_folder(tmp_path / "v2", seed=3, text="version two\n")
    old = _upload(hub, tmp_path / "home-up", "alice/versions", v1, "v1")
    new = _upload(hub, tmp_path / "home-up", "alice/versions", v2, "v2")

    assert new != old
    commits = hub.commits("alice/versions")
    assert [c.oid for c in commits[:2]] == [new, old]
    assert commits[0].tree_id != commits[1].tree_id
    assert hub.file_bytes("alice/versions", "notes.txt", old) == b"version one\n"

    paths = _client(
        hub,
        tmp_path / "home-down",
        """
        from huggingface_hub import hf_hub_download, model_info
        out = {}
        for rev in (ARGS["old"], ARGS["new"], "main"):
            out[rev] = {f: hf_hub_download(ARGS["repo"], f, revision=rev) for f in ("notes.txt", "model.safetensors")}
        out["info_old_sha"] = model_info(ARGS["repo"], revision=ARGS["old"]).sha
        result(out)
        """,
        repo="alice/versions",
        old=old,
        new=new,
    )
    for rev, folder in ((old, v1), (new, v2), ("main", v2)):
        for name, path in paths[rev].items():
            assert Path(path).read_bytes() == (folder / name).read_bytes(), (rev, name)
    assert paths["info_old_sha"] == old
    _assert_clean(hub)


def test_offline_cache_after_server_stops(tmp_path: Path) -> None:
    """(d) After stop(), HF_HUB_OFFLINE=1 hf_hub_download/snapshot_download serve from the same HF_HOME."""
    folder = _write_folder(tmp_path / "folder", seed=4, text="cached\n")
    home = tmp_path / "home"
    own_hub = LocalHub()
    url = own_hub.start()
    try:
        sha = _upload(own_hub, tmp_path / "home-up", "alice/offline", folder)
        _client(
            own_hub, home, "from huggingface_hub import snapshot_download\nsnapshot_download('alice/offline')"
        )
        _assert_clean(own_hub)
    finally:
        own_hub.stop()
    with pytest.raises(OSError):  # the port is really closed
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=2).close()

    code = """
        from huggingface_hub import hf_hub_download, snapshot_download
        result({"file": hf_hub_download("alice/offline", "model.safetensors"),
                "by_sha": hf_hub_download("alice/offline", "notes.txt", revision=ARGS["sha"]),
                "snapshot": snapshot_download("alice/offline")})
    """
    offline = run_client(code, client_env(url, home, offline=True), args={"sha": sha})
    assert Path(offline["file"]).read_bytes() == (folder / "model.safetensors").read_bytes()
    assert Path(offline["by_sha"]).read_bytes() == b"cached\n"
    assert Path(offline["snapshot"]).name == sha
    # Not even flagged offline: a refused connection also falls back to the cache.
    unreachable = run_client(code, client_env(url, home), args={"sha": sha})
    assert Path(unreachable["file"]).read_bytes() == (folder / "model.safetensors").read_bytes()


ERRORS = """
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    out = {}

    def capture(name, fn):
        try:
            fn()
            out[name] = None
        except Exception as err:
            status = err.response.status_code if isinstance(err, HfHubHTTPError) else None
            out[name] = {"cls": type(err).__name__, "msg": str(err), "status": status,
                         "http_error": isinstance(err, HfHubHTTPError)}

    good = ARGS["good"]
    # HF_TOKEN in the environment is wrong:
    capture("create_repo_bad_token", lambda: api.create_repo("alice/never"))
    capture("model_info_bad_token", lambda: api.model_info("alice/public"))
    capture("download_bad_token", lambda: hf_hub_download("alice/public", "notes.txt"))
    # A valid token, but nothing there:
    capture("missing_repo_info", lambda: api.model_info("alice/missing", token=good))
    capture("missing_repo_download", lambda: hf_hub_download("alice/missing", "notes.txt", token=good))
    capture("missing_revision", lambda: hf_hub_download("alice/public", "notes.txt", revision="nope", token=good))
    capture("missing_file", lambda: hf_hub_download("alice/public", "nope.txt", token=good))
    # Private repo: anonymous (token=False) is told it does not exist; the owner's token sees it.
    capture("private_anonymous", lambda: api.model_info("alice/secret", token=False))
    capture("private_with_token", lambda: api.model_info("alice/secret", token=good))
    result(out)
"""


def test_wrong_token_and_missing_repo_errors(hub: LocalHub, tmp_path: Path) -> None:
    """(e) A wrong token -> HfHubHTTPError 401; a missing repo -> RepositoryNotFoundError; etc."""
    hub.create_repo("alice/public")
    hub.create_repo("alice/secret", private=True)
    out = _client(hub, tmp_path / "home", ERRORS, token="hf_wrong_token", good=hub.token)

    for name in ("create_repo_bad_token", "model_info_bad_token", "download_bad_token"):
        err = out[name]
        assert err["cls"] == "HfHubHTTPError" and err["status"] == 401, (name, err)
        assert "Invalid credentials in Authorization header" in err["msg"], (name, err)
    assert out["missing_repo_info"]["cls"] == "RepositoryNotFoundError"
    assert out["missing_repo_download"]["cls"] == "RepositoryNotFoundError"
    assert out["missing_revision"]["cls"] == "RevisionNotFoundError"
    assert out["missing_file"]["cls"] == "RemoteEntryNotFoundError"
    assert out["private_anonymous"]["cls"] == "RepositoryNotFoundError"
    assert out["private_with_token"] is None
    assert "alice/never" not in {r.repo_id for r in hub.app.repos.values()}
    _assert_clean(hub)


BERT_SAVE_AND_UPLOAD = """
    import os
    import torch
    from huggingface_hub import HfApi
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "cat", "sat", "on", "mat"]
    vocab = os.path.join(ARGS["workdir"], "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\\n".join(words) + "\\n")
    tokenizer = BertTokenizerFast(vocab_file=vocab)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37)
    model = BertModel(config).eval()
    out_dir = os.path.join(ARGS["workdir"], "bert")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    enc = tokenizer([ARGS["text"]], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    api = HfApi()
    api.create_repo(ARGS["repo"])
    info = api.upload_folder(repo_id=ARGS["repo"], folder_path=out_dir)
    result({"sha": info.oid, "ids": enc["input_ids"].tolist(), "hidden": hidden.tolist(),
            "files": sorted(os.listdir(out_dir))})
"""

BERT_LOAD = """
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(ARGS["repo"], revision=ARGS["sha"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(ARGS["repo"], revision=ARGS["sha"])
    enc = tokenizer([ARGS["text"]], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    result({"ids": enc["input_ids"].tolist(), "hidden": hidden.tolist(), "model": type(model).__name__})
"""


def test_transformers_bert_roundtrip(hub: LocalHub, tmp_path: Path) -> None:
    """(f) A tiny BertModel + fast tokenizer: upload, then from_pretrained(revision=sha) in an empty HF_HOME."""
    text = "hello world the cat sat on the mat"
    saved = _client(
        hub,
        tmp_path / "home-up",
        BERT_SAVE_AND_UPLOAD,
        repo="alice/tiny-bert",
        workdir=str(tmp_path),
        text=text,
    )
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        saved["files"]
    )
    assert saved["sha"] == hub.head("alice/tiny-bert")

    mark = len(hub.request_log)
    loaded = _client(
        hub, tmp_path / "home-down", BERT_LOAD, repo="alice/tiny-bert", sha=saved["sha"], text=text
    )
    assert loaded["model"] == "BertModel"
    assert loaded["ids"] == saved["ids"]
    diff = max(abs(a - b) for ra, rb in zip(loaded["hidden"][0], saved["hidden"][0]) for a, b in zip(ra, rb))
    assert diff < 1e-6

    requests = hub.requests_since(mark)
    prefix = f"/alice/tiny-bert/resolve/{saved['sha']}/"
    assert ("GET", prefix + "model.safetensors") in requests
    assert ("GET", prefix + "tokenizer.json") in requests
    # transformers probes the chat-template folder; EntryNotFound (not RepoNotFound) lets it go on.
    chat_templates = f"/api/models/alice/tiny-bert/tree/{saved['sha']}/additional_chat_templates"
    assert ("GET", chat_templates, 404) in hub.response_log
    _assert_clean(hub)


BRANCHES = """
    from huggingface_hub import HfApi, CommitOperationAdd, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    repo = ARGS["repo"]
    out = {}
    api.create_repo(repo)
    try:
        api.create_repo(repo)
    except HfHubHTTPError as err:
        out["create_again"] = err.response.status_code
    api.create_repo(repo, exist_ok=True)
    api.create_branch(repo, branch="dev")
    dev = api.upload_file(path_or_fileobj=b"on dev\\n", path_in_repo="dev.txt", repo_id=repo, revision="dev")
    out["dev_sha"] = dev.oid
    refs = api.list_repo_refs(repo)
    out["branches"] = {b.name: b.target_commit for b in refs.branches}
    out["dev_file"] = open(hf_hub_download(repo, "dev.txt", revision="dev")).read()
    main_head = api.model_info(repo).sha
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo, parent_commit=main_head)
    try:
        op = CommitOperationAdd(path_in_repo="y.txt", path_or_fileobj=b"y")
        api.create_commit(repo, operations=[op], commit_message="stale", parent_commit=main_head)
    except HfHubHTTPError as err:
        out["stale_parent"] = [type(err).__name__, err.response.status_code]
    api.delete_file("x.txt", repo_id=repo)
    out["commits"] = [c.title for c in api.list_repo_commits(repo)]
    info = api.model_info(repo, revision="dev", files_metadata=True)
    out["siblings"] = sorted(s.rfilename for s in info.siblings)
    out["tree"] = sorted(f.path for f in api.list_repo_tree(repo, revision="dev", recursive=True))
    api.delete_branch(repo, branch="dev")
    out["after_delete"] = [b.name for b in api.list_repo_refs(repo).branches]
    result(out)
"""


def test_branches_parent_commit_and_history(hub: LocalHub, tmp_path: Path) -> None:
    """create_branch / list_repo_refs / upload to a branch / stale parent_commit / history / delete."""
    out = _client(hub, tmp_path / "home", BRANCHES, repo="alice/branches")
    assert out["create_again"] == 409
    initial = hub.commits("alice/branches")[-1].oid  # main had only the initial commit then
    assert out["branches"] == {"main": initial, "dev": out["dev_sha"]}
    assert out["dev_file"] == "on dev\n"
    assert out["stale_parent"] == ["HfHubHTTPError", 412]
    assert out["commits"] == [
        "Delete x.txt with huggingface_hub",
        "Upload x.txt with huggingface_hub",
        "initial commit",
    ]
    assert out["siblings"] == out["tree"] == [".gitattributes", "dev.txt"]
    assert out["after_delete"] == ["main"]
    _assert_clean(hub)


def _http(hub: LocalHub, method: str, path: str, body: bytes | None = None, **headers: str) -> Any:
    """One raw request (no HF client); returns the response or the HTTPError (which has the same API)."""
    request = urllib.request.Request(hub.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.data = response.read()
            return response
    except urllib.error.HTTPError as err:
        err.data = err.read()
        return err


def _commit(hub: LocalHub, repo: str, *lines: dict[str, Any], parent: str | None = None) -> Any:
    header: dict[str, Any] = {"summary": "raw commit", "description": ""}
    if parent:
        header["parentCommit"] = parent
    ndjson = b"".join(json.dumps(x).encode() + b"\n" for x in [{"key": "header", "value": header}, *lines])
    auth = f"Bearer {hub.token}"
    return _http(hub, "POST", f"/api/models/{repo}/commit/main", ndjson, Authorization=auth)


def _file_line(path: str, content: bytes) -> dict[str, Any]:
    import base64

    value = {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"}
    return {"key": "file", "value": value}


def test_protocol_details_over_raw_http(hub: LocalHub) -> None:
    """Headers, ranges, error codes and commit semantics, checked below the clients."""
    repo = "alice/raw"
    hub.create_repo(repo)
    first = _commit(hub, repo, _file_line("a.txt", b"0123456789"), _file_line("dir/b.txt", b"b"))
    assert first.status == 200
    sha = json.loads(first.data)["commitOid"]
    assert sha == hub.head(repo) and len(sha) == 40

    # A commit that changes nothing is accepted; it is a new commit with the same tree.
    same = _commit(hub, repo, _file_line("a.txt", b"0123456789"))
    assert same.status == 200 and json.loads(same.data)["commitOid"] != sha
    assert hub.commits(repo)[0].tree_id == hub.commits(repo)[1].tree_id
    assert _commit(hub, repo, _file_line("c.txt", b"c"), parent=sha).status == 412  # stale parentCommit
    missing_lfs = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64, "size": 1}}
    assert _commit(hub, repo, missing_lfs).status == 422
    deleted = _commit(hub, repo, {"key": "deletedFile", "value": {"path": "nope.txt"}})
    assert (deleted.status, deleted.headers["X-Error-Code"]) == (404, "EntryNotFound")

    head = hub.head(repo)
    resolved = _http(hub, "HEAD", f"/{repo}/resolve/main/a.txt")
    assert resolved.status == 200 and resolved.data == b""
    assert resolved.headers["X-Repo-Commit"] == head
    assert resolved.headers["ETag"] == f'"{git_blob_sha1(b"0123456789")}"'
    assert resolved.headers["Content-Length"] == "10" and resolved.headers["Accept-Ranges"] == "bytes"
    part = _http(hub, "GET", f"/{repo}/resolve/{head}/a.txt", Range="bytes=2-4")
    assert (part.status, part.data, part.headers["Content-Range"]) == (206, b"234", "bytes 2-4/10")
    assert _http(hub, "GET", f"/{repo}/resolve/main/a.txt", Range="bytes=-3").data == b"789"
    assert _http(hub, "GET", f"/{repo}/resolve/main/a.txt", Range="bytes=10-").status == 416

    def error(path: str, **headers: str) -> tuple[int, str | None]:
        response = _http(hub, "GET", path, **headers)
        return response.status, response.headers.get("X-Error-Code")

    auth = {"Authorization": f"Bearer {hub.token}"}
    assert error("/alice/none/resolve/main/a.txt") == (401, "RepoNotFound")  # anonymous, like the Hub
    assert error("/alice/none/resolve/main/a.txt", **auth) == (404, "RepoNotFound")
    assert error(f"/{repo}/resolve/nobranch/a.txt") == (404, "RevisionNotFound")
    assert error(f"/{repo}/resolve/main/zzz.txt") == (404, "EntryNotFound")
    assert _http(hub, "HEAD", f"/{repo}/resolve/main/zzz.txt").headers["X-Repo-Commit"] == head
    assert error(f"/api/models/{repo}/tree/main/additional_chat_templates") == (404, "EntryNotFound")
    bad = _http(hub, "GET", f"/api/models/{repo}", Authorization="Bearer wrong")
    assert (bad.status, bad.headers["X-Error-Message"]) == (
        401,
        "Invalid credentials in Authorization header",
    )

    top = json.loads(_http(hub, "GET", f"/api/models/{repo}/tree/main").data)
    assert [(e["type"], e["path"]) for e in top] == [
        ("file", ".gitattributes"),
        ("file", "a.txt"),
        ("directory", "dir"),
    ]
    deep = json.loads(_http(hub, "GET", f"/api/models/{repo}/tree/main?recursive=true").data)
    assert {e["path"] for e in deep} == {".gitattributes", "a.txt", "dir", "dir/b.txt"}
    _assert_clean(hub)


def test_unknown_route_is_recorded(tmp_path: Path) -> None:
    """A route the server does not know answers 501 and lands in unknown_routes (so protocol drift shows)."""
    with LocalHub() as own_hub:
        response = _http(own_hub, "GET", "/api/models/alice/x/xet-read-token/main")
        assert response.status == 501
        assert own_hub.unknown_routes == [
            (
                "GET",
                "/api/models/alice/x/xet-read-token/main",
                "no route (Xet is not implemented: set HF_HUB_DISABLE_XET=1)",
            )
        ]
        assert own_hub.request_log == [("GET", "/api/models/alice/x/xet-read-token/main")]


def test_xet_upload_fails_fast_and_is_recorded(tmp_path: Path) -> None:
    """Without HF_HUB_DISABLE_XET the client asks for a Xet token: the drift is reported, quickly."""
    pytest.importorskip("hf_xet")
    with LocalHub() as own_hub:
        env = client_env(own_hub.url, tmp_path / "home")
        del env["HF_HUB_DISABLE_XET"]
        code = """
            from huggingface_hub import HfApi
            HfApi().create_repo("alice/xet")
            HfApi().upload_file(path_or_fileobj=b"\\0" * 1000, path_in_repo="w.bin", repo_id="alice/xet")
        """
        with pytest.raises(RuntimeError, match="xet-write-token"):
            run_client(code, env, timeout=60)
        assert [route[:2] for route in own_hub.unknown_routes] == [
            ("GET", "/api/models/alice/xet/xet-write-token/main")
        ]
