"""push_to_hub.py / multitask_encoder.hub against the local Hub (tests/hub_server.py).

Every client runs in a fresh interpreter (HF_ENDPOINT is read at import) with its own HF_HOME and
HF_HUB_DISABLE_XET=1 (``client_env``). Each push also starts the load-check interpreter, so a push costs
two torch + transformers imports. To keep the file's wall time down on 2 cores, the scenarios that do not
depend on each other run in a background lane (``side_runs``) while ``test_push_reload_repush_offline``
runs its dependent chain in the foreground; and the scenarios that stop before uploading, plus the two
successful branch / pull-request pushes, share one interpreter that calls ``multitask_encoder.hub.main``
(the function push_to_hub.py runs) once per scenario. Failures of the real script as a process (exit code,
stderr, no traceback) are checked on the separate push_to_hub.py runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from multitask_encoder import MultiTaskEncoderConfig, MultiTaskEncoderModel
from multitask_encoder.hub import (
    BLOCK_PACKAGE_PRELUDE,
    PushError,
    content_id,
    load_line,
    plan_upload,
    resolve_token,
    stale_weight_files,
)
from multitask_encoder.model_card import render_model_card

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

REPO_ROOT = Path(__file__).resolve().parents[1]
PUSH_SCRIPT = REPO_ROOT / "push_to_hub.py"
WRONG_TOKEN = "hf_wrong_token_9876543210"
# What a trained folder uploads (the allow-list) besides the code files save_pretrained copied (see the
# `model_files` fixture), and what it holds besides (never uploaded).
MODEL_FILES_BUT_CODE = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
    "eval_results.json",
    # The sentence-transformers files save_pretrained writes: the repo is also a SentenceTransformer.
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
}
STRAY_ENTRIES = [
    ".env",
    "checkpoint-2/",
    "optimizer.pt",
    "predictions_topic.csv",
    "rng_state.pth",
    "runs/",
    "scheduler.pt",
    "trainer_state.json",
    "training_args.bin",
]
RESULTS = {
    "train": {"train_loss": 0.81, "epoch": 1.0, "train_runtime": 12.5},
    "validation": {},
    "test": {
        "topic": {"accuracy": 0.8, "macro_f1": 0.78, "weighted_f1": 0.79, "support": 50},
        "tags": {"micro_f1": 0.6, "macro_f1": 0.55, "exact_match": 0.4, "support": 50},
        "score": {"mse": 0.2, "rmse": 0.447, "mae": 0.3, "pearson": 0.7, "spearman": 0.68, "support": 50},
        "ner": {"precision": 0.7, "recall": 0.65, "f1": 0.674, "accuracy": 0.9, "support": 40},
    },
}
TEXTS = [
    "Arnold Schwarzenegger visited Paris on Monday.",
    "Stocks fell.",
    "The committee will publish its final report on climate policy next spring.",
]

# One definition of "the model's outputs", run in this process (package class) and in the clients
# (remote code from the Hub): sentence embeddings and every head's logits.
MODEL_OUTPUTS = textwrap.dedent(
    """
    def model_outputs(model, tokenizer, texts):
        import torch

        model.eval()
        model.tokenizer = tokenizer
        outputs = {"embeddings": model.encode(texts, batch_size=2, return_tensors="pt")}
        with torch.no_grad():
            forward = model(**tokenizer(texts, padding=True, return_tensors="pt"))
        for name in model.config.tasks:
            outputs[name] = forward[f"{name}_logits"]
        return outputs
    """
)
_namespace: dict[str, Any] = {}
exec(MODEL_OUTPUTS, _namespace)
model_outputs = _namespace["model_outputs"]

# A user of the pushed repo: no multitask_encoder package, only what the Hub serves.
LOAD_FROM_HUB = (
    BLOCK_PACKAGE_PRELUDE
    + MODEL_OUTPUTS
    + textwrap.dedent(
        """
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(ARGS["threads"])
        outputs, modules = {}, {}
        for revision in ARGS["revisions"]:
            model = AutoModel.from_pretrained(ARGS["repo"], trust_remote_code=True, revision=revision)
            tokenizer = AutoTokenizer.from_pretrained(ARGS["repo"], trust_remote_code=True, revision=revision)
            outputs[revision] = model_outputs(model, tokenizer, ARGS["texts"])
            modules[revision] = type(model).__module__
        assert "multitask_encoder" not in sys.modules
        torch.save(outputs, ARGS["out"])
        result(modules)
        """
    )
)

# Calls the CLI's main() once per scenario in one interpreter (one torch import for all of them).
RUN_SCENARIOS = """
    import contextlib
    import io
    import os
    import traceback

    from multitask_encoder.hub import main

    out = {}
    for scenario in ARGS["scenarios"]:
        for key, value in scenario["env"].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(scenario["argv"])
            except BaseException:
                code = "raised"
                traceback.print_exc()
        out[scenario["name"]] = {"rc": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
    result(out)
"""


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------


def _assert_clean(hub: LocalHub) -> None:
    """No request fell outside the implemented protocol and no handler crashed."""
    assert hub.unknown_routes == []
    assert hub.errors == []


def run_push(args: list[Any], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`python push_to_hub.py ARGS` as a user runs it, from `cwd`."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(PUSH_SCRIPT), *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def pushed_revision(stdout: str, returncode: Any, stderr: str = "") -> str:
    """The commit sha a successful push printed to pin."""
    assert returncode == 0, f"push failed ({returncode})\n{stdout}\n{stderr}"
    match = re.search(r"^Revision: ([0-9a-f]{40})$", stdout, flags=re.MULTILINE)
    assert match, stdout
    return match.group(1)


def the_error_line(stderr: str) -> str:
    """A refusal is exactly one line on stderr, starting with "error: ", and no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def assert_token_absent(
    tokens: list[str], texts: list[str], roots: list[Path], allowed: set[Path] = frozenset()
):
    """No token in any output and in no file under `roots` (except files the test itself wrote)."""
    for token in tokens:
        for text in texts:
            assert token not in text, f"token printed: {text[:2000]}"
        for root in roots:
            for path in root.rglob("*"):
                if path.is_file() and not path.is_symlink() and path not in allowed:
                    assert token.encode() not in path.read_bytes(), f"token written to {path}"


def copy_folder(source: Path, destination: Path, *, link_weights: bool = False) -> Path:
    """A copy to edit; `link_weights` hard-links the 62 MB weights instead of copying them (for checks that
    never write them). Not a symlink: plan_upload refuses a file whose real path is outside the folder."""

    def copy(src: str, dst: str) -> None:
        if link_weights and src.endswith(".safetensors"):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(source, destination, copy_function=copy)
    return destination


def rendered_card(folder: Path, repo_id: str) -> bytes:
    """The card push_to_hub.py renders for a folder without README.md."""
    results = json.loads((folder / "eval_results.json").read_text())
    config = MultiTaskEncoderConfig.from_pretrained(folder)
    return render_model_card(config, results=results, repo_id=repo_id).encode()


def load_from_hub(endpoint: str, home: Path, repo: str, revisions: list[str], out: Path, *, offline=False):
    """Load `repo` at each revision in a fresh interpreter; returns {revision: outputs}, {revision: module}."""
    modules = run_client(
        LOAD_FROM_HUB,
        client_env(endpoint, home, offline=offline),
        args={
            "repo": repo,
            "revisions": revisions,
            "texts": TEXTS,
            "out": str(out),
            "threads": torch.get_num_threads(),
        },
        cwd=str(out.parent),
        timeout=600,
    )
    return torch.load(out, weights_only=True), modules


def assert_same_outputs(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected) == {"embeddings", "topic", "tags", "score", "ner"}
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), f"{key} differs by {(actual[key] - value).abs().max()}"


