"""Prediction: texts in, the dicts `predict` returns out (and `encode`'s embeddings), around the model's forward.

    texts ─► check_texts ─► text_batches (tokenised in windows, length-sorted, batched as the serving plan says)
          ─► model(...) ─► postprocess (each task type's `decode`) ─► [{task: prediction}]

`MultiTaskEncoderModel.predict`, `encode`, `preprocess`, `postprocess`, `tasks_for`, `check_texts`,
`label_text_embeddings` and `task_spec` are these functions (the model passed as `model`); the pipeline and the
batch command call them through the model. Copied next to the weights with the other model files; imports only
torch, transformers and its siblings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .inference_multitask_encoder import MODEL_INPUT_NAMES, TextBatch, iter_sorted_batches
from .tasks_multitask_encoder import TaskSpec, parse_task_spec

logger = logging.getLogger(__name__)


def label_text_embeddings(
    model, task_names: list[str], labels: Mapping[str, Sequence[str] | Mapping[str, str]] | None = None
) -> dict[str, torch.Tensor]:
    """`MultiTaskEncoderModel.label_text_embeddings` (documented there)."""
    labels = dict(labels or {})
    unused = [name for name in labels if name not in task_names]
    if unused:
        raise ValueError(
            f"labels were given for task(s) {unused}, which this call does not run {task_names}."
        )
    specs = {name: task_spec(model, name, labels.get(name)) for name in task_names}
    return {
        name: model.embed_label_texts(spec.task_type.label_texts(spec))
        for name, spec in specs.items()
        if spec.task_type.embeds_label_texts
    }


def task_spec(model, name: str, labels: Sequence[str] | Mapping[str, str] | None = None) -> TaskSpec:
    """`MultiTaskEncoderModel.task_spec` (documented there)."""
    spec = model.config.tasks[name]
    if labels is None:
        return spec
    if not spec.task_type.embeds_label_texts:
        raise ValueError(
            f"Task {name!r} is a {spec.type} task: its labels are its trained head's outputs. Only "
            "label_text_classification tasks take labels at prediction time."
        )
    if isinstance(labels, str) or not isinstance(labels, (Mapping, Sequence)):
        raise ValueError(
            f"labels for task {name!r} must be a list of label names or a mapping name -> text, got {labels!r}."
        )
    descriptions = dict(labels) if isinstance(labels, Mapping) else {}
    entry = {**spec.to_dict(), "labels": list(labels), "label_descriptions": descriptions}
    return parse_task_spec(name, entry)


def preprocess(
    model, texts: list[str] | str, tasks: list[str] | str | None = None, batch_size: int = 64
) -> Iterator[TextBatch]:
    """`MultiTaskEncoderModel.preprocess` (documented there)."""
    texts = check_texts(model, texts)
    with_offsets = any(model.config.tasks[name].is_token_level for name in tasks_for(model, "text", tasks))
    return text_batches(model, texts, batch_size, with_offsets)


def postprocess(
    model,
    outputs: Mapping[str, Any],
    texts: list[str],
    encodings: list[Any],
    tasks: list[str] | str | None = None,
    top_k: int | None = None,
    labels: Mapping[str, Sequence[str] | Mapping[str, str]] | None = None,
) -> list[dict[str, dict[str, Any]]]:
    """`MultiTaskEncoderModel.postprocess` (documented there)."""
    task_names = model.resolve_tasks(tasks)
    check_top_k(top_k)
    labels = labels or {}
    predictions: list[dict[str, Any]] = [{} for _ in texts]
    for name in task_names:
        spec = task_spec(model, name, labels.get(name))
        logits = outputs[f"{name}_logits"].float().cpu()
        decoded = spec.task_type.decode(spec, logits, texts, encodings, top_k)
        for prediction, task_prediction in zip(predictions, decoded):
            prediction[name] = task_prediction
    return predictions


@torch.inference_mode()
def encode(
    model,
    texts: list[str] | str,
    batch_size: int = 64,
    normalize: bool | None = None,
    return_tensors: Literal["np", "pt"] = "np",
):
    """`MultiTaskEncoderModel.encode` (documented there)."""
    single = isinstance(texts, str)
    texts = check_texts(model, texts)
    if return_tensors not in ("np", "pt"):
        raise ValueError(f"return_tensors must be 'np' or 'pt', got {return_tensors!r}.")
    embeddings = torch.zeros(len(texts), model.config.embedding_size)
    was_training = model.training
    model.eval()
    try:
        for indices, pooled in pooled_texts(model, texts, batch_size):
            embeddings[indices] = model.project(pooled).float().cpu()
    finally:
        model.train(was_training)
    if normalize is not None and normalize != model.config.normalize:
        if normalize:
            embeddings = F.normalize(embeddings, p=2, dim=-1)
        else:
            logger.warning("normalize=False has no effect: this model normalises inside its forward pass.")
    if single:
        embeddings = embeddings[0]
    return embeddings.numpy() if return_tensors == "np" else embeddings


@torch.inference_mode()
def predict(
    model,
    texts: list[str] | str | list[tuple[str, str]] | dict[str, str],
    tasks: list[str] | str | None = None,
    top_k: int | None = None,
    batch_size: int = 64,
    labels: Mapping[str, Sequence[str] | Mapping[str, str]] | None = None,
) -> list[dict[str, dict[str, Any]]]:
    """`MultiTaskEncoderModel.predict` (documented there)."""
    single = isinstance(texts, str) or is_single_pair(texts)
    pairs = as_pairs(texts)
    try:
        task_names = tasks_for(model, "pair" if pairs is not None else "text", tasks)
    except ValueError as error:
        if isinstance(texts, tuple) and pairs is not None:
            raise ValueError(
                f"A bare tuple of two strings is one (text, text_pair) pair, but {error} For two single texts, "
                "pass a list: [text_a, text_b]."
            ) from error
        raise
    check_top_k(top_k)
    if pairs is not None:
        results = predict_pairs(model, pairs, task_names, top_k, batch_size)
        return results[0] if single else results
    texts = check_texts(model, texts)
    with_offsets = any(model.config.tasks[name].is_token_level for name in task_names)
    results: list[dict[str, Any]] = [{} for _ in texts]
    was_training = model.training
    model.eval()
    try:
        label_embeddings = label_text_embeddings(model, task_names, labels)  # once per call, not per batch
        for batch in text_batches(model, texts, batch_size, with_offsets):
            outputs = model(**batch.inputs, tasks=task_names, label_embeddings=label_embeddings)
            predictions = postprocess(
                model, outputs, batch.texts, batch.encodings, task_names, top_k, labels=labels
            )
            for index, prediction in zip(batch.indices, predictions):
                results[index] = prediction
    finally:
        model.train(was_training)
    return results[0] if single else results


def similarity(model, first: Any, second: Any) -> torch.Tensor:
    """`MultiTaskEncoderModel.similarity` (documented there)."""
    a, b = similarity_operand(model, first, "embeddings_a"), similarity_operand(model, second, "embeddings_b")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"embeddings_a has {a.shape[-1]} dimensions and embeddings_b {b.shape[-1]}: they differ."
        )
    return F.normalize(a, p=2, dim=-1) @ F.normalize(b, p=2, dim=-1).T


def similarity_operand(model, inputs: Any, argument: str) -> torch.Tensor:
    """One side of `similarity` as embeddings `[n, dim]`: embeddings as given (a tensor, a numeric array, a
    list of vectors or numbers), else texts, checked by `check_texts` (as `predict` checks them) and encoded."""
    embeddings = None
    if isinstance(inputs, torch.Tensor):
        embeddings = inputs
    elif getattr(getattr(inputs, "dtype", None), "kind", None) in ("f", "i", "u"):  # a numeric array
        embeddings = torch.as_tensor(inputs)
    elif isinstance(inputs, (list, tuple)) and inputs and not isinstance(inputs[0], str):
        try:  # vectors (tensors, arrays, lists) or one vector as numbers
            rows = [torch.as_tensor(row) for row in inputs]
            embeddings = torch.stack(rows) if rows[0].dim() else torch.stack(rows).reshape(1, -1)
        except (TypeError, ValueError, RuntimeError):
            embeddings = None  # not numbers: check_texts names the first element that is not a text
    if embeddings is None:
        return encode(model, inputs, return_tensors="pt").reshape(-1, model.config.embedding_size)
    if embeddings.dim() not in (1, 2):
        raise ValueError(
            f"{argument} has {embeddings.dim()} dimensions: give embeddings [n, dim] (or one [dim]) or texts."
        )
    return embeddings.float().reshape(-1, embeddings.shape[-1])


def tasks_for(model, kind: str, tasks: list[str] | str | None) -> list[str]:
    """`MultiTaskEncoderModel.tasks_for` (documented there)."""

    def reads(name: str) -> bool:
        return model.config.tasks[name].input_kind.reads_pairs == (kind == "pair")

    if tasks is None:
        names = [name for name in model.config.tasks if reads(name)]
        if not names:
            other = "pairs of texts" if kind == "text" else "single texts"
            raise ValueError(
                f"This model has no task that reads {kind}s: its tasks {list(model.config.tasks)} read {other}."
            )
        return names
    names = model.resolve_tasks(tasks)
    wrong = [name for name in names if not reads(name)]
    if wrong:
        if kind == "text":
            raise ValueError(
                f"Task(s) {wrong} read pairs of texts: give (text, text_pair) tuples or "
                '{"text": ..., "text_pair": ...} dicts.'
            )
        raise ValueError(f"Task(s) {wrong} read single texts, not pairs: give them strings.")
    return names


def predict_pairs(
    model, pairs: list[tuple[str, str]], task_names: list[str], top_k: int | None, batch_size: int
) -> list[dict[str, Any]]:
    """`predict` for pairs: tasks that encode the pair jointly read one `[CLS] a [SEP] b` input; the others
    read the two texts' embeddings, so every distinct text of a window of pairs is encoded once, through the
    batcher `encode` uses, and the heads read the pooled embeddings (`encoder_outputs`)."""
    firsts = check_texts(model, [a for a, _ in pairs])
    seconds = check_texts(model, [b for _, b in pairs])
    joint = [name for name in task_names if model.config.tasks[name].input_kind.joint]
    apart = [name for name in task_names if name not in joint]
    results: list[dict[str, Any]] = [{} for _ in pairs]
    was_training = model.training
    model.eval()
    try:
        window = max(1, model.serving_plan.window // 2)  # pairs: two texts each
        for start in range(0, len(pairs) if apart else 0, window):
            end = min(start + window, len(pairs))
            texts = list(
                dict.fromkeys(firsts[start:end] + seconds[start:end])
            )  # a text shared by pairs: once
            position = {text: i for i, text in enumerate(texts)}
            stacked = None  # [distinct texts, hidden]
            for indices, pooled in pooled_texts(model, texts, batch_size):
                if stacked is None:
                    stacked = pooled.new_empty(len(texts), pooled.shape[-1])
                stacked[indices] = pooled
            for first in range(start, end, batch_size):
                rows = range(first, min(first + batch_size, end))
                encoder_outputs = {
                    "pooled_embeddings": stacked[[position[firsts[i]] for i in rows]],
                    "pair_pooled_embeddings": stacked[[position[seconds[i]] for i in rows]],
                    "pair_rows": torch.arange(len(rows), device=stacked.device),
                }
                outputs = model(encoder_outputs=encoder_outputs, tasks=apart)
                batch_texts = [firsts[i] for i in rows]
                decoded = postprocess(model, outputs, batch_texts, [None] * len(rows), apart, top_k)
                for index, prediction in zip(rows, decoded):
                    results[index].update(prediction)
        if joint:
            # The same batcher as single texts (windows, length-sorted, the serving plan's batches), each pair
            # tokenised as one `[CLS] a [SEP] b` input.
            batches = iter_sorted_batches(
                list(zip(firsts, seconds)),
                lambda chunk, offsets: tokenize_pairs(model, chunk),
                model.tokenizer.pad,
                model.device,
                batch_size,
                False,
                model.serving_plan,
            )
            for batch in batches:
                outputs = model(**batch.inputs, tasks=joint)
                texts = [first for first, _ in batch.texts]
                decoded = postprocess(model, outputs, texts, [None] * len(texts), joint, top_k)
                for index, prediction in zip(batch.indices, decoded):
                    results[index].update(prediction)
    finally:
        model.train(was_training)
    return [{name: result[name] for name in task_names} for result in results]


def tokenize_pairs(model, pairs: list[tuple[str, str]]) -> tuple[list[dict[str, list[int]]], list]:
    """Checked pairs -> per pair, the unpadded joint model inputs (truncated to `max_seq_length`) and its
    tokenizer `Encoding`."""
    encoded = model.tokenizer(
        [first for first, _ in pairs],
        [second for _, second in pairs],
        truncation=True,
        max_length=model.max_seq_length,
        padding=False,
    )
    keys = [key for key in MODEL_INPUT_NAMES if key in encoded]
    return [{key: encoded[key][i] for key in keys} for i in range(len(pairs))], encoded.encodings


def check_texts(model, texts: Any) -> list[str]:
    """`MultiTaskEncoderModel.check_texts` (documented there)."""
    from collections.abc import Set as AbstractSet

    if isinstance(texts, str):
        texts = [texts]
    else:
        if isinstance(texts, Mapping):
            refusal = "pass list(texts.values()) or list(texts.keys()), whichever holds the texts"
        elif isinstance(texts, AbstractSet):
            refusal = "a set has no order, so the results could not be matched to the texts: pass a list"
        elif isinstance(texts, (bytes, bytearray, memoryview)):
            refusal = "decode it to str first"
        elif getattr(texts, "ndim", 1) != 1:
            refusal = f"it has {texts.ndim} dimension(s): pass a 1-D array or a list of strings"
        elif not isinstance(texts, Iterable):
            refusal = "not a collection of texts"
        else:
            refusal = None
        if refusal is not None:
            raise TypeError(
                f"texts must be a string or a list of strings, got {type(texts).__name__} ({refusal})."
            )
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"Text #{index} is {type(text).__name__}, not str.")
        if not text.strip():
            raise ValueError(f"Text #{index} is empty or whitespace only; there is nothing to encode.")
    if not texts:
        return texts
    # Only a text without a letter or digit (once its literal special tokens are removed) can tokenise to
    # nothing but special tokens: the tokenizer decides for those few, so the texts are not all tokenised
    # twice (that would cost a few percent of `predict`).
    tokenizer = model.tokenizer
    unknown = tokenizer.unk_token
    special_strings = [token for token in tokenizer.all_special_tokens if token != unknown]
    special_ids = set(tokenizer.convert_tokens_to_ids(special_strings))
    for index, text in enumerate(texts):
        content = text
        for token in special_strings:
            content = content.replace(token, "")
        if any(character.isalnum() for character in content):
            continue
        if all(
            token_id in special_ids for token_id in tokenizer(text, add_special_tokens=False)["input_ids"]
        ):
            tokens = " ".join(tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"]))
            raise ValueError(
                f"Text #{index} ({text[:40]!r}) has nothing the tokenizer keeps: it tokenises to special "
                f"tokens only ({tokens}; zero-width and control characters are dropped), so there is "
                "nothing to encode."
            )
    return texts


def tokenize_texts(model, texts: list[str], with_offsets: bool) -> tuple[list[dict[str, list[int]]], list]:
    """Checked texts -> per text, the unpadded model inputs (`input_ids`, `attention_mask`[,
    `token_type_ids`], lists of `seq` ints, truncated to `max_seq_length`, warning once when a text is
    cut) and the tokenizer's `Encoding` (word ids; character offsets with `with_offsets`)."""
    max_length = model.max_seq_length
    encoded = model.tokenizer(
        texts, truncation=True, max_length=max_length, return_offsets_mapping=with_offsets, padding=False
    )
    truncated = sum(1 for enc in encoded.encodings if enc.overflowing)
    if truncated and not model._warned_truncation:
        logger.warning(
            f"{truncated} text(s) longer than {max_length} tokens were truncated to fit the model."
        )
        model._warned_truncation = True
    keys = [k for k in MODEL_INPUT_NAMES if k in encoded]
    features = [{k: encoded[k][i] for k in keys} for i in range(len(texts))]
    return features, encoded.encodings


