"""Frozen-encoder fast path: run the encoder once over the data, keep its output, and train only the heads
on it. The model is the same object (its forward takes the precomputed `encoder_outputs` in place of
`input_ids`, as HF encoder-decoder models do), so it is saved, evaluated and reloaded exactly like a model
trained the slow way.

Sentence tasks keep one pooled vector per row `[hidden]`; token tasks keep the row's token states
`[seq, hidden]` (memory grows with the data: a CoNLL-sized set at 384 dims is about 0.5 GB in float16).
Heads that mix layers (head `layers`) get what they read from the same pass: sentence heads one pooled
vector per layer they mix, token heads the token states of those layers only (float16).

The encoding runs through the model's serving mode (`optimize_for_inference`), batched as that mode batches
(`plan_batches`: longest rows first, a token budget in the non-exact modes); `precompute_mode` picks the
fastest mode within the serving guard (bench/serve_speed.py) that pays for itself on this device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .model.inference_multitask_encoder import native_bf16_missing, plan_batches, split_layers
from .model.inputs_multitask_encoder import SECOND_TEXTS
from .model.modeling_multitask_encoder import MODEL_INPUT_NAMES, MultiTaskEncoderModel
from .model.tasks_multitask_encoder import IGNORE_INDEX

# Rows from which a runtime mode's one-off export (about 10 s for a 6-layer MiniLM on 2 cores) is repaid by
# its speed over eager fp32 where bf16 is not native (bench/serve_speed.py: OpenVINO fp32 about 1.7x eager).
RUNTIME_MIN_ROWS = 20_000


def precompute_mode(model: MultiTaskEncoderModel, rows: int) -> str:
    """The serving mode the frozen-encoder precompute of `rows` rows should encode through: the fastest one
    within the serving guard (cosine >= 0.99 to exact for every AG News / SST test text, accuracy within 0.3
    points; bench/serve_speed.py) whose set-up pays for itself here.

    - bf16 native (AMX / AVX512-BF16 CPUs, bf16 GPUs): "bf16" (torch autocast, no set-up; about as fast as
      OpenVINO bf16, which would first spend ~10 s exporting);
    - else, on CPU, with OpenVINO installed and at least `RUNTIME_MIN_ROWS` rows: "openvino" (exact fp32);
    - else "token_budget" (the exact math, eager fp32, batches of a token budget).
    """
    device = model.device
    if next(model.parameters()).dtype == torch.float32 and native_bf16_missing(device) is None:
        return "bf16"
    if device.type == "cpu" and rows >= RUNTIME_MIN_ROWS:
        try:
            import onnxscript  # noqa: F401
            import openvino  # noqa: F401
        except ImportError:
            return "token_budget"
        return "openvino"
    return "token_budget"


class PrecomputedFeatures(Dataset):
    """Rows of encoder outputs plus their (already word-piece aligned) labels."""

    def __init__(self, rows: list[dict[str, torch.Tensor]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.rows[index]


@torch.inference_mode()
def precompute_features(
    model: MultiTaskEncoderModel, dataset, collator, batch_size: int = 64, description: str = "Encoding"
) -> PrecomputedFeatures:
    """Encode every row of `dataset` (tokenised rows, as the collator takes them) once, through the model's
    serving mode (`optimize_for_inference`; see `precompute_mode`); rows keep their order.

    Returns one dict per row: `pooled_embeddings` `[hidden]`, for rows with token labels also
    `token_states` `[seq, hidden]` (float16; when a token head reads the last layer) and `attention_mask`
    `[seq]`, for rows with a second text (or a contrastive negative) `pair_pooled_embeddings`
    (`negative_pooled_embeddings`) `[hidden]`, and every `labels_<task>`. With layer-mixing heads also
    `pooled_hidden_states` `[layers, hidden]` (the layers `model.mixed_layers(token_level=False)`, each
    pooled) and, for rows with token labels, `hidden_states` `[layers, seq, hidden]` (float16; the layers
    `model.mixed_layers(token_level=True)`).
    """
    token_tasks = [name for name, spec in model.config.tasks.items() if spec.is_token_level]
    last_tokens = any(
        spec.is_token_level and not spec.head.mixes_layers for spec in model.config.tasks.values()
    )
    token_layers = model.mixed_layers(token_level=True)
    sentence_layers = model.mixed_layers(token_level=False)
    last = model.config.encoder_config.num_hidden_layers
    layers = (
        tuple(sorted({*token_layers, *sentence_layers, last})) if token_layers or sentence_layers else None
    )
    was_training = model.training
    model.eval()
    # Batches of rows of similar length pad least (unsorted batches of 64 cost more than a training epoch's
    # forward passes), longest first and as many per batch as the serving mode takes; each row is put back.
    plan = model.serving_plan
    lengths = [len(ids) for ids in dataset["input_ids"]]
    order = sorted(range(len(dataset)), key=lambda i: -lengths[i])
    batches = [
        order[start:end]
        for start, end in plan_batches([lengths[i] for i in order], batch_size, plan.token_budget)
    ]
    rows: list[dict[str, torch.Tensor]] = [{} for _ in order]
    for indices in tqdm(batches, desc=description, leave=False):
        batch = collator([dataset[index] for index in indices])
        batch = {k: _to(v, model.device) for k, v in batch.items()}
        encoder_inputs = {k: batch[k] for k in MODEL_INPUT_NAMES if k in batch}
        if layers is None:
            token_states = model.encoder_states(encoder_inputs)
        else:  # one pass: the mixing heads' layers and the last one
            states = split_layers(model.encoder_states(encoder_inputs, layers))
            token_states = states[layers.index(last)]
            if sentence_layers:
                each = model.pooling.pool_layers(
                    (states[layers.index(i)] for i in sentence_layers), batch["attention_mask"]
                )
                pooled_layers = torch.stack(each, dim=1).float().cpu()  # [batch, layers, hidden]
            if token_layers:
                token_stack = torch.stack(
                    [states[layers.index(i)] for i in token_layers]
                )  # [layers, batch, seq, hidden]
        pooled = model.pooling(token_states, batch["attention_mask"]).float().cpu()
        for prefix in SECOND_TEXTS:  # second texts of pairs, contrastive negatives: pooled too
            second = batch.get(f"{prefix}_inputs")
            if second is not None:
                states = model.encoder_states({k: second[k] for k in MODEL_INPUT_NAMES if k in second})
                second_pooled = model.pooling(states, second["attention_mask"]).float().cpu()
                for position, row in enumerate(second["rows"].tolist()):
                    rows[indices[row]][f"{prefix}_pooled_embeddings"] = second_pooled[position]
        real_tokens = batch["attention_mask"].bool()  # padding on either side (the tokenizer's padding_side)
        for row, index in enumerate(indices):
            item = rows[index]
            item["pooled_embeddings"] = pooled[row]
            if sentence_layers:
                item["pooled_hidden_states"] = pooled_layers[row]
            for key, value in batch.items():
                if key.startswith("labels_"):
                    item[key] = value[row].cpu()
            if "teacher_targets" in batch:
                item["teacher_targets"] = {
                    name: value[row].cpu() for name, value in batch["teacher_targets"].items()
                }
            has_token_labels = any((item[f"labels_{name}"] != IGNORE_INDEX).any() for name in token_tasks)
            if has_token_labels:  # the real tokens only; PrecomputedCollator pads them on the right
                keep = real_tokens[row]
                if last_tokens:
                    item["token_states"] = token_states[row, keep].to(torch.float16).cpu()
                if token_layers:
                    item["hidden_states"] = token_stack[:, row, keep].to(torch.float16).cpu()
                item["attention_mask"] = batch["attention_mask"][row, keep].cpu()
                for name in token_tasks:
                    item[f"labels_{name}"] = item[f"labels_{name}"][keep.cpu()]
                    if name in item.get("teacher_targets", {}):
                        item["teacher_targets"][name] = item["teacher_targets"][name][keep.cpu()]
    model.train(was_training)
    return PrecomputedFeatures(rows)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, dict):
        return {key: _to(item, device) for key, item in value.items()}
    return value.to(device) if isinstance(value, torch.Tensor) else value


class PrecomputedCollator:
    """Stacks precomputed rows into a batch for `MultiTaskEncoderModel.forward`: `encoder_outputs`
    (`pooled_embeddings` `[batch, hidden]`, and with token tasks `last_hidden_state` `[batch, seq, hidden]`;
    with layer-mixing heads `pooled_hidden_states` / `hidden_states`, {layer: `[batch, hidden]` /
    `[batch, seq, hidden]`}), `attention_mask` and every `labels_<task>`.

    Token states, masks and token labels are padded to the longest row with token states; rows without
    any (sentence-only rows in a mixed batch) get zero states, a zero mask and -100 token labels.
    """

    def __init__(self, model: MultiTaskEncoderModel) -> None:
        self.token_tasks = [name for name, spec in model.config.tasks.items() if spec.is_token_level]
        self.last_tokens = any(
            spec.is_token_level and not spec.head.mixes_layers for spec in model.config.tasks.values()
        )
        self.token_layers = model.mixed_layers(token_level=True)
        self.sentence_layers = model.mixed_layers(token_level=False)
        self.hidden_size = model.config.encoder_config.hidden_size

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        encoder_outputs = {"pooled_embeddings": torch.stack([row["pooled_embeddings"] for row in rows])}
        if self.sentence_layers:
            stacked = torch.stack([row["pooled_hidden_states"] for row in rows], dim=1)  # [layers, batch, h]
            encoder_outputs["pooled_hidden_states"] = dict(zip(self.sentence_layers, stacked.unbind(0)))
        for prefix in SECOND_TEXTS:
            present = [i for i, row in enumerate(rows) if f"{prefix}_pooled_embeddings" in row]
            if present:
                encoder_outputs[f"{prefix}_pooled_embeddings"] = torch.stack(
                    [rows[i][f"{prefix}_pooled_embeddings"] for i in present]
                )
                encoder_outputs[f"{prefix}_rows"] = torch.tensor(present, dtype=torch.long)
        batch: dict[str, Any] = {"encoder_outputs": encoder_outputs}
        for key in rows[0]:
            if key.startswith("labels_") and key[len("labels_") :] not in self.token_tasks:
                batch[key] = torch.stack([row[key] for row in rows])
        teacher_tasks = list(rows[0].get("teacher_targets", {}))
        if teacher_tasks:
            batch["teacher_targets"] = {
                name: torch.stack([row["teacher_targets"][name] for row in rows])
                for name in teacher_tasks
                if name not in self.token_tasks
            }
        if not self.token_tasks:
            return batch
        longest = max((row["attention_mask"].shape[0] for row in rows if "attention_mask" in row), default=1)
        states = torch.zeros(len(rows), longest, self.hidden_size) if self.last_tokens else None
        layer_states = torch.zeros(len(self.token_layers), len(rows), longest, self.hidden_size)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        token_labels = {name: torch.full((len(rows), longest), IGNORE_INDEX) for name in self.token_tasks}
        for i, row in enumerate(rows):
            if "attention_mask" not in row:
                continue
            length = row["attention_mask"].shape[0]
            if states is not None:
                states[i, :length] = row["token_states"].float()
            if self.token_layers:
                layer_states[:, i, :length] = row["hidden_states"].float()
            mask[i, :length] = row["attention_mask"]
            for name in self.token_tasks:
                token_labels[name][i, :length] = row[f"labels_{name}"]
        if states is not None:
            encoder_outputs["last_hidden_state"] = states
        if self.token_layers:
            encoder_outputs["hidden_states"] = dict(zip(self.token_layers, layer_states.unbind(0)))
        batch["attention_mask"] = mask
        for name in self.token_tasks:
            batch[f"labels_{name}"] = token_labels[name]
        for name in set(teacher_tasks) & set(self.token_tasks):
            targets = torch.full(
                (len(rows), longest, rows[0]["teacher_targets"][name].shape[-1]), float("nan")
            )
            for i, row in enumerate(rows):
                if "attention_mask" in row:  # a row with token states (see above)
                    value = row["teacher_targets"][name]
                    targets[i, : value.shape[0]] = value
            batch["teacher_targets"][name] = targets
        return batch
