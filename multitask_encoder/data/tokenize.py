"""Labelled rows -> model inputs: texts (or word lists) tokenised with `Dataset.map`, cached in the loader's
cache folder under a fingerprint of the rows, the tokenizer and max_seq_length (a second run with the same
data loads the cache files)."""

from __future__ import annotations

import os

from datasets import Dataset, Features, Sequence, Value
from datasets.fingerprint import Hasher

from ..model.inputs_multitask_encoder import INPUT_KINDS, SECOND_TEXTS
from ..model.modeling_multitask_encoder import MODEL_INPUT_NAMES
from ..model.tasks_multitask_encoder import TaskSpec
from ..task_types import task_type
from .labels import label_feature
from .spec import DataError

CACHE_VERSION = 3  # bump when the tokenised layout changes, so stale cache files are never reused


def tokenize_batch(
    batch: dict[str, list],
    tokenizer,
    max_seq_length: int,
    input_names: list[str],
    encoding: str,
    second_texts: tuple[str, ...],
) -> dict[str, list]:
    """Texts (or word lists, or pairs) -> unpadded input_ids [seq] etc. and word_ids [seq] (-1 for special
    tokens; [] for other rows). `encoding` names the input kind (TaskType.input_encoding), which tokenises the
    main input; the texts the kind encodes apart (a pair's second text, a contrastive negative) go into
    `pair_*` (`negative_*`) columns. Every prefix of `second_texts` gets its columns in every row ([] where a
    row has no such text), so all sets of a run share one layout."""
    size = len(batch["text"])
    kind = INPUT_KINDS[encoding]
    encoded = kind.tokenize(tokenizer, batch, max_seq_length)
    if kind.word_level:
        word_ids = [[-1 if w is None else w for w in encoded.word_ids(i)] for i in range(size)]
    else:
        word_ids = [[] for _ in range(size)]
    out = {**{name: encoded[name] for name in input_names}, "word_ids": word_ids}
    for prefix in second_texts:
        column = SECOND_TEXTS[prefix]
        texts = batch.get(column) if prefix in kind.apart else None
        present = [i for i, text in enumerate(texts or []) if text]
        values = {name: [[] for _ in range(size)] for name in input_names}
        if present:
            second = tokenizer([texts[i] for i in present], truncation=True, max_length=max_seq_length)
            for name in input_names:
                for position, i in enumerate(present):
                    values[name][i] = second[name][position]
        out.update({f"{prefix}_{name}": rows for name, rows in values.items()})
    return out


class DatasetTokenizer:
    """Tokenises labelled rows (see labels.py) into the rows the collator takes."""

    def __init__(
        self,
        tokenizer,
        max_seq_length: int,
        specs: dict[str, TaskSpec],
        cache_dir: str,
        negatives: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.cache_dir = cache_dir
        self.input_names = [name for name in MODEL_INPUT_NAMES if name in tokenizer("a")]
        self.tokenizer_hash = Hasher.hash(tokenizer)
        self.label_features = {f"labels_{task}": label_feature(spec) for task, spec in specs.items()}
        # The second-text columns the run's tasks need (separately encoded pairs; contrastive negatives when
        # a task names them).
        kinds = [INPUT_KINDS[task_type(spec).input_encoding(spec.options)] for spec in specs.values()]
        apart = {prefix for kind in kinds for prefix in kind.apart}
        self.second_texts = tuple(
            prefix for prefix in SECOND_TEXTS if prefix in apart and (negatives or prefix != "negative")
        )

    def features(self, with_text: bool, with_pair_text: bool = False) -> Features:
        features = {}
        for prefix in ("", *(f"{p}_" for p in self.second_texts)):
            features[f"{prefix}input_ids"] = Sequence(Value("int32"))
            features[f"{prefix}attention_mask"] = Sequence(Value("int8"))
            if "token_type_ids" in self.input_names:
                features[f"{prefix}token_type_ids"] = Sequence(Value("int8"))
        features.update(self.label_features)
        features.update({"word_ids": Sequence(Value("int32")), "group": Value("int32")})
        if with_text:
            features["text"] = Value("string")
            if with_pair_text:
                features["text_pair"] = Value("string")
        return Features(features)

    def __call__(self, rows: Dataset, keep_text: bool, description: str, encoding: str) -> Dataset:
        if "tokens" in rows.column_names and not getattr(self.tokenizer, "is_fast", False):
            raise DataError("token tasks need a fast tokenizer (for word_ids); this one is not.")
        fingerprint = Hasher.hash(
            [
                CACHE_VERSION,
                rows._fingerprint,
                self.tokenizer_hash,
                self.max_seq_length,
                keep_text,
                encoding,
                self.second_texts,
            ]
        )
        os.makedirs(self.cache_dir, exist_ok=True)
        kept = ("text", "text_pair") if keep_text else ()
        return rows.map(
            tokenize_batch,
            batched=True,
            fn_kwargs={
                "tokenizer": self.tokenizer,
                "max_seq_length": self.max_seq_length,
                "input_names": self.input_names,
                "encoding": encoding,
                "second_texts": self.second_texts,
            },
            remove_columns=[
                c
                for c in ("text", "tokens", "text_pair", "text_negative")
                if c in rows.column_names and c not in kept
            ],
            features=self.features(with_text=keep_text, with_pair_text="text_pair" in rows.column_names),
            cache_file_name=os.path.join(self.cache_dir, f"tokenized-{fingerprint}.arrow"),
            load_from_cache_file=True,
            new_fingerprint=fingerprint,
            desc=f"Tokenising {description}",
        )


__all__ = ["DatasetTokenizer"]
