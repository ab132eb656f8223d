"""Serve a multitask-encoder ONNX export with ONNX Runtime, numpy and the `tokenizers` library alone (no torch,
no transformers, no multitask_encoder): the same dicts `model.predict` returns, for every task.

    model.export_onnx("outputs/demo-onnx")  # with the package, once

    python examples/onnx_predict.py outputs/demo-onnx "Alice flew to Paris." "Stocks fell."
    python examples/onnx_predict.py outputs/demo-onnx --pair "A man eats." "Someone is eating."

Prints {"texts": [...], "pairs": [...]}: one {task: prediction} per input. Nothing here knows a task type:
where each task's output is and how to decode it come from the export's config.json `postprocessing`
(docs/onnx.md), so the same code serves any exported model. Needs `pip install onnxruntime tokenizers numpy`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from tokenizers import Encoding, Tokenizer


class OnnxMultiTaskModel:
    """An exported model folder (`model.onnx`[, `pair_heads.onnx`], config.json, tokenizer.json), served."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        # In the model's task order (config.json's keys are sorted; `tasks` is a list in order).
        self.tasks = {task["name"]: config["postprocessing"][task["name"]] for task in config["tasks"]}
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # As `predict`: cut at max_seq_length (a pair: the longer text first), no padding (done per batch below).
        self.tokenizer.enable_truncation(config["max_seq_length"])
        self.tokenizer.no_padding()
        self.sessions = {
            graph: onnxruntime.InferenceSession(str(folder / graph), providers=["CPUExecutionProvider"])
            for graph in config["onnx_export"]["graphs"]
        }

    # ------------------------------------------------------------------ running the graphs
    def run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All outputs of `graph` by name; `feed` may hold inputs the graph does not take."""
        session = self.sessions[graph]
        inputs = {node.name: feed[node.name] for node in session.get_inputs()}
        names = [node.name for node in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))

    def encode(
        self, inputs: list[str] | list[tuple[str, str]]
    ) -> tuple[dict[str, np.ndarray], list[Encoding]]:
        """Texts (or pairs, encoded jointly) -> the padded int64 feed of model.onnx and each one's Encoding."""
        encodings = self.tokenizer.encode_batch(inputs)
        length = max(len(encoding.ids) for encoding in encodings)

        def padded(rows: list[list[int]]) -> np.ndarray:
            # Padded positions are masked out of attention and pooling, so the padding id does not matter.
            return np.array([row + [0] * (length - len(row)) for row in rows], dtype=np.int64)

        feed = {
            "input_ids": padded([encoding.ids for encoding in encodings]),
            "attention_mask": padded([encoding.attention_mask for encoding in encodings]),
            "token_type_ids": padded([encoding.type_ids for encoding in encodings]),
        }
        return feed, encodings

    # ------------------------------------------------------------------ predict
    def predict(self, inputs: list[str] | list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Texts -> the predictions of every task that reads a text; (text, text_pair) tuples -> those of
        every pair task. One {task: prediction} per input, as `model.predict`."""
        if not inputs:
            return []
        pairs = isinstance(inputs[0], (tuple, list))
        results: list[dict[str, Any]] = [{} for _ in inputs]
        if not pairs:
            feed, encodings = self.encode(list(inputs))
            outputs = self.run("model.onnx", feed)
            for name, post in self.tasks.items():
                if post["input"] == "text":
                    self.add(results, name, decode(post, outputs[post["output"]], inputs, encodings))
            return results
        firsts = self.run("model.onnx", self.encode([first for first, _ in inputs])[0])["embeddings"]
        seconds = self.run("model.onnx", self.encode([second for _, second in inputs])[0])["embeddings"]
        joint = None
        for name, post in self.tasks.items():
            if post["input"] == "pair_joint":  # one `[CLS] a [SEP] b` input, through model.onnx
                joint = joint or self.run("model.onnx", self.encode([tuple(pair) for pair in inputs])[0])
                values = joint[post["output"]]
            elif post["input"] == "pair" and post["activation"] == "cosine":  # of the two texts' embeddings
                values = np.sum(firsts * seconds, axis=-1) / (
                    np.linalg.norm(firsts, axis=-1) * np.linalg.norm(seconds, axis=-1)
                )
            elif post["input"] == "pair":  # a head over the two texts' embeddings
                feed = {"embeddings": firsts, "pair_embeddings": seconds}
                values = self.run(post["graph"], feed)[post["output"]]
            else:
                continue
            self.add(results, name, decode(post, values, None, None))
        return results

    @staticmethod
    def add(results: list[dict[str, Any]], name: str, predictions: list[dict[str, Any]]) -> None:
        for result, prediction in zip(results, predictions):
            result[name] = prediction


# ---------------------------------------------------------------------------------------------- decoding
def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def ranked(labels: list[str], probabilities: np.ndarray) -> dict[str, float]:
    """{label: probability}, highest first."""
    return dict(sorted(zip(labels, probabilities.tolist()), key=lambda pair: -pair[1]))


def decode(
    post: dict[str, Any], values: np.ndarray, texts: list[str] | None, encodings: list[Encoding] | None
) -> list[dict[str, Any]]:
    """One task's output for a batch -> one prediction per row, as its `postprocessing` entry says."""
    activation = post["activation"]
    values = values.astype(np.float64)
    if activation == "cosine":
        predictions = [{"similarity": float(value)} for value in values.reshape(-1)]
        if post.get("score_range") is not None:  # the cosine, clipped to [0, 1], on the data's scale
            low, high = post["score_range"]
            for prediction in predictions:
                prediction["score"] = low + min(max(prediction["similarity"], 0.0), 1.0) * (high - low)
        return predictions
    labels = [post["id2label"][str(index)] for index in range(len(post["id2label"]))]
    if "decoding" in post:  # token logits [batch, seq, n_tags] -> entity spans
        return [
            {"entities": entities(text, encoding, softmax(row), labels)}
            for text, encoding, row in zip(texts, encodings, values)
        ]
    if activation == "softmax":
        predictions = []
        for row in softmax(values):
            scores = ranked(labels, row)
            best = next(iter(scores))
            predictions.append({"label": best, "score": scores[best], "scores": scores})
        return predictions
    if activation == "sigmoid":
        predictions = []
        for row in 1.0 / (1.0 + np.exp(-values)):
            scores = ranked(labels, row)
            chosen = [label for label, probability in scores.items() if probability >= post["threshold"]]
            predictions.append({"labels": chosen, "scores": scores})
        return predictions
    if activation == "none":  # regression: one value, or one per named output
        if len(labels) == 1:
            return [{"value": float(row[0])} for row in values]
        return [{"values": dict(zip(labels, row.tolist()))} for row in values]
    raise ValueError(f"Unknown activation {activation!r} in config.json postprocessing.")


def entities(text: str, encoding: Encoding, probabilities: np.ndarray, labels: list[str]) -> list[dict]:
    """One text's token probabilities [seq, n_tags] -> its entities (the `decoding` rules of docs/onnx.md)."""
    words: dict[int, list[int]] = {}  # word id -> [first sub-token, char start, char end]
    for token, word_id in enumerate(encoding.word_ids):
        if word_id is None:  # special tokens and padding
            continue
        start, end = encoding.offsets[token]
        if word_id not in words:
            words[word_id] = [token, start, end]
        else:
            words[word_id][2] = end
    ordered = [words[word_id] for word_id in sorted(words)]
    first_tokens = probabilities[[first for first, _, _ in ordered]]  # each word: its first sub-token
    tags = [labels[index] for index in first_tokens.argmax(axis=-1)]
    scores = first_tokens.max(axis=-1).tolist()
    found = []
    for entity_type, first, last in group_iob2(tags):
        start, end = ordered[first][1], ordered[last - 1][2]
        score = sum(scores[first:last]) / (last - first)
        found.append(
            {"entity": entity_type, "text": text[start:end], "start": start, "end": end, "score": score}
        )
    return found


def group_iob2(tags: list[str]) -> list[tuple[str, int, int]]:
    """Word tags -> (entity type, first word, last word + 1): an I-X continues the open entity when the
    previous tag is B-X or I-X; any other non-O tag opens a new entity (seqeval's default, conlleval)."""
    found: list[tuple[str, int, int]] = []
    open_type, open_start = None, 0
    previous = ("O", "")
    for position, tag in enumerate(tags):
        prefix, _, tag_type = tag.partition("-")
        if prefix != "I" or previous[0] not in ("B", "I") or previous[1] != tag_type:
            if open_type is not None:
                found.append((open_type, open_start, position))
            open_type, open_start = (None, 0) if tag == "O" else (tag_type, position)
        previous = (prefix, tag_type)
    if open_type is not None:
        found.append((open_type, open_start, len(tags)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the folder model.export_onnx(...) wrote")
    parser.add_argument("texts", nargs="*", help="texts for the tasks that read one text")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("TEXT", "TEXT_PAIR"))
    args = parser.parse_args()
    model = OnnxMultiTaskModel(args.folder)
    result = {
        "texts": model.predict(args.texts) if args.texts else [],
        "pairs": model.predict([tuple(pair) for pair in args.pair]) if args.pair else [],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
