"""The training job behind `train.py`: read a YAML/JSON config (tasks, data, model and `TrainingArguments`
options), let command-line flags override it, load and check the data, train with `MultiTaskTrainer`, and
write the model folder, `eval_results.json`, per-task test predictions and the model card.

    multitask-encoder-train [CONFIG.yaml] [--output_dir DIR] [--max_steps N] [--any TrainingArguments flag] ...
    python -m multitask_encoder.train ...      (the same; train.py in a checkout is a thin wrapper)

Without a config it trains the offline demo (configs/demo.yaml inside the package).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    HfArgumentParser,
    ProgressCallback,
    TrainerCallback,
    set_seed,
)
from transformers.integrations import INTEGRATION_TO_CALLBACK, get_reporting_integration_callbacks

from .adapters import (
    apply_adapter,
    has_adapter,
    merge_adapter,
    merge_and_save_adapter,
    peft_config,
    trainable_parameters,
)
from .arguments import (
    ARGUMENT_CLASSES,
    MULTITASK_OPTIONS,
    JobArguments,
    ModelArguments,
    MultiTaskTrainingArguments,
    tasks_help,
)
from .backbone import public_backbone_name, resolve_backbone
from .checkpoints import (
    checkpoint_problem,
    remove_checkpoints,
    resumable_checkpoint,
    run_fingerprint,
    saving_into,
    write_run_file,
)
from .cli import configure_logging, debug_requested, one_line_usage_errors, run_command
from .config_file import ConfigError, check_finite_options, check_options, read_config_file
from .data import MultiTaskData, data_cache_dir, load_embedding_eval_set, load_multitask_data
from .errors import MultiTaskEncoderError
from .linear_probe import fit_heads_first
from .model.backbone_multitask_encoder import default_max_seq_length, sentence_transformers_settings
from .model.configuration_multitask_encoder import check_fits_encoder
from .model.modeling_multitask_encoder import MultiTaskEncoderModel
from .model_card import backbone_languages, write_model_card
from .plots import write_plots
from .task_types import task_type
from .teachers import attach_teachers, teacher_display_name
from .trainer import MultiTaskTrainer, embedding_spearman, scalar_metrics

logger = logging.getLogger(__name__)

PROG = "multitask-encoder-train"
# Raised before training by the checks of the config, options, data and output folder: a user's input to fix.
# The package's own refusals, and those of the model files, transformers and the file system.
REFUSALS = (MultiTaskEncoderError, ValueError, TypeError, OSError, ImportError)
# The offline demo, shipped inside the package (an installed wheel runs it from any folder).
DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def load_config_file(path: str) -> dict[str, Any]:
    """A training config (YAML or JSON): flat option keys plus a `tasks:` mapping, checked (config_file.py)."""
    values = read_config_file(path)
    if not isinstance(values.get("tasks"), dict) or not values["tasks"]:
        raise ConfigError(f"{path}: a training config needs a non-empty `tasks:` mapping.")
    check_options(path, values, ARGUMENT_CLASSES)
    return values


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        ARGUMENT_CLASSES,
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=tasks_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.usage = "%(prog)s [CONFIG.yaml] [--flags]  (flags override the config file)"
    return one_line_usage_errors(parser)


def parse_arguments(argv: list[str] | None = None):
    """(model_args, training_args, job_args, tasks, embedding evaluation sets, teachers, config_path): the
    file's values, then the flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = str(DEMO_CONFIG)
    if argv and not argv[0].startswith("-"):
        config_path = argv.pop(0)
    parser = build_parser()
    if "-h" in argv or "--help" in argv:
        parser.parse_args_into_dataclasses(args=argv)  # prints help and exits
    values = load_config_file(config_path)
    tasks = values.pop("tasks")
    embedding_sets = values.pop("embedding_evaluation", None) or {}
    if not isinstance(embedding_sets, dict):
        raise ConfigError(
            f"{config_path}: `embedding_evaluation:` must map names to sets of text pairs and scores."
        )
    teachers = values.pop("teachers", None) or {}
    if not isinstance(teachers, dict):
        raise ConfigError(
            f"{config_path}: `teachers:` must map task names to trained model folders or Hub ids."
        )
    parser.set_defaults(**values)
    model_args, training_args, job_args = parser.parse_args_into_dataclasses(args=argv)
    check_finite_options(f"{config_path} (or its flags)", model_args, training_args, job_args)
    if job_args.only_tasks:
        unknown = [name for name in job_args.only_tasks if name not in tasks]
        if unknown:
            raise ConfigError(f"--only_tasks: {unknown} are not tasks of {config_path} ({list(tasks)}).")
        tasks = {name: entry for name, entry in tasks.items() if name in job_args.only_tasks}
        teachers = {name: source for name, source in teachers.items() if name in tasks}
    return model_args, training_args, job_args, tasks, embedding_sets, teachers, os.path.abspath(config_path)


