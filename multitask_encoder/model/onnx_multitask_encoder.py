"""The ONNX export (`MultiTaskEncoderModel.export_onnx`) and the runtime serving modes built on it (ONNX Runtime,
OpenVINO: optional extras, imported only inside the functions that use them).

Copied next to the weights with the other model files; imports only torch, transformers and its siblings.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .inference_multitask_encoder import (
    INT8_OUTLIER_CHANNELS,
    copy_replacing_linears,
    encoder_hidden_states,
)
from .predict_multitask_encoder import save_tokenizer
from .tasks_multitask_encoder import EncoderFeatures

# ---------------------------------------------------------------------------------------------- runtimes
# The runtime modes export the encoder (token states from token ids; pooling and heads stay in torch: cheap
# next to the encoder, and the same code and outputs as every other mode) with torch.onnx, once, at
# optimize_for_inference time, and serve that graph:
#
# | mode            | runtime        | precision                                                      |
# |-----------------|----------------|----------------------------------------------------------------|
# | `onnx`          | ONNX Runtime   | fp32 (the CUDA provider when the model is on a GPU: unmeasured) |
# | `onnx_int8`     | ONNX Runtime   | int8 matrix products, per-channel weights, outliers in fp32    |
# | `openvino`      | OpenVINO (CPU) | fp32 (inference precision pinned: OpenVINO's default is bf16    |
# |                 |                | on CPUs that have it)                                          |
# | `openvino_bf16` | OpenVINO (CPU) | bf16 (OpenVINO's own default on AMX / AVX512-BF16 CPUs)         |
#
# The runtimes are optional (`pip install multitask-encoder[onnx]` / `[openvino]`): they are imported only
# here, inside try blocks, so they never become requirements of a saved model's remote code. A session holds
# its own copy of the weights, so the plan records the weights' version (see ServingPlan.check_fresh).
RUNTIME_EXTRAS = {"onnx": "onnx", "onnx_int8": "onnx", "openvino": "openvino", "openvino_bf16": "openvino"}
RUNTIME_MODULES = {
    "onnx": "onnxruntime",
    "onnx_int8": "onnxruntime",
    "openvino": "openvino",
    "openvino_bf16": "openvino",
}
ENCODER_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def missing_extra_message(purpose: str, module: str, extra: str) -> str:
    """What to tell a user whose `purpose` needs the uninstalled `module` of the `extra` extra."""
    return (
        f"{purpose} needs the '{module}' package, which is not installed. Install the optional runtime with "
        f"`pip install 'multitask-encoder[{extra}]'` (or `pip install {module}` beside a saved model)."
    )


def require_onnx_exporter(purpose: str, extra: str = "onnx") -> None:
    """Raise an ImportError naming the extra when torch.onnx's exporter lacks `onnx` or `onnxscript`."""
    try:
        import onnx  # noqa: F401  (read by torch.onnx)
    except ImportError as error:
        raise ImportError(missing_extra_message(purpose, "onnx", extra)) from error
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter translates the graph with it)
    except ImportError as error:
        raise ImportError(missing_extra_message(purpose, "onnxscript", extra)) from error


def require_runtime(mode: str) -> None:
    """Raise an ImportError naming the extra when the runtime that serves `mode` is not installed: checked
    before the export, which takes tens of seconds."""
    module = RUNTIME_MODULES[mode]
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            missing_extra_message(f"The {mode} serving mode", module, RUNTIME_EXTRAS[mode])
        ) from error


def encoder_input_names(encoder: nn.Module) -> list[str]:
    """The token inputs `[batch, seq]` the encoder's forward takes, in `ENCODER_INPUT_NAMES` order (BERT-like
    encoders: all three; DistilBERT-like: no token_type_ids)."""
    parameters = inspect.signature(encoder.forward).parameters
    return [name for name in ENCODER_INPUT_NAMES if name in parameters]


def example_encoder_inputs(encoder: nn.Module, names: list[str]) -> tuple[torch.Tensor, ...]:
    """Token inputs `[2, 8]` (int64, on the encoder's device) to trace an export with: a padded second row, so
    the attention mask's padding path is part of the graph; sizes > 1 so neither axis is specialised."""
    device = next(encoder.parameters()).device
    vocab_size = int(getattr(encoder.config, "vocab_size", 1000))
    input_ids = torch.arange(8, device=device).repeat(2, 1) % vocab_size
    attention_mask = torch.ones(2, 8, dtype=torch.long, device=device)
    attention_mask[1, 5:] = 0
    values = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": input_ids * 0}
    return tuple(values[name] for name in names)


