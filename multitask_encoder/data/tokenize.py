"""Labelled rows -> model inputs: texts (or word lists) tokenised with `Dataset.map`, cached in the loader's
cache folder under a fingerprint of the rows, the tokenizer and max_seq_length (a second run with the same
data loads the cache files)."""

from __future__ import annotations

import os

from datasets import Dataset, Features, Sequence, Value
from datasets.fingerprint import Hasher

from ..modeling_multitask_encoder import MODEL_INPUT_NAMES
from ..tasks_multitask_encoder import TaskSpec
from .labels import label_feature
from .spec import DataError

CACHE_VERSION = 2  # bump when the tokenised layout changes, so stale cache files are never reused


def tokenize_batch(
    batch: dict[str, list], tokenizer, max_seq_length: int, input_names: list[str]
) -> dict[str, list]:
    """Texts (or word lists) -> unpadded input_ids [seq] etc. and word_ids [seq] (-1 for special tokens;
    [] for sentence rows)."""
    if "tokens" in batch:
        encoded = tokenizer(
            batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_seq_length
        )
        word_ids = [
            [-1 if w is None else w for w in encoded.word_ids(i)] for i in range(len(batch["tokens"]))
        ]
    else:
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_seq_length)
        word_ids = [[] for _ in batch["text"]]
    return {**{name: encoded[name] for name in input_names}, "word_ids": word_ids}


class DatasetTokenizer:
    """Tokenises labelled rows (see labels.py) into the rows the collator takes."""

    def __init__(self, tokenizer, max_seq_length: int, specs: dict[str, TaskSpec], cache_dir: str) -> None:
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.cache_dir = cache_dir
        self.input_names = [name for name in MODEL_INPUT_NAMES if name in tokenizer("a")]
        self.tokenizer_hash = Hasher.hash(tokenizer)
        self.label_features = {f"labels_{task}": label_feature(spec) for task, spec in specs.items()}

    def features(self, with_text: bool) -> Features:
        features = {"input_ids": Sequence(Value("int32")), "attention_mask": Sequence(Value("int8"))}
        if "token_type_ids" in self.input_names:
            features["token_type_ids"] = Sequence(Value("int8"))
        features.update(self.label_features)
        features.update({"word_ids": Sequence(Value("int32")), "group": Value("int32")})
        if with_text:
            features["text"] = Value("string")
        return Features(features)

    def __call__(self, rows: Dataset, keep_text: bool, description: str) -> Dataset:
        if "tokens" in rows.column_names and not getattr(self.tokenizer, "is_fast", False):
            raise DataError("token tasks need a fast tokenizer (for word_ids); this one is not.")
        fingerprint = Hasher.hash(
            [CACHE_VERSION, rows._fingerprint, self.tokenizer_hash, self.max_seq_length, keep_text]
        )
        os.makedirs(self.cache_dir, exist_ok=True)
        return rows.map(
            tokenize_batch,
            batched=True,
            fn_kwargs={
                "tokenizer": self.tokenizer,
                "max_seq_length": self.max_seq_length,
                "input_names": self.input_names,
            },
            remove_columns=[
                c for c in ("text", "tokens") if c in rows.column_names and not (c == "text" and keep_text)
            ],
            features=self.features(with_text=keep_text),
            cache_file_name=os.path.join(self.cache_dir, f"tokenized-{fingerprint}.arrow"),
            load_from_cache_file=True,
            new_fingerprint=fingerprint,
            desc=f"Tokenising {description}",
        )


__all__ = ["DatasetTokenizer"]