class RunPrinter(ProgressCallback):
    """The progress bars, and one line per log instead of the raw dicts: the training loss (with each task's)
    at `logging_steps`, and each evaluation during training: every task's main metric and loss. The
    evaluations after training are printed once, in full, by the summary."""

    def __init__(self) -> None:
        super().__init__()
        self.training_finished = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training_finished = False  # LP-FT's heads-first phase trains with the same printer first
        super().on_train_begin(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        self.training_finished = True
        super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        step = f"step {state.global_step}/{state.max_steps}"
        if "loss" in logs:
            tasks = "  ".join(f"{k[:-5]} {v:.4f}" for k, v in logs.items() if k.endswith("_loss"))
            self._write(f"[{step}] train loss {logs['loss']:.4f}" + (f" ({tasks})" if tasks else ""))
        if self.training_finished or model is None:
            return
        for prefix, split in (("eval", "validation"), ("test", "test")):
            parts = []
            for task, spec in model.config.tasks.items():
                names = (task_type(spec).main_metric, "loss")
                shown = [
                    f"{n} {logs[f'{prefix}_{task}_{n}']:.4f}" for n in names if f"{prefix}_{task}_{n}" in logs
                ]
                if shown:
                    parts.append(f"{task} " + " ".join(shown))
            extra = [
                f"{k.removeprefix(f'{prefix}_')} {v:.4f}"
                for k, v in logs.items()
                if k == f"{prefix}_combined_score" or k.startswith(f"{prefix}_embedding_")
            ]
            if parts or extra:
                when = f"epoch {state.epoch:.2f}" if state.epoch is not None else step
                self._write(f"[{when}] {split}: " + " | ".join(parts + extra))

    def _write(self, line: str) -> None:
        bar = getattr(self, "training_bar", None)
        (bar.write if bar is not None else print)(line)


# Extras that install a tracker's package, by report_to name (others: the package of the same name).
TRACKER_EXTRAS = {"tensorboard": "pip install 'multitask-encoder[tensorboard]'"}


def check_trackers(report_to: list[str]) -> None:
    """Refuse, before any data is read, a `--report_to` tracker that is unknown or not installed (the Trainer
    would only fail once the data is loaded and the model built)."""
    for callback_class in get_reporting_integration_callbacks(report_to):  # ValueError for unknown names
        try:
            callback_class()
        except (ImportError, RuntimeError) as error:
            name = next(
                (k for k, v in INTEGRATION_TO_CALLBACK.items() if v is callback_class), str(callback_class)
            )
            install = TRACKER_EXTRAS.get(name, f"pip install {name}")
            raise ImportError(
                f"--report_to {name}: the tracker is not installed ({install}). {error}"
            ) from None


def write_predictions_csv(
    path: str, model, task: str, dataset, logits: np.ndarray, labels: np.ndarray
) -> None:
    """Per-example test predictions of one task: text (and text_pair for pair tasks), gold, predicted, and the
    prediction's score for the types that have one."""
    spec = model.config.tasks[task]
    kind = task_type(spec)
    fields = 3 if kind.has_prediction_score else 2
    columns = [column for column in ("text", "text_pair") if column in dataset.column_names]
    texts = [dataset[column] for column in columns] or [[""] * len(dataset)]
    if not len(texts[0]) == len(logits) == len(labels):
        raise ValueError(
            f"Task {task!r}: {len(logits)} test logits and {len(labels)} labels for {len(texts[0])} test rows."
        )
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*(columns or ["text"]), *("gold", "predicted", "score")[:fields]])
        for row, (row_logits, row_labels) in enumerate(zip(logits, labels)):
            line = kind.prediction_row(spec, row_logits, row_labels)[:fields]
            writer.writerow([*(column[row] for column in texts), *line])


