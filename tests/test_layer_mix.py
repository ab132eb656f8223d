"""Layer mixing for heads (head `layers`: ELMo / UDify scalar mix): `last` changes nothing; a mixing head reads
the softmax-weighted, gamma-scaled mix of the hidden states it names (token heads: of the token states; sentence
heads: of each layer pooled as the embedding is, then L2-normalised) and learns the mix; the mix is saved and
reloads exactly through remote code; the embedding is unchanged; every serving mode, the ONNX export and the
frozen-encoder fast path carry it in one encoder pass; task types that cannot use it are refused by name."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_arguments import doc_sections, documented
from test_inference_modes import TEXTS, assert_same_predictions, cosine
from test_training import heads_of, job_flags, toy_tasks, train, write_config
from test_training import toy_data as toy_data

from multitask_encoder import MultiTaskEncoderModel
from multitask_encoder.collator import MultiTaskCollator
from multitask_encoder.data import load_multitask_data
from multitask_encoder.model import inference_multitask_encoder as inference
from multitask_encoder.model.modeling_multitask_encoder import Pooling
from multitask_encoder.model.tasks_multitask_encoder import HeadSpec, parse_task_spec
from multitask_encoder.optimization import parameter_groups
from multitask_encoder.precompute import PrecomputedCollator, precompute_features
from multitask_encoder.task_types import task_type

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def mixing_tasks(topic_layers=(0, 2), ner_layers="all") -> dict:
    """A sentence head and a token head that mix layers of the 2-layer backbone, and two that do not."""
    return {
        "topic": {
            "type": "sequence_classification",
            "labels": ["world", "sports", "business"],
            "head": {"layers": list(topic_layers) if not isinstance(topic_layers, str) else topic_layers},
        },
        "score": {"type": "regression"},
        "ner": {"type": "token_classification", "labels": list(NER_LABELS), "head": {"layers": ner_layers}},
        "tags": {"type": "multi_label_classification", "labels": ["politics", "economy"]},
    }


def set_mix(model: MultiTaskEncoderModel) -> None:
    """Mix weights away from their uniform start, so a wrong layer order or a missing gamma shows."""
    with torch.no_grad():
        for name, head in model.heads.items():
            if head.mix is not None:
                count = len(head.layers)
                head.mix.weights.copy_(torch.linspace(-1.0, 0.8, count) * (1.5 if name == "ner" else 1.0))
                head.mix.gamma.fill_(1.7 if name == "ner" else 0.6)


def build(tiny_backbone: str, tasks: dict, seed: int = 0, **options) -> MultiTaskEncoderModel:
    torch.manual_seed(seed)
    model = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=copy.deepcopy(tasks), **options)
    set_mix(model)
    return model.eval()


def batch_of(model: MultiTaskEncoderModel, texts: list[str]) -> dict:
    return dict(model.tokenizer(texts, padding=True, return_tensors="pt"))


# ---------------------------------------------------------------------------------------------- last
def test_layers_last_is_bit_identical_to_a_head_without_the_option(tiny_backbone: str, example_tasks) -> None:
    explicit = copy.deepcopy(example_tasks)
    for spec in explicit.values():
        spec["head"] = {"layers": "last"}
    plain, last = build(tiny_backbone, example_tasks), build(tiny_backbone, explicit)
    assert plain.state_dict().keys() == last.state_dict().keys()  # no mix parameters
    assert all(head.mix is None and head.layers is None for head in last.heads.values())
    assert last.config.to_dict()["tasks"][0]["head"]["layers"] == "last"
    batch = batch_of(plain, TEXTS[:5])
    with torch.no_grad():
        want, got = plain(**batch), last(**batch)
    for key in ("embeddings", *(f"{name}_logits" for name in example_tasks)):
        assert torch.equal(got[key], want[key]), key


# ---------------------------------------------------------------------------------------------- the mix
@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_mixing_heads_compute_the_scalar_mix_by_hand_and_learn_it(tiny_backbone: str, pooling: str) -> None:
    model = build(tiny_backbone, mixing_tasks(), pooling=pooling)
    topic, ner = model.heads["topic"], model.heads["ner"]
    assert topic.layers == (0, 2) and ner.layers == (0, 1, 2)
    assert topic.out.in_features == ner.out.in_features == 384
    batch = batch_of(model, TEXTS[:6])
    with torch.no_grad():
        output = model(**batch)
        hidden = model.encoder(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"]

    # Sentence head: each chosen layer pooled (max pooling does not commute with the mix), mixed, normalised.
    weights = torch.softmax(topic.mix.weights.detach(), dim=0)
    pooled = [model.pooling(hidden[i], mask) for i in (0, 2)]
    mixed = F.normalize(weights[0] * pooled[0] + weights[1] * pooled[1], dim=-1)
    expected = topic.out(topic.mix.gamma.detach() * mixed)
    torch.testing.assert_close(output["topic_logits"], expected, atol=1e-5, rtol=1e-5)
    # Token head: the mix of the token states of all 3 hidden states (embeddings, layer 1, layer 2).
    weights = torch.softmax(ner.mix.weights.detach(), dim=0)
    mixed = ner.mix.gamma.detach() * sum(weights[k] * hidden[k] for k in range(3))
    torch.testing.assert_close(output["ner_logits"], ner.out(mixed), atol=1e-5, rtol=1e-5)
    # The mix really differs from the last layer alone (the test would pass vacuously otherwise).
    assert not torch.allclose(output["ner_logits"], ner.out(hidden[2]), atol=1e-3)
    # The embedding is still the last layer's.
    torch.testing.assert_close(
        output.embeddings, F.normalize(model.pooling(hidden[2], mask), dim=-1), atol=0, rtol=0
    )

    model.train()
    labels = {
        "labels_topic": torch.tensor([0, 1, 2, 0, 1, 2]),
        "labels_ner": torch.where(mask.bool(), 1, -100),
    }
    model(**batch, **labels).loss.backward()
    for head in (topic, ner):
        assert torch.count_nonzero(head.mix.weights.grad) == len(head.layers)
        assert head.mix.gamma.grad.abs().item() > 1e-4  # the scale after the normalisation: it learns too


def test_a_mixing_sentence_head_reads_hidden_size_whatever_the_projection(tiny_backbone: str) -> None:
    model = build(tiny_backbone, mixing_tasks(), projection_dim=32)
    assert model.heads["topic"].out.in_features == 384  # the pooled hidden states, never projected
    assert model.heads["tags"].out.in_features == 32  # a head of the last layer reads the embedding
    with torch.no_grad():
        output = model(**batch_of(model, TEXTS[:3]))
    assert output.embeddings.shape == (3, 32) and output["topic_logits"].shape == (3, 3)
    card_line = task_type(model.config.tasks["topic"]).head_reads(model.config.tasks["topic"])
    assert "mix" in card_line and "hidden layers [0, 2]" in card_line


def test_embeddings_are_unchanged_by_mixing_heads(tiny_backbone: str, example_tasks) -> None:
    plain = build(tiny_backbone, example_tasks)
    mixing = build(tiny_backbone, mixing_tasks())
    exact = plain.encode(TEXTS, batch_size=4)
    np.testing.assert_array_equal(mixing.encode(TEXTS, batch_size=4), exact)
    np.testing.assert_array_equal(
        mixing.similarity(TEXTS[:3], TEXTS[3:6]).numpy(), plain.similarity(TEXTS[:3], TEXTS[3:6]).numpy()
    )
    batch = batch_of(plain, TEXTS)
    with torch.no_grad():  # forward runs the encoder with output_hidden_states: the same embeddings
        assert torch.equal(mixing(**batch).embeddings, plain(**batch).embeddings)


def test_one_encoder_pass_serves_every_head(tiny_backbone: str) -> None:
    model = build(tiny_backbone, mixing_tasks())
    calls = []
    model.encoder.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs), with_kwargs=True
    )
    model.predict(TEXTS, batch_size=64)
    assert len(calls) == 1 and calls[0].get("output_hidden_states") is True
    calls.clear()
    model.predict(TEXTS, tasks=["score", "tags"], batch_size=64)  # no mixing head runs: the last layer alone
    assert len(calls) == 1 and not calls[0].get("output_hidden_states")


def test_the_mix_trains_at_the_head_learning_rate_without_weight_decay(tiny_backbone: str) -> None:
    model = build(tiny_backbone, mixing_tasks())
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    decayed = {name for name, _ in model.named_parameters() if not name.endswith("bias")}  # as the Trainer's
    groups = parameter_groups(model, 1e-5, 0.01, decayed, head_learning_rate=1e-3)
    where = {names[id(p)]: (group["lr"], group["weight_decay"]) for group in groups for p in group["params"]}
    for name in ("topic", "ner"):
        assert where[f"heads.{name}.mix.weights"] == where[f"heads.{name}.mix.gamma"] == (1e-3, 0.0)
        assert where[f"heads.{name}.out.weight"] == (1e-3, 0.01)


# ---------------------------------------------------------------------------------------------- save / load
RELOAD_SCRIPT = textwrap.dedent(  # run through the `run_without_package` fixture
    """
    import json
    import sys

    import torch
    from transformers import AutoModel, AutoTokenizer

    folder, texts, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    batch = dict(AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        output = model(**batch)
    result = {
        "logits": {name: output[f"{name}_logits"].tolist() for name in model.config.tasks},
        "mix": {
            name: [head.mix.weights.tolist(), head.mix.gamma.tolist(), list(head.layers)]
            for name, head in model.heads.items()
            if head.mix is not None
        },
        "predictions": model.predict(texts),
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    """
)


def test_mix_weights_are_saved_and_reload_exactly_in_a_fresh_process(
    tiny_backbone: str, tmp_path: Path, run_without_package
) -> None:
    model = build(tiny_backbone, mixing_tasks(topic_layers=[2, 0]))  # the listed order is kept
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    assert torch.equal(weights["heads.topic.mix.weights"], model.heads["topic"].mix.weights.detach())
    assert torch.equal(weights["heads.ner.mix.gamma"], model.heads["ner"].mix.gamma.detach())
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert {task["name"]: task["head"]["layers"] for task in config["tasks"]} == {
        "topic": [2, 0],
        "score": "last",
        "ner": "all",
        "tags": "last",
    }

    out = tmp_path / "reloaded.json"
    result = run_without_package(RELOAD_SCRIPT, str(folder), json.dumps(TEXTS[:5]), str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    reloaded = json.loads(out.read_text(encoding="utf-8"))
    with torch.no_grad():
        output = model(**batch_of(model, TEXTS[:5]))
    for name in model.config.tasks:
        assert torch.equal(torch.tensor(reloaded["logits"][name]), output[f"{name}_logits"]), name
    for name in ("topic", "ner"):
        head = model.heads[name]
        weights, gamma, layers = reloaded["mix"][name]
        assert torch.equal(torch.tensor(weights), head.mix.weights.detach()), name
        assert torch.equal(torch.tensor(gamma), head.mix.gamma.detach()), name
        assert tuple(layers) == head.layers
    assert reloaded["predictions"] == json.loads(json.dumps(model.predict(TEXTS[:5])))


# ---------------------------------------------------------------------------------------------- serving
def needs_runtime(mode: str) -> None:
    pytest.importorskip("onnxscript")  # torch.onnx's exporter
    pytest.importorskip("openvino" if mode.startswith("openvino") else "onnxruntime")


@pytest.fixture(scope="module")
def mixing_model(tiny_backbone: str) -> MultiTaskEncoderModel:
    return build(tiny_backbone, mixing_tasks(topic_layers=[1], ner_layers=[0, 2]))


@pytest.mark.parametrize(
    "mode",
    [
        "token_budget",
        "bf16",
        "onnx",
        "openvino",
        "onnx_int8",
        "openvino_bf16",
        pytest.param("compiled", marks=pytest.mark.slow),  # compiles the encoder (~30-60 s on 2 cores)
    ],
)
def test_every_serving_mode_serves_the_mixing_heads_as_exact(mixing_model, mode: str) -> None:
    if mode in inference.RUNTIME_MODES:
        needs_runtime(mode)
    model = copy.deepcopy(mixing_model)
    batch = batch_of(model, TEXTS)
    with torch.no_grad():
        exact = model(**batch)
    exact_predictions = model.predict(TEXTS, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 warns where the CPU has no native bf16
        model.optimize_for_inference(mode, token_budget=96, threads=1)
    if mode in inference.RUNTIME_MODES:  # the graph outputs the mixed layers and the last one
        assert model.serving_plan.run_encoder.exported == (0, 1, 2)
    with torch.no_grad():
        served = model(**batch)
    predictions = model.predict(TEXTS)
    if mode in ("bf16", "onnx_int8", "openvino_bf16"):  # reduced precision: within the serving guard
        assert cosine(served.embeddings.numpy(), exact.embeddings.numpy()).min() >= 0.99
        # Logits of the heads (random, weights of std 0.02) over the mixes: a few hundredths apart at most.
        for name in ("topic", "ner"):
            torch.testing.assert_close(served[f"{name}_logits"], exact[f"{name}_logits"], atol=0.1, rtol=0)
        assert not torch.equal(served["topic_logits"], exact["topic_logits"])  # reduced precision really ran
        flipped = [p["topic"]["label"] != q["topic"]["label"] for p, q in zip(predictions, exact_predictions)]
        assert sum(flipped) <= 1, flipped  # random heads: a near-tie may flip
    else:
        for key in ("embeddings", *(f"{name}_logits" for name in model.config.tasks)):
            torch.testing.assert_close(served[key], exact[key], atol=1e-4, rtol=0)
        assert_same_predictions(predictions, exact_predictions, atol=1e-4)


def test_a_runtime_graph_refuses_a_mixing_head_added_after_it_was_built(tiny_backbone: str) -> None:
    needs_runtime("onnx")
    tasks = {"topic": {"type": "sequence_classification", "labels": ["a", "b"], "head": {"layers": [1]}}}
    model = build(tiny_backbone, tasks)
    model.optimize_for_inference("onnx", threads=1)
    assert model.serving_plan.run_encoder.exported == (1, 2)
    model.add_task("early", {"type": "regression", "head": {"layers": [0, 1]}})
    with pytest.raises(
        RuntimeError, match=r"exported with hidden states \[1, 2\], not \[0\].*optimize_for_inference"
    ):
        model.predict(TEXTS[:2], tasks="early")
    model.optimize_for_inference("onnx", threads=1)
    served = model.predict(TEXTS[:2], tasks="early")
    exact = model.optimize_for_inference("exact").predict(TEXTS[:2], tasks="early")
    assert served[0]["early"]["value"] == pytest.approx(exact[0]["early"]["value"], abs=1e-4)


def test_export_onnx_carries_the_mixing_heads(mixing_model, tmp_path: Path) -> None:
    needs_runtime("onnx")
    import onnxruntime

    path = mixing_model.export_onnx(tmp_path / "onnx")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    assert [node.name for node in session.get_outputs()] == [
        "embeddings",
        *(f"{name}_logits" for name in mixing_model.config.tasks),
    ]
    batch = batch_of(mixing_model, TEXTS[2:11])
    with torch.no_grad():
        expected = mixing_model(**batch)
    outputs = session.run(None, {name: batch[name].numpy() for name in names})
    for node, got in zip(session.get_outputs(), outputs):
        np.testing.assert_allclose(got, expected[node.name].numpy(), atol=1e-4, err_msg=node.name)


# ---------------------------------------------------------------------------------------------- fast path
def test_precomputed_fast_path_gives_the_slow_paths_logits(tiny_backbone: str, tmp_path: Path) -> None:
    (tmp_path / "topics.csv").write_text(
        "text,topic\nOil prices rose sharply on Monday,business\nGoal!,sports\n"
        "Parliament passed the budget bill late on Thursday,world\nMarkets were flat.,business\n"
    )
    conll = (
        "Angela\tB-PER\nMerkel\tI-PER\nmet\tO\nMacron\tB-PER\nin\tO\nBerlin\tB-LOC\n\nHi\tO\n\n"
        "Barcelona\tB-LOC\nbeat\tO\nReal\tB-LOC\nMadrid\tI-LOC\n"
    )
    (tmp_path / "ner.txt").write_text(conll)
    (tmp_path / "ner_last.txt").write_text(conll)
    tasks = {
        "topic": {"type": "sequence_classification", "train": "topics.csv", "head": {"layers": [0, 1]}},
        "ner": {
            "type": "token_classification",
            "train": "ner.txt",
            "format": "conll",
            "labels": list(NER_LABELS),
            "head": {"layers": [1, 2]},
        },
        "ner_last": {  # a token head of the last layer beside them: the last layer's states are kept too
            "type": "token_classification",
            "train": "ner_last.txt",
            "format": "conll",
            "labels": list(NER_LABELS),
        },
    }
    torch.manual_seed(0)
    probe = MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks={"x": {"type": "regression"}})
    data = load_multitask_data(tasks, probe.tokenizer, 64, str(tmp_path), cache_dir=str(tmp_path / "cache"))
    specs = {name: spec.to_dict() for name, spec in data.task_specs.items()}
    assert specs["topic"]["head"]["layers"] == [0, 1]
    model = build(tiny_backbone, specs, pooling="max")
    collator = MultiTaskCollator(model.tokenizer, data.task_specs)
    rows = [data.train[i] for i in range(len(data.train))]

    features = precompute_features(model, data.train, collator, batch_size=3)
    token_row = next(row for row in features.rows if "attention_mask" in row)
    assert token_row["hidden_states"].dtype == torch.float16 and token_row["hidden_states"].shape[0] == 2
    assert token_row["pooled_hidden_states"].shape == (2, 384)
    fast_batch = PrecomputedCollator(model)(features.rows)
    assert sorted(fast_batch["encoder_outputs"]["hidden_states"]) == [1, 2]
    assert sorted(fast_batch["encoder_outputs"]["pooled_hidden_states"]) == [0, 1]
    slow_batch = collator(rows)
    with torch.no_grad():
        fast = model(**fast_batch)
        slow = model(**slow_batch)
    torch.testing.assert_close(fast["topic_logits"], slow["topic_logits"], atol=1e-5, rtol=0)
    assert torch.isfinite(fast.loss) and fast.loss == pytest.approx(float(slow.loss), abs=1e-2)
    for name in ("ner", "ner_last"):  # token states stored in float16: compare the rows' real tokens
        for i in range(len(rows)):
            if "attention_mask" not in features.rows[i]:
                continue
            keep = slow_batch["attention_mask"][i].bool()
            length = int(keep.sum())
            torch.testing.assert_close(
                fast[f"{name}_logits"][i, :length], slow[f"{name}_logits"][i, keep], atol=2e-2, rtol=0
            )


def test_mixing_heads_train_on_the_frozen_fast_path_as_on_the_slow_one(
    toy_data: Path, tiny_backbone: str, tmp_path: Path
) -> None:
    """train.py with freeze_encoder, with and without precompute_embeddings: the mixes move from their start
    and end where the slow path's do (float16 token states on the fast path: the NER head is close)."""
    tasks = toy_tasks(toy_data, head={"dropout": 0.0, "layers": [0, 2]})
    tasks["topic"]["head"] = {"layers": "all"}
    config = write_config(tmp_path / "config.yaml", tasks)
    flags = ["--freeze_encoder", "--max_steps", "8", "--eval_strategy", "no", "--save_strategy", "no"]
    runs = {}
    for name, extra in (("fast", ["--precompute_embeddings", "--precompute_mode", "exact"]), ("slow", [])):
        output_dir = tmp_path / name
        _, recorder = train(
            [config, *job_flags(tiny_backbone, output_dir, toy_data / "cache"), *flags, *extra]
        )
        runs[name] = heads_of(load_file(output_dir / "model.safetensors"))
        for key in ("heads.topic.mix.weights", "heads.ner.mix.weights", "heads.ner.mix.gamma"):
            assert not torch.equal(runs[name][key], recorder.initial[key]), (name, key)
        assert (
            runs[name]["heads.topic.mix.weights"].shape == (3,)
            and "heads.sentiment.mix.weights" not in runs[name]
        )
    for key in runs["fast"]:
        tolerance = 1e-4 if key.startswith("heads.ner.") else 1e-6
        torch.testing.assert_close(runs["fast"][key], runs["slow"][key], atol=tolerance, rtol=0, msg=key)


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        ("sts", {"type": "similarity"}, r"Task 'sts': a similarity task cannot mix layers .*no head"),
        (
            "retrieval",
            {"type": "contrastive"},
            r"Task 'retrieval': a contrastive task cannot mix layers .*no head",
        ),
        (
            "nli",
            {"type": "pair_classification", "labels": ["yes", "no"]},
            r"Task 'nli': a pair_classification task cannot mix layers .*pair_encoding bi .*pair_encoding: cross",
        ),
    ],
)
def test_task_types_that_cannot_mix_layers_are_refused_by_name(name: str, spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_task_spec(name, {**spec, "head": {"layers": "all"}})
    parse_task_spec(name, {**spec, "head": {"layers": "last"}})  # the default stays valid


def test_cross_pair_classification_mixes_layers(tiny_backbone: str) -> None:
    tasks = {"nli": {"type": "pair_classification", "labels": ["yes", "no"], "pair_encoding": "cross"}}
    tasks["nli"]["head"] = {"layers": [1, 2]}
    model = build(tiny_backbone, tasks)
    assert model.heads["nli"].layers == (1, 2) and model.heads["nli"].out.in_features == 384
    assert "mix" in task_type(model.config.tasks["nli"]).head_reads(model.config.tasks["nli"])
    predictions = model.predict([("A man plays guitar.", "Someone makes music.")])
    assert predictions[0]["nli"]["label"] in ("yes", "no")


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ("first", r"Task 'topic': head layers must be 'last', 'all' or a list .*'first'"),
        ([], r"Task 'topic': head layers must be .*non-empty list"),
        (3, r"Task 'topic': head layers must be .*got 3"),
        ([1, 1], r"Task 'topic': head layers lists \[1\] more than once"),
        ([0, 1.0], r"Task 'topic': head layers must be integers >= 0 .*\[1.0\]"),
        ([-1], r"Task 'topic': head layers must be integers >= 0 .*\[-1\]"),
        ([True], r"Task 'topic': head layers must be integers >= 0"),
    ],
)
def test_bad_layer_values_are_refused_naming_the_task(layers, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_task_spec(
            "topic", {"type": "sequence_classification", "labels": ["a", "b"], "head": {"layers": layers}}
        )


def test_layers_beyond_the_encoder_are_refused_naming_the_task_and_the_layer_count(
    tiny_backbone: str,
) -> None:
    message = r"Task 'ner': head layers \[0, 3\] has \[3\], beyond the encoder's 2 layers"
    with pytest.raises(ValueError, match=message):
        MultiTaskEncoderModel.from_backbone(tiny_backbone, tasks=mixing_tasks(ner_layers=[0, 3]))
    model = build(tiny_backbone, mixing_tasks())
    with pytest.raises(
        ValueError, match=r"Task 'extra': head layers \[7\] has \[7\], beyond the encoder's 2"
    ):
        model.add_task("extra", {"type": "regression", "head": {"layers": [7]}})
    assert "extra" not in model.config.tasks
    model.add_task("extra", {"type": "regression", "head": {"layers": [0, 2]}})
    assert model.heads["extra"].layers == (0, 2) and model.heads["extra"].mix.weights.tolist() == [0.0, 0.0]


def test_every_head_key_is_documented_with_the_task_keys() -> None:
    section = doc_sections()["Keys of every task"]
    listed = re.search(r"a mapping `\{([a-z_, ]+)\}`", section).group(1).split(", ")
    assert listed == [field.name for field in dataclasses.fields(HeadSpec)]
    assert "layers" in documented(section)
    assert "`last`" in section and "`all`" in section and "scalar mix" in section


@pytest.mark.parametrize("mode", ["mean", "mean_sqrt_len", "cls", "max"])
def test_pooling_several_layers_at_once_equals_pooling_each(mode: str) -> None:
    generator = torch.Generator().manual_seed(0)
    layers = [torch.randn(4, 9, 16, generator=generator) for _ in range(3)]
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7, [1] * 7 + [0] * 2])
    pooling = Pooling(mode)
    for together, alone in zip(
        pooling.pool_layers(layers, mask), (pooling(states, mask) for states in layers)
    ):
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
