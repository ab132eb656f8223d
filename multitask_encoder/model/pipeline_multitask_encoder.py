"""The `multitask-text-classification` pipeline: every task's prediction for each text, the same dicts as
`MultiTaskEncoderModel.predict`.

    text ─► preprocess (the model's tokenisation) ─► _forward (one model call per batch, the tasks asked for)
         ─► postprocess (the model's decoding) ─► {task: prediction}

`save_pretrained` copies this file next to the weights and records it in `config.custom_pipelines`, so
`pipeline("multitask-text-classification", model=dir_or_repo, trust_remote_code=True)` works on a machine
without the `multitask_encoder` package. It therefore imports only torch, transformers and the standard
library; tokenisation and decoding are the model's public `preprocess`/`postprocess`, the ones `predict` uses, so
the pipeline cannot drift from `predict`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Pipeline

PIPELINE_TASK = "multitask-text-classification"
# Written to config.json at save time. transformers reads it in `pipeline(...)`: `impl` is "<file>.<class>" in
# the checkpoint's folder or repo (loaded with trust_remote_code), `pt` the Auto classes that load the model.
CUSTOM_PIPELINES: dict[str, dict[str, Any]] = {
    PIPELINE_TASK: {
        "impl": "pipeline_multitask_encoder.MultiTaskTextClassificationPipeline",
        "pt": ["AutoModel"],
        "type": "text",
    }
}


class MultiTaskTextClassificationPipeline(Pipeline):
    """Predictions of every task (or `tasks`) of a multi-task encoder for one text or a list of texts.

    Call parameters (also accepted when building the pipeline):
        tasks (`str` or `list[str]`): the tasks to run (default: all, in config order).
        top_k (`int`): keep the best `top_k` class scores in `scores` (classification tasks).
        batch_size (`int`): texts per model call (padded to the longest in the batch; default 1).
        labels (`dict`): {task: label names, or {name: text}} replacing the labels of label_text_classification
            tasks for this call (as `predict`'s `labels`).

    A string gives one dict `{task: prediction}`, a list gives a list of them, a generator or dataset gives
    an iterator. Each prediction is what `MultiTaskEncoderModel.predict` returns for that task.

    Inputs are read as `predict` reads them: texts run the tasks that read single texts (a model's pair tasks
    are skipped; naming one in `tasks` is refused), pairs of texts (`(text, text_pair)` tuples or
    `{"text", "text_pair"}` dicts, in a list, or one alone) run the pair tasks, through `predict` itself.
    """

    # Load the checkpoint's tokenizer when there is one; a model passed as an object falls back to its own.
    _load_tokenizer = None
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, model, tokenizer=None, **kwargs: Any) -> None:
        super().__init__(model, tokenizer=tokenizer, **kwargs)
        # One tokenizer for the pipeline and the model's tokenisation helper (max length, truncation warning).
        if self.tokenizer is None:
            self.tokenizer = self.model.tokenizer
        else:
            self.model.tokenizer = self.tokenizer
        # A model handed over mid-training would otherwise predict through dropout.
        self.model.eval()

    def __call__(self, inputs, **kwargs: Any):
        if self.model.as_pairs(inputs) is not None:
            # Pairs of texts for the pair tasks: predict reads them (the same rules: a list of tuples or dicts,
            # one dict or one bare 2-tuple alone), batches and encodes them (each text apart, or both as one).
            return self.model.predict(
                inputs,
                tasks=kwargs.get("tasks"),
                top_k=kwargs.get("top_k"),
                labels=kwargs.get("labels"),
                batch_size=kwargs.get("batch_size") or 64,
            )
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            return []  # `Pipeline.__call__` indexes inputs[0]; `predict([])` is [] too
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, tasks=None, top_k=None, labels=None):
        preprocess_params, forward_params, postprocess_params = {}, {}, {}
        if tasks is not None:
            tasks = self.model.tasks_for("text", tasks)  # unknown names fail here, before any text is read
            preprocess_params["tasks"] = forward_params["tasks"] = postprocess_params["tasks"] = tasks
        if labels is not None:
            with torch.inference_mode():  # the label texts are embedded once per call, not once per batch
                forward_params["label_embeddings"] = self.model.label_text_embeddings(
                    self.model.tasks_for("text", tasks), labels
                )
            postprocess_params["labels"] = labels
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}.")
            postprocess_params["top_k"] = top_k
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, text: str, tasks: list[str] | None = None) -> dict[str, Any]:
        """One text -> model inputs `[1, seq]` plus the text and its `Encoding` (offsets for token tasks)."""
        (batch,) = self.model.preprocess([text], tasks=tasks, batch_size=1)
        return {**batch.inputs, "text": batch.texts[0], "encoding": batch.encodings[0]}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        tasks: list[str] | None = None,
        label_embeddings: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """Padded batch `[batch, seq]` -> `<task>_logits` for the asked tasks, with the texts and encodings
        passed through (the pipeline's batching splits every entry back into rows)."""
        tasks = self.model.tasks_for("text", tasks)
        texts, encodings = model_inputs.pop("text"), model_inputs.pop("encoding")
        output = self.model(**model_inputs, tasks=tasks, label_embeddings=label_embeddings)
        # The logits come first: the pipeline reads the batch size off the first entry.
        return {
            **{f"{name}_logits": output[f"{name}_logits"] for name in tasks},
            "text": texts,
            "encoding": encodings,
        }

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        tasks: list[str] | None = None,
        top_k: int | None = None,
        labels: dict[str, Any] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """One row of `_forward`'s output (logits `[1, ...]`) -> `{task: prediction}`."""
        texts, encodings = [model_outputs["text"]], [model_outputs["encoding"]]
        tasks = self.model.tasks_for("text", tasks)  # the tasks _forward ran (never the pair tasks)
        return self.model.postprocess(model_outputs, texts, encodings, tasks, top_k, labels=labels)[0]


__all__ = ["CUSTOM_PIPELINES", "PIPELINE_TASK", "MultiTaskTextClassificationPipeline"]