@dataclass
class TrainingRun:
    """A run that passed every check: parsed options, loaded data, the model and its trainer."""

    model_args: ModelArguments
    training_args: MultiTaskTrainingArguments
    job_args: JobArguments
    tasks: dict[str, Any]
    data: MultiTaskData
    model: MultiTaskEncoderModel
    trainer: MultiTaskTrainer
    fingerprint: dict[str, Any]
    resume_from: str | None
    embedding_sets: dict[str, Any]
    embedding_before: dict[str, float]  # each set's Spearman for the model before training
    teachers: dict[str, str]  # task -> its teacher (as the config names it), when distilling


def tasks_with_trained_labels(tasks: dict[str, Any], model: MultiTaskEncoderModel) -> dict[str, Any]:
    """The config's task entries, those of tasks the trained model has taking its type and labels (their data
    must fit them; a different type or label set is refused)."""
    entries = {}
    for name, entry in tasks.items():
        spec = model.config.tasks.get(name)
        if spec is not None and isinstance(entry, dict):
            if entry.get("type") != spec.type:
                raise ValueError(
                    f"Task {name!r} is a {spec.type} task in the model to start from, not {entry.get('type')!r}."
                )
            if entry.get("labels") not in (None, list(spec.labels)):
                raise ValueError(
                    f"Task {name!r}: the model to start from has the labels {spec.labels}, not {entry['labels']}."
                )
            entry = {**entry, "labels": list(spec.labels)}
        entries[name] = entry
    return entries


def backbone_max_seq_length(max_seq_length: int | None, backbone: str, tokenizer) -> int:
    """The max_seq_length a run tokenises at and builds its model with: the one given, else the backbone's own
    (`default_max_seq_length`, as from_backbone takes it). One beyond the backbone's position embeddings is
    refused before any data is read, rather than capped, so the saved model's max_seq_length is the one asked
    for."""
    encoder_config = AutoConfig.from_pretrained(backbone)
    if max_seq_length is None:
        settings = sentence_transformers_settings(backbone)
        max_seq_length = default_max_seq_length(settings, tokenizer, encoder_config)
        if max_seq_length is None:
            raise ConfigError(
                f"The backbone {backbone} states no longest input (no sentence-transformers max_seq_length, no "
                "tokenizer model_max_length, no position embeddings): set max_seq_length."
            )
    try:
        check_fits_encoder(max_seq_length, encoder_config, f"the backbone {backbone}")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return max_seq_length


def model_options_init_from_cannot_apply(
    model_args: ModelArguments, model: MultiTaskEncoderModel
) -> list[str]:
    """The model options given (not left at their default) that differ from the model `init_from` loaded: they
    shape the pooling and embedding every trained head reads, so the trained model cannot take them (the
    backbone option is only warned about: prepare_run)."""
    config = model.config
    trained = {
        "pooling": config.pooling,
        "normalize": config.normalize,
        "projection_dim": config.projection_dim,
        "max_seq_length": model.max_seq_length,
        "loss_weighting": config.loss_weighting,
        "attn_implementation": getattr(model.encoder.config, "_attn_implementation", None),
    }
    defaults = {option.name: option.default for option in dataclasses.fields(ModelArguments)}
    return [
        f"{name}={getattr(model_args, name)!r} (the model has {value!r})"
        for name, value in trained.items()
        if getattr(model_args, name) != defaults[name] and getattr(model_args, name) != value
    ]