def exported_layers(encoder: nn.Module, layers: tuple[int, ...]) -> tuple[int, ...] | None:
    """The hidden states an export of `encoder` outputs for layer-mixing heads reading `layers`: those and
    the last one (sorted); None without such heads (the graph then outputs the last layer alone)."""
    if not layers:
        return None
    return tuple(sorted({*layers, encoder.config.num_hidden_layers}))


class EncoderGraph(nn.Module):
    """The encoder as an export traces it: token inputs `[batch, seq]` as positional tensors in
    `encoder_input_names` order -> token states `[batch, seq, hidden]`, or with `layers` those hidden
    states of the same pass, stacked `[len(layers), batch, seq, hidden]`."""

    def __init__(self, encoder: nn.Module, layers: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_names = encoder_input_names(encoder)
        self.layers = layers

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return encoder_hidden_states(
            self.encoder, dict(zip(self.input_names, inputs)), self.layers, stack=True
        )


def single_input_tasks(model: Any) -> list[str]:
    """The tasks whose logits come from one encoder input (a text, or a pair encoded jointly as `[CLS] a
    [SEP] b`): `model.onnx` outputs them, in `config.tasks` order."""
    tasks = model.config.tasks
    return [name for name, spec in tasks.items() if not spec.input_kind.apart]


def pair_head_tasks(model: Any) -> list[str]:
    """The tasks whose head reads the embeddings of two texts encoded apart (pair_classification with
    pair_encoding bi): `pair_heads.onnx` outputs them. The pair tasks without a head (similarity, contrastive)
    are the cosine of the two embeddings, which the consumer computes (config.json `postprocessing`)."""
    tasks = model.config.tasks
    return [name for name, spec in tasks.items() if spec.input_kind.apart and name in model.heads]


class ModelGraph(nn.Module):
    """The model as `export_model_onnx` traces it into `model.onnx`: token inputs `[batch, seq]` -> the
    embeddings `[batch, embedding_size]` and the logits of every `single_input_tasks` task (`[batch, n]`,
    token tasks `[batch, seq, n_tags]`), in `config.tasks` order. The model's own forward computes everything
    after the encoder (one encoder pass: with layer-mixing heads it gives their hidden states and the last
    layer)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.tasks = single_input_tasks(model)
        self.layers = exported_layers(model.encoder, model.mixed_layers(self.tasks))
        self.encoder_graph = EncoderGraph(model.encoder, self.layers)
        with (
            torch.no_grad()
        ):  # constants of the graph: label-text tasks serve the labels they were saved with
            self.label_embeddings = {
                name: model.embed_label_texts(spec.task_type.label_texts(spec))
                for name, spec in model.config.tasks.items()
                if name in self.tasks and spec.task_type.embeds_label_texts
            }

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states = self.encoder_graph(*inputs)
        attention_mask = inputs[self.encoder_graph.input_names.index("attention_mask")]
        if not self.tasks:  # pair tasks encoded apart only: the embedding is the whole output
            return (self.model.project(self.model.pooling(states, attention_mask)),)
        if self.layers is None:
            encoder_outputs = {"last_hidden_state": states}
        else:
            hidden_states = dict(zip(self.layers, states.unbind(0)))
            last = self.model.config.encoder_config.num_hidden_layers
            encoder_outputs = {"last_hidden_state": hidden_states[last], "hidden_states": hidden_states}
        output = self.model(
            attention_mask=attention_mask,
            encoder_outputs=encoder_outputs,
            tasks=self.tasks,
            label_embeddings=self.label_embeddings,
        )
        return (output.embeddings, *(output[f"{name}_logits"] for name in self.tasks))


class PairHeadsGraph(nn.Module):
    """The heads of `pair_head_tasks` as `export_model_onnx` traces them into `pair_heads.onnx`:
    `embeddings` and `pair_embeddings` `[batch, embedding_size]` (model.onnx's `embeddings` of each pair's
    first and of its second text) -> each task's logits `[batch, n]`, computed by the task type as forward
    computes them from the two texts' embeddings."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.tasks = pair_head_tasks(model)
        self.specs = {name: model.config.tasks[name] for name in self.tasks}
        # The heads alone: holding the model would make every encoder weight an input of the traced graph.
        self.heads = nn.ModuleDict({name: model.heads[name] for name in self.tasks})

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embeddings, pair_embeddings = inputs
        rows = torch.arange(embeddings.shape[0], device=embeddings.device)  # pair i belongs to row i
        features = EncoderFeatures(None, None, embeddings, pair_embeddings, rows)
        return tuple(
            spec.task_type.logits(self.heads[name], spec, features) for name, spec in self.specs.items()
        )


class _DropRecords(logging.Filter):
    """Drops log records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def _quiet_export_notes() -> Iterator[None]:
    """For the duration of one export / quantisation: drop the notes the exporter's graph library and ONNX
    Runtime's quantiser log about their own internals (an empty attribute list typed by default; the
    quantiser's advice to pre-process image models), which the user can do nothing about."""
    notes = _DropRecords(("Attribute type is ambiguous", "Please consider to run pre-processing"))
    loggers = [logging.getLogger(), logging.getLogger("onnx_ir._convenience")]
    for logger in loggers:
        logger.addFilter(notes)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(notes)


def export_onnx_graph(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    path: Path,
    dynamic_axes: tuple[str, ...] = ("batch", "sequence"),
) -> Path:
    """Write `module` (eval mode, positional inputs) to the single ONNX file `path` with torch.onnx's exporter
    (torch.export based), the leading axes of every input dynamic and named `dynamic_axes` (token inputs
    `[batch, seq]`; embeddings `[batch, size]` take `("batch",)`)."""
    dims = {axis: torch.export.Dim(name) for axis, name in enumerate(dynamic_axes)}
    # The graphs' forward takes `*inputs`: one varargs parameter whose shapes are a tuple, one per input.
    dynamic_shapes = {"inputs": tuple(dict(dims) for _ in example_inputs)}
    with torch.no_grad(), warnings.catch_warnings(), _quiet_export_notes():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes are not the user's
        torch.onnx.export(
            module.eval(),
            example_inputs,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            external_data=False,  # one self-contained file (graphs up to 2 GB)
            dynamo=True,
            verbose=False,
        )
    return path


MODEL_GRAPH_FILE = "model.onnx"
PAIR_HEADS_GRAPH_FILE = "pair_heads.onnx"
# What config.json keeps of a saved model's config in an export: the folder holds neither the torch weights
# nor the code files that `auto_map` and `custom_pipelines` name (AutoModel would fail on a missing file).
EXPORT_DROPPED_CONFIG_KEYS = ("auto_map", "custom_pipelines")


def export_model_onnx(model: Any, directory: str | os.PathLike[str]) -> Path:
    """Write `model.onnx` (see `ModelGraph`; inputs named as the tokenizer's outputs, outputs `embeddings`
    and `<task>_logits` of the tasks that read one input), with bi-encoded pair tasks `pair_heads.onnx` (see
    `PairHeadsGraph`), `config.json` (the model's, plus `onnx_export`: the graphs' inputs and outputs, and
    `postprocessing`: per task, where its output is and how to decode it) and the tokenizer (truncating at
    `max_seq_length`) to `directory`: all that ONNX Runtime or OpenVINO need to serve every task without this
    package or torch (docs/onnx.md). Returns the path of `model.onnx`."""
    require_onnx_exporter("export_onnx")
    tokenizer = model.tokenizer  # before any work: a model without one cannot be served from the folder
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    graphs: dict[str, dict[str, list[str]]] = {}
    was_training = model.training
    try:
        graph = ModelGraph(model)
        names = graph.encoder_graph.input_names
        outputs = ["embeddings", *(f"{name}_logits" for name in graph.tasks)]
        example = example_encoder_inputs(model.encoder, names)
        export_onnx_graph(graph, example, names, outputs, directory / MODEL_GRAPH_FILE)
        graphs[MODEL_GRAPH_FILE] = {"inputs": names, "outputs": outputs}
        pair_graph = PairHeadsGraph(model)
        if pair_graph.tasks:
            with torch.no_grad():
                embeddings = graph(*example)[0]  # two rows: neither axis specialised
            pair_names = ["embeddings", "pair_embeddings"]
            pair_outputs = [f"{name}_logits" for name in pair_graph.tasks]
            path = directory / PAIR_HEADS_GRAPH_FILE
            export_onnx_graph(
                pair_graph, (embeddings, embeddings.flip(0)), pair_names, pair_outputs, path, ("batch",)
            )
            graphs[PAIR_HEADS_GRAPH_FILE] = {"inputs": pair_names, "outputs": pair_outputs}
    finally:
        model.train(was_training)
    config = json.loads(model.config.to_json_string())
    for key in EXPORT_DROPPED_CONFIG_KEYS:
        config.pop(key, None)
    config["max_seq_length"] = model.max_seq_length
    config["onnx_export"] = {"graphs": graphs}
    config["postprocessing"] = {
        name: {**exported_output(model, name), **spec.task_type.postprocessing(spec)}
        for name, spec in model.config.tasks.items()
    }
    with open(directory / "config.json", "w", encoding="utf-8") as file:
        json.dump(config, file, indent=2, sort_keys=True)
        file.write("\n")
    save_tokenizer(tokenizer, directory, model.max_seq_length)
    return directory / MODEL_GRAPH_FILE


def exported_output(model: Any, name: str) -> dict[str, str]:
    """Where task `name`'s output is in an export: its `input` ("text"; "pair": each text encoded on its
    own; "pair_joint": the pair as one `[CLS] a [SEP] b` input), the `graph` file and its `output`. The pair
    tasks without a head (similarity, contrastive) read model.onnx's `embeddings` of both texts."""
    kind = model.config.tasks[name].input_kind
    if not kind.apart:
        return {
            "input": "pair_joint" if kind.joint else "text",
            "graph": MODEL_GRAPH_FILE,
            "output": f"{name}_logits",
        }
    if name in pair_head_tasks(model):
        return {"input": "pair", "graph": PAIR_HEADS_GRAPH_FILE, "output": f"{name}_logits"}
    return {"input": "pair", "graph": MODEL_GRAPH_FILE, "output": "embeddings"}


# ------------------------------------------------------------------ int8 graph with fp32 outliers
class OutlierSplitLinear(nn.Module):
    """For the ONNX int8 graph: a frozen `nn.Linear` `[..., in] -> [..., out]` written as two products,
    `(x with its outlier channels zeroed) @ W.T`, which ONNX Runtime's dynamic quantisation turns into an
    int8 product (its weight is a constant), plus `x[..., outliers] @ W[:, outliers].T` in fp32 (its weight
    is gathered at run time, so the quantiser leaves it alone). The outliers are the `outlier_channels`
    input channels of largest magnitude in each batch: quantised with the rest, they would stretch the
    activation scale for every other channel (as in `Int8DynamicLinear`)."""

    def __init__(self, linear: nn.Linear, outlier_channels: int) -> None:
        super().__init__()
        self.register_buffer("weight_t", linear.weight.detach().float().t().contiguous())  # [in, out]
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.outlier_channels = min(outlier_channels, linear.in_features)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.outlier_channels:
            magnitude = hidden.abs().amax(dim=tuple(range(hidden.dim() - 1)))  # [in]
            channels = magnitude.topk(self.outlier_channels).indices
            keep = torch.ones_like(magnitude).index_fill(0, channels, 0.0)
            out = torch.matmul(hidden * keep, self.weight_t)
            out = out + torch.matmul(
                hidden.index_select(-1, channels), self.weight_t.index_select(0, channels)
            )
        else:
            out = torch.matmul(hidden, self.weight_t)
        return out if self.bias is None else out + self.bias


def outlier_split_copy(encoder: nn.Module, outlier_channels: int) -> nn.Module:
    """A copy of `encoder` whose `nn.Linear` layers are `OutlierSplitLinear`; other tensors are shared."""
    return copy_replacing_linears(encoder, lambda linear: OutlierSplitLinear(linear, outlier_channels))


def quantize_onnx_int8(path: Path) -> Path:
    """ONNX Runtime's dynamic quantisation of the graph at `path`: every MatMul with a constant weight becomes
    an int8 product (weights per output channel, signed; activations per call, unsigned). Returns the new
    file's path, beside `path`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # checked by require_runtime

    quantized = path.with_name(path.stem + "_int8.onnx")
    with _quiet_export_notes():
        quantize_dynamic(
            str(path),
            str(quantized),
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
    return quantized


# ------------------------------------------------------------------ sessions
class RuntimeEncoderStates:
    """An encoder graph compiled by a runtime, called like the other serving encoders: token inputs
    `[batch, seq]` (torch) -> token states `[batch, seq, hidden]` (float32, on the model's device); with
    `layers`, those hidden states stacked `[len(layers), batch, seq, hidden]`.

    `run(feed) -> states` takes `{input name: int64 numpy array}` and returns a float32 numpy array; inputs the
    tokenizer did not give (token_type_ids) are fed as zeros, the encoder's own default. A graph exported
    for layer-mixing heads returns the hidden states `exported` (`exported_layers`, the last included)
    stacked; one exported without (`exported` None) only the last layer.
    """

    def __init__(
        self,
        run: Callable[[dict], Any],
        input_names: list[str],
        device: torch.device,
        name: str,
        exported: tuple[int, ...] | None = None,
        last: int | None = None,
    ):
        self.run = run
        self.input_names = input_names
        self.device = device
        self.name = name
        self.exported = exported
        self.last = last

    def __call__(
        self, encoder_inputs: dict[str, torch.Tensor], layers: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        wanted = (self.last,) if layers is None else tuple(layers)
        available = self.exported or (self.last,)
        missing = [index for index in wanted if index not in available]
        if missing:
            raise RuntimeError(
                f"The {self.name} graph was exported with hidden states {list(available)}, not {missing}: a "
                "head mixing those layers was added after optimize_for_inference. Call "
                "model.optimize_for_inference(...) again."
            )
        input_ids = encoder_inputs["input_ids"]
        feed = {}
        for name in self.input_names:
            value = encoder_inputs.get(name)
            if value is None:
                value = torch.zeros_like(input_ids)
            feed[name] = value.detach().to("cpu", torch.int64).contiguous().numpy()
        states = torch.from_numpy(self.run(feed))
        if self.exported is not None:
            states = states[[self.exported.index(index) for index in wanted]]
            if layers is None:
                states = states[0]
        elif layers is not None:
            states = states.unsqueeze(0)
        return states.to(self.device)

    def __repr__(self) -> str:
        return f"RuntimeEncoderStates({self.name})"


def onnxruntime_session(path: Path, threads: int, device: torch.device) -> Callable[[dict], Any]:
    """An ONNX Runtime session of the graph at `path` (read into memory: the file may go afterwards) on
    `threads` intra-op threads: CPU, or CUDA for a model on a GPU (needs onnxruntime-gpu). Returns `run`."""
    import onnxruntime  # checked by require_runtime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its notes about unused initializers are not the user's
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise RuntimeError(
                "The model is on a GPU, but this onnxruntime has no CUDAExecutionProvider: install "
                "onnxruntime-gpu, or move the model to CPU first."
            )
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    # Only the inputs the graph kept (an exporter drops inputs the computation does not read).
    inputs = [node.name for node in session.get_inputs()]
    return lambda feed: session.run(None, {name: feed[name] for name in inputs})[0]


def openvino_session(path: Path, threads: int, precision: str | None) -> Callable[[dict], Any]:
    """An OpenVINO CPU compilation of the graph at `path` with inference precision `precision` ("f32",
    "bf16", or None for OpenVINO's own choice: bf16 where the CPU has it), `threads` threads, one stream (one
    caller). Returns `run`."""
    import openvino  # checked by require_runtime

    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)
    inputs = [node.get_any_name() for node in compiled.inputs]  # the graph's own, as for ONNX Runtime
    return lambda feed: request.infer({name: feed[name] for name in inputs})[output]


def build_runtime_encoder(
    encoder: nn.Module,
    mode: str,
    threads: int | None = None,
    outlier_channels: int = INT8_OUTLIER_CHANNELS,
    layers: tuple[int, ...] = (),
) -> RuntimeEncoderStates:
    """Export `encoder` (as it is now) to ONNX in a scratch folder and load it into the runtime of `mode` (one
    of `RUNTIME_MODES`); the session keeps its own copy of the weights. With `layers` (the hidden states
    layer-mixing heads read), the graph outputs those and the last layer, stacked, from its one pass."""
    weight = next(encoder.parameters())
    device = weight.device
    if weight.dtype != torch.float32:
        raise ValueError(
            f"The {mode} serving mode exports a float32 encoder and sets the precision itself; this model is "
            f"{weight.dtype}: load it in float32."
        )
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")
    if device.type != "cpu" and mode != "onnx":
        raise ValueError(
            f"The {mode} serving mode runs on CPU; this model is on {device}. Move it to CPU first (on a GPU, "
            "the onnx mode uses ONNX Runtime's CUDA provider)."
        )
    require_onnx_exporter(f"The {mode} serving mode", RUNTIME_EXTRAS[mode])
    require_runtime(mode)  # now, not after the export's tens of seconds
    names = encoder_input_names(encoder)
    exported = exported_layers(encoder, layers)
    graph = EncoderGraph(
        outlier_split_copy(encoder, outlier_channels) if mode == "onnx_int8" else encoder, exported
    )
    with tempfile.TemporaryDirectory(prefix="multitask_encoder_onnx_") as scratch:
        path = export_onnx_graph(
            graph,
            example_encoder_inputs(encoder, names),
            names,
            ["token_states" if exported is None else "hidden_states"],
            Path(scratch) / "encoder.onnx",
        )
        if mode == "onnx_int8":
            path = quantize_onnx_int8(path)
        if mode in ("onnx", "onnx_int8"):
            run = onnxruntime_session(path, threads, device)
        else:
            run = openvino_session(path, threads, "bf16" if mode == "openvino_bf16" else "f32")
    last = encoder.config.num_hidden_layers
    return RuntimeEncoderStates(run, names, device, f"{mode}, {threads} threads", exported, last)
