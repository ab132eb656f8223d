"""Weight interpolation of a fine-tuned encoder with the encoder it started from (WiSE-FT, Wortsman et al.,
2022, https://arxiv.org/abs/2109.01903): the encoder weights become (1 - alpha) * original + alpha * trained,
which often keeps most of the tasks' gain while giving back the general-purpose embedding the fine-tuning
wore down.

    multitask-encoder-interpolate TRAINED [ORIGINAL] --alpha A [A ...] [--config CONFIG.yaml] [--refit_heads] -o OUT
    python -m multitask_encoder.interpolate ...      (the same)

One alpha writes the interpolated model folder to OUT (alpha and the two models recorded in config.json as
`weight_interpolation`, and in the model card). Several alphas (with `--config`, the training config of the
run) score each one on the config's validation data and `embedding_evaluation:` sets, as the trainer does,
and write OUT/interpolation_curve.json, .md and .png: pick an alpha, then rerun with that one.

The heads are the trained model's; `--refit_heads` (with `--config`) trains them further for each alpha on
the frozen interpolated encoder (train.py's `init_from` + `freeze_encoder` + `precompute_embeddings` path).
In Python: `interpolate_encoder(trained_model, original, alpha) -> model`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .backbone import public_backbone_name, resolve_backbone
from .cli import (
    OneLineArgumentParser,
    add_common_options,
    configure_logging,
    debug_requested,
    first_line,
    run_command,
)
from .errors import MultiTaskEncoderError
from .model.modeling_multitask_encoder import MultiTaskEncoderModel
from .model_card import CARD_FILENAME, amend_interpolation_note, render_model_card
from .plots import PLOTS_DIR, write_interpolation_plot
from .task_types import task_type

logger = logging.getLogger(__name__)

PROG = "multitask-encoder-interpolate"
CURVE_NAME = "interpolation_curve"
DEFAULT_REFIT_EPOCHS = 3.0


class InterpolationError(MultiTaskEncoderError, ValueError):
    """A refusal of the interpolation command: bad alpha, a folder that is not a trained model, encoders that
    do not match, options that do not go together."""


# ------------------------------------------------------------------------------------------------ the weights


def check_alpha(alpha: Any) -> float:
    """`alpha` as a float in [0, 1], else an InterpolationError saying why."""
    try:
        value = float(alpha)
        if isinstance(alpha, bool):
            raise TypeError
    except (TypeError, ValueError):
        raise InterpolationError(
            f"alpha must be a number in [0, 1] (0: the original encoder, 1: the trained one), got {alpha!r}."
        ) from None
    if not math.isfinite(value):
        raise InterpolationError(f"alpha must be a finite number in [0, 1], got {alpha!r}.")
    if not 0.0 <= value <= 1.0:
        raise InterpolationError(
            f"alpha {alpha} is outside [0, 1]: 0 is the original encoder and 1 the trained one; a value outside "
            "would extrapolate beyond both models, which is not a weight interpolation."
        )
    return value


def display_name(name_or_path: str | None) -> str | None:
    """The name recorded for a model (config.json, card): `public_backbone_name`'s (a Hub id as given, the
    packaged MiniLM or a Hub cache snapshot as its Hub id, no local path), a local folder by its bare name."""
    if name_or_path is None:
        return None
    return public_backbone_name(str(name_or_path)).removeprefix("./")


def _is_local_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)


def _read_config(name_or_path: str, role: str):
    from transformers import AutoConfig

    if _is_local_path(name_or_path) and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise InterpolationError(f"{role} {name_or_path}: no such folder.")
    try:
        return AutoConfig.from_pretrained(os.path.expanduser(name_or_path))
    except Exception as error:  # OSError, ValueError, ... from deep inside transformers: one line
        raise InterpolationError(
            f"{role} {name_or_path} is not a model folder or Hub id (no readable config.json): {first_line(error)}"
        ) from None


def load_trained(name_or_path: str) -> MultiTaskEncoderModel:
    """The trained multitask-encoder model, refused (naming what it is) when the folder is something else."""
    config = _read_config(name_or_path, "TRAINED")
    if getattr(config, "model_type", None) != "multitask_encoder":
        raise InterpolationError(
            f"TRAINED {name_or_path} is not a trained multitask-encoder model (its config.json has model_type "
            f"{getattr(config, 'model_type', None)!r}): give the folder a training run wrote."
        )
    try:
        return MultiTaskEncoderModel.from_pretrained(os.path.expanduser(name_or_path)).eval()
    except Exception as error:
        raise InterpolationError(f"cannot load TRAINED {name_or_path}: {first_line(error)}") from None


def recorded_original(trained_model: MultiTaskEncoderModel, trained_name: str) -> str:
    """The encoder a trained model started from, as its config records it (`base_model_name`): a Hub id, or a
    local folder by its name only ("./name": no path of the training machine is saved), found only from
    that folder's parent; refused, asking for ORIGINAL, when it records none or the folder is not here."""
    original = trained_model.config.base_model_name
    if original is None:
        raise InterpolationError(
            f"{trained_name} does not record the encoder it started from (base_model_name): give ORIGINAL."
        )
    if original.startswith("./") and not os.path.isdir(original):
        raise InterpolationError(
            f"{trained_name} started from the local folder {original[2:]!r} (base_model_name records its name, "
            "not its path): give its path as ORIGINAL."
        )
    return original