def prepare_run(
    argv: list[str] | None = None,
    callbacks: list[TrainerCallback] | None = None,
    use_teachers: bool = True,
) -> TrainingRun:
    """Everything before training, where a bad input is refused (config, options, data, output folder).
    `use_teachers=False` leaves the config's `teachers:` out (training the teachers themselves)."""
    model_args, training_args, job_args, tasks, embedding_entries, teachers, config_path = parse_arguments(
        argv
    )
    teachers = teachers if use_teachers else {}
    # What is not installed is named before any data is read.
    check_trackers(training_args.report_to)
    if model_args.peft is not None:
        peft_config(model_args.peft)
        if training_args.freeze_encoder or training_args.precompute_embeddings:
            raise ValueError(
                "peft trains the encoder through an adapter: it cannot be combined with freeze_encoder."
            )
    if job_args.freeze_existing and not job_args.init_from:
        raise ConfigError(
            "freeze_existing keeps the encoder and heads of the model given by init_from as they are; without "
            "init_from there is nothing to keep: set init_from (a trained folder or Hub id), or drop "
            "freeze_existing."
        )
    if job_args.freeze_existing and model_args.peft is not None:
        # A LoRA (or any) adapter changes what the encoder computes, so the old tasks' predictions would move.
        raise ConfigError(
            "freeze_existing keeps the old tasks' predictions bit-identical, which needs the encoder unchanged; "
            "a peft adapter trains the encoder: drop peft (the new heads train on the frozen encoder), or drop "
            "freeze_existing (the old tasks then change too)."
        )
    output_dir = training_args.output_dir
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir {output_dir} is a file, not a folder.")
    set_seed(training_args.seed)
    start_from = None
    if (
        job_args.init_from
    ):  # a trained model: its encoder, heads and labels stay; the config's new tasks are added
        start_from = MultiTaskEncoderModel.from_pretrained(job_args.init_from)
        if model_args.backbone is not None:  # (a name or a path: only a warning, as two spellings may agree)
            logger.warning(
                f"init_from {job_args.init_from}: the backbone option ({model_args.backbone}) is not used; the "
                f"encoder is the trained model's (from {start_from.config.base_model_name})."
            )
        refused = model_options_init_from_cannot_apply(model_args, start_from)
        if refused:
            raise ConfigError(
                f"init_from {job_args.init_from} takes the trained model as it is, so these model options cannot "
                f"be applied: {'; '.join(refused)}. Drop them (or start from a backbone without init_from)."
            )
        tasks = tasks_with_trained_labels(tasks, start_from)
        tokenizer = start_from.tokenizer
        max_seq_length = start_from.max_seq_length
    else:
        backbone = resolve_backbone(model_args.backbone)
        tokenizer = AutoTokenizer.from_pretrained(backbone)
        max_seq_length = backbone_max_seq_length(model_args.max_seq_length, backbone, tokenizer)
    # In a distributed run the main process tokenises and writes the cache files first; the others then
    # read them (all writing the same files at once would race).
    with training_args.main_process_first(desc="loading and tokenising the tasks' data"):
        data = load_multitask_data(
            tasks,
            tokenizer,
            max_seq_length=max_seq_length,
            base_dir=os.path.dirname(config_path),
            seed=training_args.seed,
            cache_dir=job_args.data_cache_dir,
            drop_held_out_duplicates=job_args.drop_held_out_duplicates,
        )
        embedding_sets = {
            name: load_embedding_eval_set(name, entry, os.path.dirname(config_path), job_args.data_cache_dir)
            for name, entry in embedding_entries.items()
        }
        train_data_id = data.train._fingerprint
        # Single-task teachers' targets beside the train rows (computed once, cached; teachers.py).
        data.train, teacher_fingerprints = attach_teachers(
            data.train,
            teachers,
            data.task_specs,
            tokenizer,
            base_dir=os.path.dirname(config_path),
            cache_dir=data_cache_dir(job_args.data_cache_dir),
            batch_size=training_args.per_device_eval_batch_size,
        )
    if teacher_fingerprints:  # another teacher makes another run (a checkpoint of this one is not resumed)
        train_data_id = f"{train_data_id}+teachers:{json.dumps(teacher_fingerprints, sort_keys=True)}"
    fingerprint = run_fingerprint(
        tasks, model_args, training_args, MULTITASK_OPTIONS, train_data_id, job_args=job_args
    )
    # Never lose work, never mix runs: a run killed mid-way picks up from its last intact checkpoint; a
    # finished run or another run's checkpoints are refused (checkpoints.py).
    resume = training_args.resume_from_checkpoint
    if resume is None:
        with training_args.main_process_first(desc="checking the output folder"):
            overwrite = job_args.overwrite_output_dir and training_args.process_index == 0
            resume = resumable_checkpoint(output_dir, fingerprint, overwrite)
    elif (problem := checkpoint_problem(resume)) is not None:
        raise ValueError(f"--resume_from_checkpoint {resume}: {problem}.")
    if start_from is not None:
        model = start_from
        added = [name for name in data.task_specs if name not in model.config.tasks]
        for name in added:
            model.add_task(name, data.task_specs[name])
        if job_args.freeze_existing:
            # The encoder and the trained heads do not move: their predictions stay exactly as they were.
            model.freeze_existing(keep=added)
    else:
        model = MultiTaskEncoderModel.from_backbone(
            backbone,
            tasks=data.task_specs,
            pooling=model_args.pooling,
            normalize=model_args.normalize,
            projection_dim=model_args.projection_dim,
            loss_weighting=model_args.loss_weighting,
            max_seq_length=max_seq_length,
            attn_implementation=model_args.attn_implementation,
        )
    if model_args.peft is not None:
        apply_adapter(model, model_args.peft)
        trainable, total = trainable_parameters(model)
        logger.info(
            f"PEFT {model_args.peft}: {trainable:,} of {total:,} parameters train ({trainable / total:.2%})."
        )
    # The Trainer saves this tokenizer over the one save_pretrained wrote (in the model folder and every checkpoint):
    # it must truncate where the model does, since the standard pipelines read its model_max_length.
    tokenizer.model_max_length = max_seq_length
    trainer = MultiTaskTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.validation or None,
        processing_class=tokenizer,  # the trainer's default collator pads with it (and saves it)
        callbacks=list(callbacks or []),
        group_sizes=data.group_sizes,
        distinct_text_keys=data.distinct_text_keys,
        embedding_eval_sets=embedding_sets,
        run_fingerprint=fingerprint,
    )
    if not trainer.args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(RunPrinter())
    embedding_before = {name: embedding_spearman(model, pairs) for name, pairs in embedding_sets.items()}
    return TrainingRun(
        model_args,
        trainer.args,
        job_args,
        tasks,
        data,
        model,
        trainer,
        fingerprint,
        resume,
        embedding_sets,
        embedding_before,
        teachers,
    )