# ----------------------------------------------------------------------------------------------------------
# Fixtures: a trained-looking output folder and its variants
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    yield from serve_local_hub()


@pytest.fixture(autouse=True)
def _hub_stays_clean(hub: LocalHub) -> Iterator[None]:
    yield
    _assert_clean(hub)


@pytest.fixture(scope="module")
def trained_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What train.py leaves in output_dir: the model, eval_results.json, the card, and Trainer leftovers
    that must never be uploaded. Read-only: copy before editing."""
    folder = copy_folder(tiny_checkpoint, tmp_path_factory.mktemp("trained") / "model")
    (folder / "eval_results.json").write_text(json.dumps(RESULTS, indent=2))
    config = MultiTaskEncoderConfig.from_pretrained(folder)
    card = render_model_card(config, results=RESULTS, training={"learning_rate": 2e-5, "num_train_epochs": 1})
    (folder / "README.md").write_text(card, encoding="utf-8")

    (folder / ".env").write_text("HF_TOKEN=hf_secret_from_dotenv_file\n")
    torch.save({"learning_rate": 2e-5}, folder / "training_args.bin")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": torch.zeros(3)}, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    checkpoint = folder / "checkpoint-2"
    checkpoint.mkdir()
    torch.save({"state": torch.zeros(3)}, checkpoint / "optimizer.pt")
    save_file({"w": torch.zeros(2)}, str(checkpoint / "model.safetensors"))
    (folder / "runs" / "Nov25_14-00-00_host").mkdir(parents=True)
    (folder / "runs" / "Nov25_14-00-00_host" / "events.out.tfevents.1.host").write_bytes(b"\x00tb")
    (folder / "predictions_topic.csv").write_text("text,gold,predicted,score\nhi,world,world,0.9\n")
    return folder


@pytest.fixture(scope="module")
def model_files(tiny_checkpoint: Path) -> set[str]:
    """The files a push of `trained_dir` uploads: the allow-list plus every code file save_pretrained wrote."""
    code = {path.name for path in tiny_checkpoint.glob("*.py")}
    assert {"configuration_multitask_encoder.py", "modeling_multitask_encoder.py"} <= code
    return MODEL_FILES_BUT_CODE | code


@pytest.fixture(scope="module")
def changed_dir(trained_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`trained_dir` with the topic head's weights changed (as after more training)."""
    folder = copy_folder(trained_dir, tmp_path_factory.mktemp("changed") / "model")
    state = load_file(folder / "model.safetensors")
    state["heads.topic.out.weight"] = state["heads.topic.out.weight"] + 0.25
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def no_card_dir(trained_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = copy_folder(trained_dir, tmp_path_factory.mktemp("no_card") / "model")
    (folder / "README.md").unlink()
    return folder


@pytest.fixture(scope="module")
def references(trained_dir: Path, changed_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The local models' outputs, computed with the package's own class in this process."""
    out = {}
    for name, folder in (("v1", trained_dir), ("v2", changed_dir)):
        model = MultiTaskEncoderModel.from_pretrained(folder)
        out[name] = model_outputs(model, model.tokenizer, TEXTS)
    return out


@pytest.fixture(scope="module")
def quiet_hub() -> Iterator[LocalHub]:
    """A server only the dry run is pointed at: it must receive nothing."""
    yield from serve_local_hub()


@pytest.fixture(scope="module")
def side_runs(
    hub: LocalHub,
    quiet_hub: LocalHub,
    trained_dir: Path,
    changed_dir: Path,
    no_card_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """Independent scenarios, started in a background lane as soon as the first test asks for them."""
    work = tmp_path_factory.mktemp("side_runs")
    static_bad = copy_folder(trained_dir, work / "static_bad", link_weights=True)
    (static_bad / "configuration_multitask_encoder.py").unlink()
    (static_bad / "pytorch_model.bin").write_bytes(b"not even a pickle")
    load_bad = copy_folder(trained_dir, work / "load_bad", link_weights=True)
    modeling = load_bad / "modeling_multitask_encoder.py"
    modeling.write_text("from multitask_encoder.backbone import resolve_backbone\n" + modeling.read_text())
    linked_secret = copy_folder(trained_dir, work / "linked_secret", link_weights=True)
    (linked_secret / "README.md").unlink()
    (linked_secret / "README.md").symlink_to(".env")  # the card would be the secrets
    hub.create_repo("alice/public-model")
    hub.create_repo("alice/pr-target")

    home = work / "home-scenarios"
    home.mkdir()
    (home / "token").write_text(DEFAULT_TOKEN)  # the saved login of `hf auth login`
    env = client_env(hub.url, home, token=None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    no_env_token = {"HF_TOKEN": None}
    scenarios = [
        {"name": "wrong_token", "argv": [str(trained_dir), "alice/x"], "env": {"HF_TOKEN": WRONG_TOKEN}},
        {
            "name": "missing_repo",
            "argv": [str(trained_dir), "alice/nowhere", "--create-pr"],
            "env": no_env_token,
        },
        {
            "name": "public_repo",
            "argv": [str(trained_dir), "alice/public-model", "--private"],
            "env": no_env_token,
        },
        {
            "name": "pr_and_branch",
            "argv": [str(trained_dir), "alice/x", "--create-pr", "--revision", "dev"],
            "env": no_env_token,
        },
        {"name": "static_bad", "argv": [str(static_bad), "alice/x"], "env": no_env_token},
        {"name": "load_bad", "argv": [str(load_bad), "alice/x", "--trust-remote-code"], "env": no_env_token},
        {  # everything fine but the consent to run the folder's code in the load check
            "name": "untrusted",
            "argv": [str(trained_dir), "alice/untrusted"],
            "env": no_env_token,
        },
        {
            "name": "linked_secret",
            "argv": [str(linked_secret), "alice/linked", "--trust-remote-code"],
            "env": no_env_token,
        },
        {  # token from the saved login; README.md rendered on the fly
            "name": "private_branch",
            "argv": [
                str(no_card_dir),
                "alice/private-model",
                "--private",
                "--revision",
                "dev",
                "--trust-remote-code",
            ],
            "env": no_env_token,
        },
        {  # token from --token
            "name": "pull_request",
            "argv": [
                str(trained_dir),
                "alice/pr-target",
                "--create-pr",
                "--token",
                DEFAULT_TOKEN,
                "--trust-remote-code",
            ],
            "env": no_env_token,
        },
        {  # a new version pushed to the open pull request
            "name": "pull_request_update",
            "argv": [str(changed_dir), "alice/pr-target", "--revision", "refs/pr/1", "--trust-remote-code"],
            "env": no_env_token,
        },
    ]

    def scenarios_run() -> dict[str, Any]:
        return run_client(RUN_SCENARIOS, env, args={"scenarios": scenarios}, cwd=str(work), timeout=900)

    # A port that refuses connections: bound (so nothing else can take it) but not listening.
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.1", 0))
    closed_url = f"http://127.0.0.1:{closed_port.getsockname()[1]}"

    executor = ThreadPoolExecutor(max_workers=1)
    futures = {
        "dry_run": executor.submit(
            run_push,
            [no_card_dir, "alice/dry", "--dry-run", "--trust-remote-code"],
            client_env(quiet_hub.url, work / "home-dry"),
            work / "cwd-dry",
        ),
        "unreachable": executor.submit(
            run_push, [trained_dir, "alice/x"], client_env(closed_url, work / "home-x"), work / "cwd-x"
        ),
        "scenarios": executor.submit(scenarios_run),
    }
    yield {**futures, "work": work}
    executor.shutdown(wait=True)
    closed_port.close()


# ----------------------------------------------------------------------------------------------------------
# Through the Hub
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_push_reload_repush_offline(
    side_runs: dict[str, Any],  # requested first so the side scenarios overlap with this chain
    trained_dir: Path,
    changed_dir: Path,
    references: dict[str, dict[str, torch.Tensor]],
    model_files: set[str],
    tmp_path: Path,
) -> None:
    """Push, reload bit-exact from an empty cache at the pinned sha; a same-folder push makes no commit; a
    changed head makes one and the old sha still loads the old weights; offline reload from the cache."""
    repo = "alice/multitask"
    load_home, cwd = tmp_path / "home-load", tmp_path / "cwd"
    with LocalHub() as own:  # its own server: stopped below for the offline reload
        env = client_env(own.url, tmp_path / "home-push")
        first = run_push(
            [trained_dir, repo, "--commit-message", "first version", "--trust-remote-code"], env, cwd
        )
        sha1 = pushed_revision(first.stdout, first.returncode, first.stderr)
        printed = [line.strip() for line in first.stdout.splitlines()]
        assert f"Commit URL: {own.url}/{repo}/commit/{sha1}" in printed
        assert load_line(repo, sha1) in printed
        assert f'AutoModel.from_pretrained("{repo}", trust_remote_code=True, revision="{sha1}")' in printed
        assert own.head(repo) == sha1
        assert [c.title for c in own.commits(repo)] == ["first version", "initial commit"]
        stored = own.files(repo, sha1)
        assert set(stored) == model_files | {".gitattributes"}  # no stray file
        for name in model_files:
            assert stored[name].data == (trained_dir / name).read_bytes(), name
        assert stored["model.safetensors"].is_lfs

        commits = own.commits(repo)
        mark = len(own.request_log)
        again = run_push([trained_dir, repo], env, cwd)  # nothing to upload: no check, so no consent needed
        assert pushed_revision(again.stdout, again.returncode, again.stderr) == sha1
        assert (
            f"No changes: {repo}@main already holds exactly these files; no commit was made." in again.stdout
        )
        assert "Checking that" not in again.stdout  # nothing to upload, so nothing to check
        assert own.commits(repo) == commits
        sent = own.requests_since(mark)
        assert not [r for r in sent if r[0] in ("PUT", "POST")], sent

        changed = run_push([changed_dir, repo, "--trust-remote-code"], env, cwd)
        sha2 = pushed_revision(changed.stdout, changed.returncode, changed.stderr)
        assert sha2 != sha1 and [c.oid for c in own.commits(repo)[:2]] == [sha2, sha1]
        new = own.files(repo, sha2)
        assert {p for p in set(stored) | set(new) if stored.get(p) != new.get(p)} == {"model.safetensors"}

        mark = len(own.request_log)
        online, modules = load_from_hub(own.url, load_home, repo, [sha1, sha2], tmp_path / "online.pt")
        fetched = own.requests_since(mark)
        for sha in (sha1, sha2):  # really downloaded: the cache was empty
            assert ("GET", f"/{repo}/resolve/{sha}/model.safetensors") in fetched
            assert modules[sha].startswith("transformers_modules."), modules
        _assert_clean(own)
    assert_same_outputs(online[sha1], references["v1"])
    assert_same_outputs(online[sha2], references["v2"])
    assert not torch.equal(online[sha1]["topic"], online[sha2]["topic"])
    assert torch.equal(online[sha1]["ner"], online[sha2]["ner"])  # only the topic head changed

    with pytest.raises(OSError):  # the port is really closed
        socket.create_connection(("127.0.0.1", int(own.url.rsplit(":", 1)[1])), timeout=2).close()
    offline, _ = load_from_hub(own.url, load_home, repo, [sha2, sha1], tmp_path / "offline.pt", offline=True)
    assert_same_outputs(offline[sha2], references["v2"])
    assert_same_outputs(offline[sha1], references["v1"])

    outputs = [p.stdout + p.stderr for p in (first, again, changed)]
    assert_token_absent([DEFAULT_TOKEN], outputs, [tmp_path, trained_dir, changed_dir])


@pytest.mark.slow
def test_dry_run_lists_the_model_files_and_sends_nothing(
    side_runs: dict[str, Any], quiet_hub: LocalHub, no_card_dir: Path, model_files: set[str]
) -> None:
    before = {p.relative_to(no_card_dir) for p in no_card_dir.rglob("*")}
    proc = side_runs["dry_run"].result()
    assert proc.returncode == 0, proc.stderr
    assert quiet_hub.request_log == []  # not a single request, not even whoami
    listed = dict(
        (match.group(2), int(match.group(1).replace(",", "")))
        for match in re.finditer(r"^ +([\d,]+)  (\S+)$", proc.stdout, flags=re.MULTILINE)
    )
    expected = {name: (no_card_dir / name).stat().st_size for name in model_files - {"README.md"}}
    expected["README.md"] = len(rendered_card(no_card_dir, "alice/dry"))
    assert listed == expected
    assert (
        "No README.md in" in proc.stdout and "rendered from config.json and eval_results.json" in proc.stdout
    )
    assert f"Not uploaded (not model files): {', '.join(STRAY_ENTRIES)}" in proc.stdout
    assert "Dry run: nothing was uploaded" in proc.stdout
    assert {p.relative_to(no_card_dir) for p in no_card_dir.rglob("*")} == before  # no README.md written
    _assert_clean(quiet_hub)


def test_the_load_check_asks_pair_tasks_a_pair_and_passes_a_model_with_every_kind_of_task(
    quiet_hub: LocalHub, tiny_backbone: str, tmp_path: Path
) -> None:
    """A single-text task, pair classification (bi and cross), similarity and contrastive in one model: the
    check predicts each on what it reads (a text or a pair) and the dry run passes, sending nothing."""
    tasks = {
        "topic": {"type": "sequence_classification", "labels": ["sport", "business"]},
        "same_topic": {"type": "pair_classification", "labels": ["different", "same"]},
        "same_topic_cross": {
            "type": "pair_classification",
            "labels": ["different", "same"],
            "pair_encoding": "cross",
        },
        "relatedness": {"type": "similarity", "score_range": [0, 5]},
        "retrieval": {"type": "contrastive"},
    }
    torch.manual_seed(0)
    folder = tmp_path / "pairs-model"
    MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=tasks).save_pretrained(folder)
    proc = run_push(
        [folder, "alice/pairs", "--dry-run", "--trust-remote-code"],
        client_env(quiet_hub.url, tmp_path / "home"),
        tmp_path / "cwd",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"OK: MultiTaskEncoderModel predicts tasks {', '.join(tasks)}." in proc.stdout
    assert "Dry run: nothing was uploaded" in proc.stdout
    assert quiet_hub.request_log == []


@pytest.mark.slow
def test_refusals_are_one_line_and_exit_non_zero(
    side_runs: dict[str, Any], hub: LocalHub, trained_dir: Path
) -> None:
    unreachable = side_runs["unreachable"].result()
    assert unreachable.returncode == 1
    line = the_error_line(unreachable.stderr)
    assert re.fullmatch(r"error: cannot reach the Hub at http://127\.0\.0\.1:\d+ \(HF_ENDPOINT\) .*", line), (
        line
    )

    runs = side_runs["scenarios"].result()
    expected = {
        "wrong_token": "error: the Hub at {url} rejected the token from HF_TOKEN (HTTP 401: wrong or expired",
        "missing_repo": "error: alice/nowhere does not exist on {url}: a pull request needs an existing repo",
        "public_repo": "error: alice/public-model exists and is public: --private only applies to a new repo",
        "pr_and_branch": "error: --create-pr opens a pull request against main; it cannot be combined with "
        "--revision dev",
        "static_bad": "error: {folder}static_bad is not ready to share: config.json auto_map names "
        "configuration_multitask_encoder.py, which is not a file of the folder",
        "load_bad": "error: {folder}load_bad does not load with trust_remote_code=True in a fresh Python "
        "without the multitask_encoder package: ImportError: multitask_encoder is blocked",
        "untrusted": "error: the last check before sharing {trained} loads it with trust_remote_code=True in a "
        "fresh Python, as a user of the repo would, and that executes the folder's code (",
        "linked_secret": "error: {folder}linked_secret is not ready to share: {folder}linked_secret{sep}README.md "
        "resolves to {folder}linked_secret{sep}.env, not README.md itself: it would upload .env as README.md",
    }
    folder = f"{side_runs['work']}{os.sep}"
    for name, start in expected.items():
        run = runs[name]
        assert run["rc"] == 1, (name, run)
        expected_start = start.format(url=hub.url, folder=folder, sep=os.sep, trained=trained_dir)
        assert the_error_line(run["stderr"]).startswith(expected_start), (name, run)
    assert "pickle weights pytorch_model.bin" in runs["static_bad"]["stderr"]
    untrusted = the_error_line(runs["untrusted"]["stderr"])
    assert "modeling_multitask_encoder.py" in untrusted and "pass --trust-remote-code to run it" in untrusted
    assert "Checking that" not in runs["untrusted"]["stdout"]  # refused before the check started
    # Refused before anything was written: no repo created, the public repo untouched.
    created = {repo for _, repo in hub.app.repos}
    assert {"alice/x", "alice/nowhere", "alice/untrusted", "alice/linked"}.isdisjoint(created)
    assert len(hub.commits("alice/public-model")) == 1
    # The secrets README.md linked to are nowhere on the Hub, in no commit of any repo.
    secret = (trained_dir / ".env").read_bytes()
    with hub.app.lock:
        stored = [
            f.data for repo in hub.app.repos.values() for c in repo.commits.values() for f in c.files.values()
        ]
        stored += [data for repo in hub.app.repos.values() for data in repo.lfs_objects.values()]
    assert stored and not [data for data in stored if secret.strip() in data]
    assert_token_absent(
        [DEFAULT_TOKEN, WRONG_TOKEN],
        [unreachable.stdout, unreachable.stderr] + [r["stdout"] + r["stderr"] for r in runs.values()],
        [],
    )


@pytest.mark.slow
def test_private_branch_push_uploads_a_rendered_card(
    side_runs: dict[str, Any], hub: LocalHub, no_card_dir: Path, model_files: set[str]
) -> None:
    run = side_runs["scenarios"].result()["private_branch"]
    sha = pushed_revision(run["stdout"], run["rc"], run["stderr"])
    repo = "alice/private-model"
    assert hub.repo(repo).private
    assert "Created private repo alice/private-model." in run["stdout"]
    assert "Created branch dev (from main)." in run["stdout"]
    assert hub.head(repo, "dev") == sha
    assert [c.title for c in hub.commits(repo)] == ["initial commit"]  # main untouched
    stored = hub.files(repo, "dev")
    assert set(stored) == model_files | {".gitattributes"}
    assert stored["README.md"].data == rendered_card(no_card_dir, repo)
    assert not (no_card_dir / "README.md").exists()
    # Private: an anonymous reader is told it does not exist.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{hub.url}/api/models/{repo}/revision/dev", timeout=10)
    assert refused.value.code == 401 and refused.value.headers["X-Error-Code"] == "RepoNotFound"
    work = side_runs["work"]
    assert_token_absent(
        [DEFAULT_TOKEN], [run["stdout"], run["stderr"]], [work], {work / "home-scenarios" / "token"}
    )


@pytest.mark.slow
def test_create_pr_opens_a_pull_request_and_revision_updates_it(
    side_runs: dict[str, Any], hub: LocalHub, trained_dir: Path, changed_dir: Path, model_files: set[str]
) -> None:
    runs = side_runs["scenarios"].result()
    run, update = runs["pull_request"], runs["pull_request_update"]
    sha = pushed_revision(run["stdout"], run["rc"], run["stderr"])
    repo = "alice/pr-target"
    assert f"Pull request: {hub.url}/{repo}/discussions/1 (refs/pr/1)" in run["stdout"]
    assert load_line(repo, sha) in run["stdout"]
    assert [c.title for c in hub.commits(repo)] == ["initial commit"]  # main only gets it when merged
    first = hub.files(repo, sha)
    assert set(first) == model_files | {".gitattributes"}
    assert first["model.safetensors"].data == (trained_dir / "model.safetensors").read_bytes()

    # --revision refs/pr/1 adds a commit to the open pull request.
    new_sha = pushed_revision(update["stdout"], update["rc"], update["stderr"])
    assert hub.repo(repo).pull_requests == {1: new_sha}
    assert [c.oid for c in hub.commits(repo, "refs/pr/1")[:2]] == [new_sha, sha]
    assert (
        hub.file_bytes(repo, "model.safetensors", "refs/pr/1")
        == (changed_dir / "model.safetensors").read_bytes()
    )
    assert len(hub.commits(repo)) == 1
    # The PR ref over HTTP, as clients see it (the revision is quoted into one path segment).
    with urllib.request.urlopen(
        f"{hub.url}/{repo}/resolve/refs%2Fpr%2F1/config.json", timeout=10
    ) as response:
        assert response.headers["X-Repo-Commit"] == new_sha
        assert response.read() == (changed_dir / "config.json").read_bytes()
    with urllib.request.urlopen(f"{hub.url}/api/models/{repo}/refs", timeout=10) as response:
        refs = json.loads(response.read())
    assert refs["pullRequests"] == [{"name": "refs/pr/1", "ref": "refs/pr/1", "targetCommit": new_sha}]
    assert_token_absent(
        [DEFAULT_TOKEN], [run["stdout"], run["stderr"], update["stdout"], update["stderr"]], []
    )


# ----------------------------------------------------------------------------------------------------------
# The checks and the allow-list, in this process (no Hub)
# ----------------------------------------------------------------------------------------------------------


def test_upload_plan_is_the_allow_list(trained_dir: Path, model_files: set[str]) -> None:
    plan = plan_upload(trained_dir, "alice/m")
    assert set(plan.paths) == model_files and len(plan.paths) == len(model_files)
    assert plan.left_out == STRAY_ENTRIES
    assert not plan.rendered_card and plan.notes == []
    for f in plan.files:
        assert f.source == trained_dir / f.path_in_repo
        assert f.size == (trained_dir / f.path_in_repo).stat().st_size


def test_missing_card_is_rendered_in_memory(no_card_dir: Path) -> None:
    plan = plan_upload(no_card_dir, "alice/card")
    card = next(f for f in plan.files if f.path_in_repo == "README.md")
    assert plan.rendered_card and card.source == rendered_card(no_card_dir, "alice/card")
    assert b"alice/card" in card.source and b"Macro F1" in card.source  # repo id and eval results in it
    assert not (no_card_dir / "README.md").exists()


def _drop(name: str):
    return lambda folder: (folder / name).unlink()


def _edit_config(edit):
    def apply(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))

    return apply


def _write(name: str, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


def _link(name: str, target: str):
    """`name` replaced by a symlink to `target` (relative to the folder); a target outside the folder gets a
    copy of `name`'s content, so only the link is wrong."""

    def apply(folder: Path) -> None:
        outside = (folder / target).resolve()
        if not outside.is_relative_to(folder.resolve()) and not outside.exists():
            shutil.copy2(folder / name, outside)
        (folder / name).unlink()
        (folder / name).symlink_to(target)

    return apply


BROKEN_FOLDERS = {
    "no_weights": (_drop("model.safetensors"), ["no model.safetensors"]),
    "pickle_weights": (_write("pytorch_model.bin", b"x"), ["pickle weights pytorch_model.bin"]),
    "pickle_checkpoint": (_write("weights.ckpt", b"x"), ["pickle weights weights.ckpt"]),
    "missing_code": (
        _drop("configuration_multitask_encoder.py"),
        [
            "config.json auto_map names configuration_multitask_encoder.py, which is not a file of the folder",
            "modeling_multitask_encoder.py imports .configuration_multitask_encoder, but "
            "configuration_multitask_encoder.py is not a file of the folder",
        ],
    ),
    "no_auto_map": (
        _edit_config(lambda c: c.pop("auto_map")),
        ["config.json auto_map lacks AutoConfig, AutoModel"],
    ),
    "other_model": (_edit_config(lambda c: c.update(model_type="bert")), ["has model_type 'bert'"]),
    "no_config": (_drop("config.json"), ["no config.json"]),
    "no_tokenizer": (_drop("tokenizer_config.json"), ["no tokenizer (tokenizer_config.json is missing)"]),
    "no_vocabulary": (_drop("tokenizer.json"), ["no tokenizer vocabulary"]),
    "single_and_sharded": (_write("model.safetensors.index.json", b"{}"), ["both model.safetensors and"]),
    "card_links_to_env": (
        _link("README.md", ".env"),
        ["README.md resolves to", ".env, not README.md itself: it would upload .env as README.md"],
    ),
    "code_links_to_card": (
        _link("modeling_multitask_encoder.py", "README.md"),
        ["modeling_multitask_encoder.py resolves to", "README.md, not modeling_multitask_encoder.py itself"],
    ),
    "config_links_outside": (
        _link("config.json", "../outside.json"),
        ["config.json resolves to", "outside.json, outside the folder: only the folder's own files"],
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FOLDERS))
def test_broken_folders_are_refused_naming_the_problem(case: str, trained_dir: Path, tmp_path: Path) -> None:
    edit, messages = BROKEN_FOLDERS[case]
    folder = copy_folder(trained_dir, tmp_path / "model", link_weights=True)
    edit(folder)
    with pytest.raises(PushError, match="is not ready to share") as refused:
        plan_upload(folder, "alice/m")
    for message in messages:
        assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_symlinks_are_refused_naming_both_paths(trained_dir: Path, tmp_path: Path) -> None:
    """A file is uploaded with the content of its real path: every link away from the file itself, through a
    symlinked folder or "..", is refused, naming the file and where it leads; a linked folder that is not
    uploaded is just left out, not followed."""
    folder = copy_folder(trained_dir, tmp_path / "model", link_weights=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "model.safetensors").unlink()
    shards = ["shards/model-00001-of-00002.safetensors", "../model-00002-of-00002.safetensors"]
    index = {"metadata": {}, "weight_map": {"encoder.a": shards[0], "heads.b": shards[1]}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (elsewhere / "model-00001-of-00002.safetensors").write_bytes(b"shard")
    (folder / "shards").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"shard")
    (folder / "README.md").unlink()
    (folder / "README.md").symlink_to("README.md")  # a loop (not rendered instead: the folder has problems)
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(PushError) as refused:
        plan_upload(folder, "alice/m")
    message = str(refused.value)
    assert f"{folder}/README.md cannot be resolved (Symlink loop" in message
    assert (
        f"{folder}/shards/model-00001-of-00002.safetensors resolves to "
        f"{elsewhere}/model-00001-of-00002.safetensors, outside the folder" in message
    )
    assert (
        f"{folder}/../model-00002-of-00002.safetensors resolves to "
        f"{tmp_path}/model-00002-of-00002.safetensors, outside the folder" in message
    )

    # The same shards as real files of the folder are fine; a linked folder the plan does not name is left
    # out like any other folder, and nothing under it is uploaded.
    (folder / "shards").unlink()
    (folder / "shards").mkdir()
    (folder / "shards" / "model-00001-of-00002.safetensors").write_bytes(b"shard")
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"shard")
    index["weight_map"]["heads.b"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "checkpoint-9").symlink_to(elsewhere, target_is_directory=True)
    (folder / "README.md").unlink()  # (rendered instead)
    (folder / "pytorch_model.bin").unlink()
    plan = plan_upload(folder, "alice/m")
    assert {"shards/model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} <= set(plan.paths)
    assert not [path for path in plan.paths if path.startswith("checkpoint-")]
    assert "checkpoint-9/" in plan.left_out


def test_not_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PushError, match=r"is not a folder"):
        plan_upload(tmp_path / "missing", "alice/m")


def test_sharded_weights_upload_the_index_and_every_shard(
    trained_dir: Path, model_files: set[str], tmp_path: Path
) -> None:
    folder = copy_folder(trained_dir, tmp_path / "model", link_weights=True)
    (folder / "model.safetensors").unlink()
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {
        "metadata": {},
        "weight_map": {"encoder.a": shards[0], "encoder.b": shards[1], "heads.c": shards[1]},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for shard in shards:
        (folder / shard).write_bytes(b"shard")
    plan = plan_upload(folder, "alice/m")
    assert set(plan.paths) == (model_files - {"model.safetensors"}) | {
        "model.safetensors.index.json",
        *shards,
    }
    (folder / shards[1]).unlink()
    with pytest.raises(PushError, match=r"names missing shards \['model-00002-of-00002.safetensors'\]"):
        plan_upload(folder, "alice/m")


def test_stale_weights_of_an_earlier_push_are_deleted() -> None:
    remote = ["README.md", "model.safetensors", "config.json", "old/model.safetensors", "notes.txt"]
    sharded = ["model.safetensors.index.json", "model-00001-of-00001.safetensors", "config.json"]
    assert stale_weight_files(remote, sharded) == ["model.safetensors"]
    remote_sharded = ["model.safetensors.index.json", "model-00001-of-00002.safetensors", "x.py"]
    assert stale_weight_files(remote_sharded, ["model.safetensors"]) == [
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    assert stale_weight_files(["model.safetensors"], ["model.safetensors"]) == []


def test_token_comes_from_flag_then_env_then_saved_login(monkeypatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    token_file = tmp_path / "token"
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PushError, match=r"no Hub token: set HF_TOKEN, log in with `hf auth login`, or pass"):
        resolve_token(None)
    token_file.write_text("hf_from_file")
    assert (resolve_token(None).value, resolve_token(None).source) == (
        "hf_from_file",
        f"the saved login ({token_file})",
    )
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert (resolve_token(None).value, resolve_token(None).source) == ("hf_from_env", "HF_TOKEN")
    assert (resolve_token("hf_from_flag").value, resolve_token("hf_from_flag").source) == (
        "hf_from_flag",
        "--token",
    )


def test_content_ids_match_the_hubs(tmp_path: Path) -> None:
    """What `already_pushed` compares: the git blob id of regular files, the sha256 of LFS files."""
    import hashlib

    data = b"weights\0and text"
    (tmp_path / "f").write_bytes(data)
    for source in (data, tmp_path / "f"):
        assert content_id(source, "git") == ("git", git_blob_sha1(data))
        assert content_id(source, "sha256") == ("sha256", hashlib.sha256(data).hexdigest())