def original_encoder_state(original: str) -> dict[str, torch.Tensor]:
    """The encoder weights of ORIGINAL: a plain encoder (folder or Hub id; the default MiniLM resolves to the
    packaged copy) or, for a model trained further with init_from, a multitask-encoder folder's encoder."""
    from transformers import AutoModel

    source = resolve_backbone(original)
    config = _read_config(source, "ORIGINAL")
    try:
        if getattr(config, "model_type", None) == "multitask_encoder":
            encoder = MultiTaskEncoderModel.from_pretrained(os.path.expanduser(source)).encoder
        else:
            encoder = AutoModel.from_pretrained(os.path.expanduser(source))
    except Exception as error:
        raise InterpolationError(f"cannot load ORIGINAL {original}: {first_line(error)}") from None
    # We pool ourselves: the backbone's pooler is not part of a multitask-encoder's encoder.
    return {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_encoders_match(trained: Mapping[str, torch.Tensor], original: Mapping[str, torch.Tensor]) -> None:
    """Refuse, naming the keys, two encoders whose parameter names or shapes differ."""
    problems = []
    only_trained = sorted(set(trained) - set(original))
    only_original = sorted(set(original) - set(trained))
    if only_trained:
        problems.append(f"only the trained encoder has {_names(only_trained)}")
    if only_original:
        problems.append(f"only the original encoder has {_names(only_original)}")
    shapes = [
        f"{key} is {list(trained[key].shape)} trained but {list(original[key].shape)} original"
        for key in trained
        if key in original and trained[key].shape != original[key].shape
    ]
    if shapes:
        problems.append(_names(shapes, 4))
    if problems:
        raise InterpolationError(
            "the two encoders do not match, so their weights cannot be interpolated: "
            + "; ".join(problems)
            + ". Is ORIGINAL the backbone the trained model started from?"
        )


def interpolated_state(
    trained: Mapping[str, torch.Tensor], original: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 - alpha) * original + alpha * trained for every floating-point tensor, in the trained tensor's dtype;
    alpha 1 and 0 are exact copies of the trained and original tensors."""
    alpha = check_alpha(alpha)
    check_encoders_match(trained, original)
    state = {}
    for key, tensor in trained.items():
        other = original[key].to(tensor.device)
        if alpha == 1.0 or not tensor.is_floating_point():
            state[key] = tensor.detach().clone()  # (integer buffers are the trained model's)
        elif alpha == 0.0:
            state[key] = other.detach().to(tensor.dtype).clone()
        else:
            mixed = (1.0 - alpha) * other.detach().float() + alpha * tensor.detach().float()
            state[key] = mixed.to(tensor.dtype)
    return state


def interpolate_encoder(
    trained_model: MultiTaskEncoderModel | str,
    original: str | nn.Module | Mapping[str, torch.Tensor] | None,
    alpha: float,
    *,
    trained_name: str | None = None,
    original_name: str | None = None,
) -> MultiTaskEncoderModel:
    """A new model: the trained model (object, folder or Hub id) with its encoder weights set to
    (1 - alpha) * original + alpha * trained and its heads unchanged; `config.weight_interpolation` records
    alpha and both models. `original`: a folder or Hub id of the plain encoder (None: the trained model's
    `base_model_name`), an encoder module (or a multitask-encoder model) or an encoder state dict."""
    alpha = check_alpha(alpha)
    if isinstance(trained_model, (str, os.PathLike)):
        trained_name = trained_name or display_name(str(trained_model))
        trained_model = load_trained(str(trained_model))
    if original is None:
        original = recorded_original(trained_model, "the trained model")
    if isinstance(original, (str, os.PathLike)):
        original_name = original_name or display_name(str(original))
        original_state = original_encoder_state(str(original))
    elif isinstance(original, MultiTaskEncoderModel):
        original_name = original_name or display_name(original.config.name_or_path or None)
        original_state = original.encoder.state_dict()
    elif isinstance(original, nn.Module):
        original_name = original_name or display_name(getattr(original.config, "name_or_path", None) or None)
        original_state = {k: v for k, v in original.state_dict().items() if not k.startswith("pooler.")}
    else:
        original_state = dict(original)
    state = interpolated_state(trained_model.encoder.state_dict(), original_state, alpha)
    tokenizer = trained_model._tokenizer
    trained_model._tokenizer = None  # shared, not deep-copied
    try:
        model = copy.deepcopy(trained_model)
    finally:
        trained_model._tokenizer = tokenizer
    model._tokenizer = tokenizer
    model.encoder.load_state_dict(state, strict=True)
    model.config.weight_interpolation = {
        "alpha": alpha,
        "original": original_name or "an encoder state dict",
        "trained": trained_name
        or display_name(trained_model.config.name_or_path or None)
        or "a multitask-encoder model",
        "heads": "trained",
    }
    return model.eval()


# ------------------------------------------------------------------------------------------------ the folder


def write_model_folder(model: MultiTaskEncoderModel, trained_source: str, folder: str) -> None:
    """The interpolated model as a save_pretrained folder, with the trained model's card amended by the
    interpolation line (or a card rendered from the config when the trained folder has none) and its plots."""
    model.save_pretrained(folder)
    trained_dir = os.path.expanduser(trained_source)
    card_path = os.path.join(trained_dir, CARD_FILENAME)
    if os.path.isdir(trained_dir) and os.path.isfile(card_path):
        with open(card_path, encoding="utf-8") as f:
            card = amend_interpolation_note(f.read(), model.config)
        plots = os.path.join(trained_dir, PLOTS_DIR)
        if os.path.isdir(plots):  # the card embeds them
            shutil.copytree(plots, os.path.join(folder, PLOTS_DIR), dirs_exist_ok=True)
    else:
        card = render_model_card(model.config)
    with open(os.path.join(folder, CARD_FILENAME), "w", encoding="utf-8") as f:
        f.write(card)


def check_output(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise InterpolationError(f"-o {path} is a file, not a folder.")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise InterpolationError(
            f"-o {path} is a folder that is not empty: choose another, or pass --overwrite."
        )


def publish(staging: str, output: str) -> None:
    """Move the finished staging folder to `output` (replacing it with --overwrite): OUT is never half written."""
    if os.path.isdir(output):
        shutil.rmtree(output)
    os.replace(staging, output)


# ------------------------------------------------------------------------------------------------ the scores


@dataclass
class Scorer:
    """The config's validation data and embedding sets, loaded by train.py's `prepare_run` from the trained
    model (init_from), with its trainer: `score(model)` evaluates any model of the same tasks as training
    does (`MultiTaskTrainer.evaluate`)."""

    config: str
    trained_source: str
    work_dir: str
    trained_tasks: list[str]
    main_metrics: dict[str, str] = field(default_factory=dict)
    embedding_sets: list[str] = field(default_factory=list)
    run: Any = None

    def prepare(self) -> None:
        from .train import prepare_run

        argv = [
            self.config,
            "--init_from",
            self.trained_source,
            "--output_dir",
            os.path.join(self.work_dir, "evaluation"),
            "--report_to",
            "none",
            "--precompute_embeddings",
            "false",  # every alpha's encoder is new: nothing precomputed may be reused
            "--freeze_existing",
            "false",
        ]
        self.run = prepare_run(argv, use_teachers=False)
        if self.run.model_args.peft is not None:
            raise InterpolationError(
                f"{self.config} trains a PEFT adapter (peft:); the trained folder holds the merged weights: give "
                "a copy of the config without its peft: block."
            )
        check_config_tasks(self.trained_tasks, self.run.model.config.tasks, self.config)
        self.main_metrics = {
            name: task_type(self.run.model.config.tasks[name]).main_metric
            for name in self.run.data.validation
        }
        self.embedding_sets = list(self.run.embedding_sets)
        if not self.main_metrics and not self.embedding_sets:
            raise InterpolationError(
                f"{self.config} gives no validation data and no embedding_evaluation: sets: nothing to score."
            )

    def score(self, model: MultiTaskEncoderModel) -> dict[str, dict[str, float]]:
        from .trainer import embedding_spearman

        if self.run is None:
            self.prepare()
        run = self.run
        run.model.load_state_dict(model.state_dict(), strict=True)
        run.model.eval()
        if run.data.validation:
            metrics = run.trainer.evaluate()
        else:
            metrics = {
                f"eval_embedding_{name}_spearman": embedding_spearman(run.model, pairs)
                for name, pairs in run.embedding_sets.items()
            }
        return {
            "tasks": {task: metrics[f"eval_{task}_{metric}"] for task, metric in self.main_metrics.items()},
            "embedding": {name: metrics[f"eval_embedding_{name}_spearman"] for name in self.embedding_sets},
        }


def check_config_tasks(trained_tasks, run_tasks, config: str) -> None:
    """Refuse a config with tasks the trained model lacks (init_from would add them with untrained heads)."""
    added = [name for name in run_tasks if name not in trained_tasks]
    if added:
        raise InterpolationError(
            f"{config} has tasks the trained model does not have: {added}; give the config the model was "
            "trained with."
        )


def refit_heads(
    model: MultiTaskEncoderModel,
    config: str,
    output_dir: str,
    work_dir: str,
    epochs: float,
    learning_rate: float | None,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Train the heads of the interpolated model further on its frozen encoder: train.py's run with
    init_from (the interpolated model, saved to `work_dir`), freeze_encoder and precompute_embeddings, a few
    epochs, into `output_dir` (model, card, eval_results.json). Returns (the run's results, the scores)."""
    from .train import prepare_run, train_and_save

    model.config.weight_interpolation = {**model.config.weight_interpolation, "heads": "refit"}
    start = os.path.join(work_dir, "interpolated")
    model.save_pretrained(start)
    argv = [
        config,
        "--init_from",
        start,
        "--output_dir",
        output_dir,
        "--overwrite_output_dir",
        "true",
        "--report_to",
        "none",
        "--freeze_encoder",
        "true",
        "--precompute_embeddings",
        "true",
        "--freeze_existing",
        "false",
        "--num_train_epochs",
        str(epochs),
        "--max_steps",
        "-1",
    ]
    if learning_rate is not None:
        argv += ["--learning_rate", str(learning_rate), "--head_learning_rate", str(learning_rate)]
    run = prepare_run(argv, use_teachers=False)
    check_config_tasks(model.config.tasks, run.model.config.tasks, config)
    results = train_and_save(run)
    scores = {
        "tasks": {
            task: metrics[task_type(run.model.config.tasks[task]).main_metric]
            for task, metrics in (results.get("validation") or {}).items()
        },
        "embedding": {name: entry["after"] for name, entry in (results.get("embedding") or {}).items()},
    }
    return results, scores


# ------------------------------------------------------------------------------------------------ the curve


def curve_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(kind, name, header) of every column: the tasks, then the embedding sets."""
    columns: list[tuple[str, str, str]] = []
    first = rows[0]
    for task in first["tasks"]:
        columns.append(("tasks", task, f"{task} ({first['metrics'][task]})"))
    for name in first["embedding"]:
        columns.append(("embedding", name, f"embedding {name} (spearman)"))
    return columns


def curve_table(rows: list[dict[str, Any]]) -> str:
    columns = curve_columns(rows)
    lines = [
        "| alpha | " + " | ".join(header.replace("|", "\\|") for _, _, header in columns) + " |",
        "|---:|" + "---:|" * len(columns),
    ]
    for row in rows:
        cells = [_cell(row[kind].get(name)) for kind, name, _ in columns]
        lines.append(f"| {row['alpha']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def write_curve(folder: str, rows: list[dict[str, Any]], record: dict[str, Any]) -> dict[str, str]:
    """interpolation_curve.json, .md and .png in `folder`; returns the paths written, by extension."""
    paths = {}
    paths["json"] = os.path.join(folder, f"{CURVE_NAME}.json")
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({**record, "rows": rows}, f, indent=2)
        f.write("\n")
    paths["md"] = os.path.join(folder, f"{CURVE_NAME}.md")
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(
            f"# Weight interpolation (WiSE-FT) of `{record['trained']}` with `{record['original']}`\n\n"
            "Validation score of every task (its main metric) and Spearman of the embedding on each "
            f"embedding evaluation set, per alpha (0: the original encoder, 1: the trained one); heads "
            f"{'refit per alpha' if record['refit_heads'] else 'of the trained model'}.\n\n"
        )
        f.write(curve_table(rows))
    alphas = [row["alpha"] for row in rows]
    series = {header: [row[kind].get(name) for row in rows] for kind, name, header in curve_columns(rows)}
    png = write_interpolation_plot(os.path.join(folder, f"{CURVE_NAME}.png"), alphas, series)
    if png:
        paths["png"] = png
    return paths


# ------------------------------------------------------------------------------------------------ the command


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("trained", metavar="TRAINED", help="trained multitask-encoder folder or Hub id")
    parser.add_argument(
        "original",
        metavar="ORIGINAL",
        nargs="?",
        help="the encoder it started from, folder or Hub id (default: the trained model's base_model_name)",
    )
    parser.add_argument(
        "--alpha",
        nargs="+",
        required=True,
        metavar="A",
        help="weight of the trained encoder, in [0, 1]; several (with --config): the curve",
    )
    parser.add_argument("--config", metavar="CONFIG.yaml", help="the training config of the run (its data)")
    parser.add_argument(
        "--refit_heads",
        action="store_true",
        help="refit the heads on each frozen interpolated encoder (needs --config)",
    )
    parser.add_argument(
        "--refit_epochs",
        type=float,
        default=DEFAULT_REFIT_EPOCHS,
        help=f"epochs of the head refit (default: {DEFAULT_REFIT_EPOCHS:g})",
    )
    parser.add_argument(
        "--refit_learning_rate", type=float, help="learning rate of the refit (default: the config's)"
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="the model folder (one alpha) or the curve's folder",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it is not empty")
    add_common_options(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    alphas = sorted({check_alpha(alpha) for alpha in args.alpha})
    if args.refit_heads and not args.config:
        raise InterpolationError(
            "--refit_heads needs --config CONFIG.yaml: the training config of the run, whose data refits the heads."
        )
    if len(alphas) > 1 and not args.config:
        raise InterpolationError(
            "several alphas are scored on the run's validation data: give --config CONFIG.yaml (or one alpha)."
        )
    if not args.refit_epochs > 0:
        raise InterpolationError(f"--refit_epochs must be positive, got {args.refit_epochs:g}.")
    if args.config and not os.path.isfile(args.config):
        raise InterpolationError(f"--config {args.config}: no such file.")
    check_output(args.output, args.overwrite)
    trained = load_trained(args.trained)
    trained_name = display_name(args.trained)
    original = args.original or recorded_original(trained, args.trained)
    original_state = original_encoder_state(original)
    check_encoders_match(trained.encoder.state_dict(), original_state)
    names = {"trained_name": trained_name, "original_name": display_name(original)}

    parent = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".interpolate-", dir=parent) as work:
        staging = os.path.join(work, "out")
        os.makedirs(staging)
        scorer = None
        if args.config and not args.refit_heads:
            scorer = Scorer(args.config, args.trained, work, list(trained.config.tasks))
        rows = []
        for alpha in alphas:
            model = interpolate_encoder(trained, original_state, alpha, **names)
            one = len(alphas) == 1
            if args.refit_heads:
                target = staging if one else os.path.join(work, f"refit-{alpha:g}")
                alpha_work = os.path.join(work, f"start-{alpha:g}")
                _, scores = refit_heads(
                    model, args.config, target, alpha_work, args.refit_epochs, args.refit_learning_rate
                )
                shutil.rmtree(alpha_work, ignore_errors=True)
                metrics = {t: task_type(trained.config.tasks[t]).main_metric for t in scores["tasks"]}
            else:
                if one:
                    write_model_folder(model, args.trained, staging)
                if scorer is None:
                    continue
                scores = scorer.score(model)
                metrics = dict(scorer.main_metrics)
            rows.append({"alpha": alpha, **scores, "metrics": metrics})
            print(f"alpha {alpha:g}: " + _row_summary(rows[-1]), flush=True)
        if rows and len(alphas) > 1:
            record = {
                "trained": trained_name,
                "original": display_name(original),
                "refit_heads": bool(args.refit_heads),
                "refit_epochs": args.refit_epochs if args.refit_heads else None,
                "config": os.path.basename(args.config),
            }
            written = write_curve(staging, rows, record)
        publish(staging, args.output)
    if rows:
        print("\n" + curve_table(rows), flush=True)
    if len(alphas) > 1:
        listed = ", ".join(os.path.join(args.output, os.path.basename(p)) for p in written.values())
        print(f"Written: {listed}. Pick an alpha and rerun with --alpha A to write that model.", flush=True)
    else:
        print(f"The interpolated model (alpha {alphas[0]:g}) is in {args.output}.", flush=True)


def _row_summary(row: dict[str, Any]) -> str:
    parts = [f"{task} {value:.4f}" for task, value in row["tasks"].items()]
    parts += [f"embedding {name} {value:.4f}" for name, value in row["embedding"].items()]
    return "  ".join(parts) or "(nothing scored)"


def main(argv: list[str] | None = None) -> int:
    """The command: exit status 0 when OUT is written; a refusal is one line on stderr, exit status 1."""
    args = build_parser().parse_args(argv)
    configure_logging()
    return run_command(
        lambda: run(args),
        prefix=f"{PROG}: error:",
        refusals=(MultiTaskEncoderError,),
        debug=debug_requested(args.debug),
        interrupted=f"interrupted; {args.output} was not written",
    )


if __name__ == "__main__":
    sys.exit(main())