def run_training(
    argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None
) -> dict[str, Any]:
    """Check, train, evaluate and save; returns the metrics per split and task. `callbacks` are extra Trainer
    callbacks for programmatic use (e.g. to inspect every process's model in a distributed run)."""
    try:
        results = train_and_save(prepare_run(argv, callbacks))
    except BaseException:
        end_process_group(wait_for_others=False)  # a failed process must not wait for the others
        raise
    end_process_group(wait_for_others=True)
    return results


def end_process_group(wait_for_others: bool) -> None:
    """Leave a distributed run cleanly, before the interpreter exits. A gloo worker thread frees the Python
    tensors of a collective after the collective has returned; when that falls into the interpreter's
    finalisation the thread cannot take the GIL, exits, and aborts the process ("terminate called without an
    active exception": 3 of 26 two-process runs of the command did). The barrier waits without the GIL, so
    those threads finish first; destroying the group stops them."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    if wait_for_others:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def train_and_save(run: TrainingRun) -> dict[str, Any]:
    """Train a prepared run, save the model, evaluate it, and write its results, card and summary."""
    trainer, data, model, args = run.trainer, run.data, run.model, run.training_args
    output_dir = args.output_dir
    if trainer.is_world_process_zero():
        write_run_file(output_dir, run.fingerprint, finished=False)
    if run.resume_from:
        logger.info(f"Resuming from {run.resume_from}")
    printer = [RunPrinter()] if not args.disable_tqdm else []
    linear_probe = fit_heads_first(run, callbacks=printer)  # LP-FT's first phase, when asked for
    train_result = trainer.train(resume_from_checkpoint=run.resume_from)
    # A diverged run is a failure, not a model: it is not saved (loading would refuse it anyway).
    check_trained_weights(run)
    if has_adapter(model):
        # The adapter alone to adapter/ (main process), merged into the weights the folder holds (everywhere).
        if trainer.is_world_process_zero():
            with saving_into(output_dir, "the PEFT adapter"):
                # The adapter is a difference to the weights it wrapped: init_from's model, else the backbone.
                trained_on = public_backbone_name(run.job_args.init_from) if run.job_args.init_from else None
                merge_and_save_adapter(model, output_dir, trained_on or model.config.base_model_name)
        else:
            merge_adapter(model)
    # Saved before anything else can fail. Saving and evaluating are collective in a distributed run (all
    # processes take part; evaluation gathers every process's share); only the main process writes.
    with saving_into(output_dir, "the trained model"):
        trainer.save_model(output_dir)  # weights, config, code files and tokenizer

    results: dict[str, Any] = {"train": train_result.metrics, "validation": {}, "test": {}}
    if linear_probe is not None:
        results["linear_probe"] = linear_probe
    if run.teachers:
        results["distillation"] = {
            "teachers": {task: teacher_display_name(source) for task, source in run.teachers.items()},
            "teacher_weight": [args.teacher_weight_start, args.teacher_weight_end],
        }
    embedding_after: dict[str, float] = {}  # the validation evaluation scores the embedding sets
    if data.validation:
        validation = trainer.evaluate_tasks()
        embedding_after = {
            name: validation.metrics[f"eval_embedding_{name}_spearman"] for name in run.embedding_sets
        }
        results["validation"] = validation.per_task
    test_predictions: dict[str, tuple[Any, Any]] = {}
    if data.test:
        # The prediction files are written from this pass's logits, not from a second pass over the test sets.
        test = trainer.evaluate_tasks(data.test, metric_key_prefix="test")
        results["test"] = test.per_task
        test_predictions = test.outputs

    if run.embedding_sets:  # the embedding itself, before and after this run (cosine Spearman, -1 to 1)
        results["embedding"] = {}
        for name, pairs in run.embedding_sets.items():
            after = embedding_after.get(name)
            results["embedding"][name] = {
                "before": run.embedding_before[name],
                "after": embedding_spearman(model, pairs) if after is None else after,
                "support": len(pairs.scores),
            }
    if trainer.is_world_process_zero():
        with saving_into(output_dir, "the results, predictions and model card"):
            write_results(run, results, test_predictions)
    return results


def write_results(
    run: TrainingRun, results: dict[str, Any], test_predictions: dict[str, tuple[Any, Any]]
) -> None:
    """The main process's files beside the saved model (results, test predictions, plots, card, the finished
    run file), the checkpoints' removal and the printed summary."""
    trainer, data, model, args = run.trainer, run.data, run.model, run.training_args
    output_dir = args.output_dir
    for task, (logits, labels) in test_predictions.items():
        path = os.path.join(output_dir, f"predictions_{task}.csv")
        write_predictions_csv(path, model, task, data.test[task], logits, labels)
    results["label_counts"] = data.label_counts
    results["held_out_duplicates"] = data.held_out_duplicates
    results["warnings"] = run_warnings(model, results)
    with open(os.path.join(output_dir, "eval_results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=float)
    sentences = run.job_args.example_sentences
    examples = list(zip(sentences, model.predict(sentences))) if sentences else []
    plots = write_plots(output_dir, model.config, results, trainer.state.log_history)
    language = run.job_args.language or (
        None if run.job_args.init_from else backbone_languages(resolve_backbone(run.model_args.backbone))
    )
    card = {"examples": examples, "language": language, "plots": plots, "adapter": run.model_args.peft}
    write_model_card(output_dir, model.config, results, args, run.model_args, run.tasks, **card)
    write_run_file(output_dir, run.fingerprint, finished=True)
    removed = 0 if run.job_args.keep_checkpoints else remove_checkpoints(output_dir)
    _print_summary(results)
    if examples:
        _print_examples(model, examples)
    _print_where(output_dir, removed, run.job_args.example_sentences)


class TrainingDiverged(MultiTaskEncoderError):
    """Training ended with NaN or infinite weights: the run failed and nothing was saved."""


def check_trained_weights(run: TrainingRun) -> None:
    """Refuse to save (or report success for) a model whose weights hold NaN or inf, naming the first such
    tensor and the options that set how large the steps were."""
    broken = run.model.non_finite_weights()
    if not broken:
        return
    args = run.training_args
    options = {
        "learning_rate": args.learning_rate,
        "encoder_learning_rate": args.encoder_learning_rate,
        "head_learning_rate": args.head_learning_rate,
        "max_grad_norm": args.max_grad_norm,
        "fp16": args.fp16,
        "bf16": args.bf16,
        "loss_weighting": run.model.config.loss_weighting,
        "embedding_distillation_weight": args.embedding_distillation_weight,
    }
    if args.linear_probe_epochs:
        options["linear_probe_learning_rate"] = args.linear_probe_learning_rate
    loss_weights = {name: spec.loss_weight for name, spec in run.model.config.tasks.items()}
    raise TrainingDiverged(
        f"training diverged: the weight tensor {broken[0]!r} holds NaN or infinite values after training"
        + (f" ({len(broken) - 1} more tensor(s) too)" if len(broken) > 1 else "")
        + "; the model was not saved. Options that can cause it: "
        + ", ".join(f"{name}={value}" for name, value in options.items() if value is not None)
        + f", the tasks' loss_weight {loss_weights}. Lower the learning rate (or the loss weights), keep "
        "max_grad_norm set, or train without fp16; --overwrite_output_dir starts again in "
        f"{args.output_dir} (its checkpoints may hold the diverged weights)."
    )


def run_warnings(model: MultiTaskEncoderModel, results: dict[str, Any]) -> list[str]:
    """Findings a user must see, in the summary and the card: heads whose predictions collapsed, held-out rows
    that are also train rows."""
    warnings = []
    for split in ("validation", "test"):
        for task, metrics in (results.get(split) or {}).items():
            spec = model.config.tasks[task]
            note = task_type(spec).collapse_note(spec, metrics)
            if note:
                warnings.append(f"`{task}` ({split}): {note}")
    duplicates = results.get("held_out_duplicates") or {}
    for split, by_task in (duplicates.get("found") or {}).items():
        for task, count in by_task.items():
            if count and not duplicates.get("dropped"):
                warnings.append(
                    f"`{task}` ({split}): {count} row(s) have the same text as a train row, which inflates the "
                    "score (drop_held_out_duplicates: true removes them)."
                )
    return warnings


def _print_summary(results: dict[str, Any]) -> None:
    for split in ("validation", "test"):
        for task, metrics in results.get(split, {}).items():
            line = "  ".join(f"{k} {v:.4f}" for k, v in scalar_metrics(metrics).items() if k != "support")
            print(f"{split} {task}: {line}", flush=True)
    for warning in results.get("warnings") or []:
        print(f"WARNING {warning}", flush=True)
    for task, counts in (results.get("label_counts") or {}).items():
        unseen = [label for label, count in (counts.get("train") or {}).items() if count == 0]
        if unseen:  # (the card's Limitations say it too)
            print(
                f"WARNING `{task}`: no training rows for {', '.join(unseen)}: the head cannot learn them.",
                flush=True,
            )


def _print_where(output_dir: str, removed_checkpoints: int, examples: list[str]) -> None:
    size = sum(
        os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(output_dir) for name in names
    )
    removed = (
        f"; {removed_checkpoints} checkpoint(s) removed (keep_checkpoints: true keeps them)"
        if removed_checkpoints
        else ""
    )
    print(f"\nModel saved to {output_dir} ({size / 2**20:.0f} MB{removed}). Try it:", flush=True)
    sentence = (examples or ["The striker scored twice as United won the cup final."])[0]
    load = f"AutoModel.from_pretrained({output_dir!r}).predict({sentence!r})"
    print(f'  python -c "import multitask_encoder; from transformers import AutoModel; print({load})"')
    print(f"  multitask-encoder-predict {output_dir} texts.txt -o predictions.csv", flush=True)


def _print_examples(model: MultiTaskEncoderModel, examples: list[tuple[str, dict[str, Any]]]) -> None:
    print("\nPredictions on example sentences:")
    tasks = model.config.tasks
    for sentence, prediction in examples:
        parts = [f"{task}={task_type(tasks[task]).summarize(result)}" for task, result in prediction.items()]
        print(f"  {sentence!r}\n    -> " + "  ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> None:
    """The command: exit status 0 after a saved run. A refusal before training (bad config, options, data or
    output folder; a missing extra) and a failed run (diverged weights, a full disk, any error while training)
    are one line on stderr and exit status 1, without a traceback (MULTITASK_ENCODER_DEBUG=1 shows it;
    `--debug` is a TrainingArguments option here); usage errors of the flags exit 2 (multitask_encoder.cli)."""
    configure_logging()
    debug = debug_requested(False)
    prefix = f"{PROG}: error:"
    prepared: list[TrainingRun] = []
    status = run_command(
        lambda: prepared.append(prepare_run(argv)),
        prefix=prefix,
        refusals=REFUSALS,
        debug=debug,
        debug_flag=None,
    )
    if status == 0:
        status = run_command(
            lambda: train_and_save(prepared[0]),
            prefix=prefix,
            refusals=(MultiTaskEncoderError,),
            debug=debug,
            interrupted="interrupted; the same command resumes from the last checkpoint",
            debug_flag=None,
        )
    ended = run_command(  # a process that failed must not wait for the others
        lambda: end_process_group(wait_for_others=status == 0),
        prefix=prefix,
        refusals=(),
        debug=debug,
        debug_flag=None,
    )
    status = status or ended
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