def save_tokenizer(tokenizer: Any, directory: str | os.PathLike[str], max_length: int | None) -> None:
    """Save `tokenizer` to `directory` with `model_max_length` set to `max_length` (when given), so that what
    loads it from there (the standard pipelines, an ONNX export's consumer) truncates where `predict` does;
    the tokenizer object itself is left as it was."""
    previous = tokenizer.model_max_length
    if max_length is not None:
        tokenizer.model_max_length = max_length
    try:
        tokenizer.save_pretrained(directory)
    finally:
        tokenizer.model_max_length = previous


def pooled_texts(model, texts: list[str], batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Checked texts -> batch by batch, (their positions in `texts`, their pooled token states `[batch,
    hidden]`, before the projection), through the batcher and the serving mode's encoder."""
    for batch in text_batches(model, texts, batch_size, with_offsets=False):
        token_states = model.encoder_states(batch.inputs)
        yield batch.indices, model.pooling(token_states, batch.inputs["attention_mask"])


def text_batches(model, texts: list[str], batch_size: int, with_offsets: bool) -> Iterator[TextBatch]:
    """Checked texts -> length-sorted padded batches, as the serving mode batches them."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    plan = model.serving_plan
    return iter_sorted_batches(
        texts,
        lambda chunk, offsets: tokenize_texts(model, chunk, offsets),
        model.tokenizer.pad,
        model.device,
        batch_size,
        with_offsets,
        plan,
    )


def is_pair(item: Any) -> bool:
    """A (text, text_pair) tuple or a {"text", "text_pair"} mapping."""
    if isinstance(item, Mapping):
        return set(item) >= {"text", "text_pair"}
    return isinstance(item, tuple) and len(item) == 2 and all(isinstance(text, str) for text in item)


def is_single_pair(inputs: Any) -> bool:
    """One pair on its own: a {"text", "text_pair"} mapping, or a bare tuple of exactly two strings (read as
    one pair, as each tuple of a list of pairs is, never as two texts: `predict` says so when the tasks read
    single texts)."""
    return is_pair(inputs) and isinstance(inputs, (Mapping, tuple))


def as_pairs(inputs: Any) -> list[tuple[Any, Any]] | None:
    """The (text, text_pair) pairs of `inputs` when they are pairs (a list or tuple of tuples or dicts, one
    dict, or one bare tuple of two strings), None when they are texts; a list mixing both is refused."""
    if is_single_pair(inputs):
        return [(inputs["text"], inputs["text_pair"])] if isinstance(inputs, Mapping) else [tuple(inputs)]
    if isinstance(inputs, Mapping):
        return None  # refused as a container of texts by check_texts
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, (list, tuple)) or not inputs:
        return None
    if isinstance(inputs, tuple) and all(isinstance(item, str) for item in inputs):
        return None  # a tuple of one, three or more texts
    kinds = [is_pair(item) for item in inputs]
    if not any(kinds):
        return None
    if not all(kinds):
        index = kinds.index(False)
        raise TypeError(
            f"Input #{index} is {type(inputs[index]).__name__}, not a (text, text_pair) pair like input "
            f"#{kinds.index(True)}: give all texts or all pairs."
        )
    return [(item["text"], item["text_pair"]) if isinstance(item, Mapping) else item for item in inputs]


def check_top_k(top_k: Any) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}.")
