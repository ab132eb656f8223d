"""Serving modes of `MultiTaskEncoderModel.encode` / `.predict`: how texts are batched and which encoder runs.

    texts ─► windows of `window` texts ─► tokenise, sort longest first ─► batches ─► encoder ─► heads
                                                                   │                  │
                                          `batch_size` texts (exact) or         eager fp32 (exact, token_budget),
                                          <= `token_budget` padded tokens        torch.compile (compiled),
                                                                                 bf16 matrix products (bf16),
                                                                                 int8 linear layers (int8)

`model.optimize_for_inference(mode)` picks a mode; the default ("exact") is the plain eager fp32 path.

| mode           | batches                                     | encoder                          | vs "exact"              |
|----------------|---------------------------------------------|----------------------------------|-------------------------|
| `exact`        | `batch_size` texts                          | eager, fp32                      | (reference)             |
| `token_budget` | <= `token_budget` padded tokens             | eager, fp32                      | same math               |
| `compiled`     | token budget                                | `torch.compile`, dynamic shapes  | float tolerance         |
| `bf16`         | token budget                                | bf16 autocast (see below)        | measured, not exact     |
| `int8`         | token budget                                | int8 linear layers (see below)   | measured, not exact     |
| `onnx`         | token budget                                | ONNX Runtime, fp32               | float tolerance         |
| `onnx_int8`    | token budget                                | ONNX Runtime, int8 products      | measured, not exact     |
| `openvino`     | token budget                                | OpenVINO, fp32                   | float tolerance         |
| `openvino_bf16`| token budget                                | OpenVINO, bf16                   | measured, not exact     |

Whatever the mode, texts are tokenised and sorted `window` at a time, so memory does not grow with the
number of texts (only the results do). A list no longer than one window is batched exactly as a single sort.

bf16 runs the encoder under `torch.autocast(dtype=torch.bfloat16)`: matrix products in bf16 with float32
accumulation, LayerNorm, softmax and the pooled output in float32. It pays where the hardware multiplies bf16
natively (CPUs with AMX or AVX512-BF16, recent GPUs); elsewhere bf16 is emulated and slower than fp32, so the
mode warns.

The runtime modes (ONNX Runtime, OpenVINO: optional extras, imported only inside try blocks) export the
encoder with torch.onnx and serve that graph; see the "runtimes" section below.

The int8 and runtime encoders are built from the weights as they are when `optimize_for_inference` runs. Changing the
weights or the device afterwards makes encode/predict raise instead of serving stale numbers; call
`optimize_for_inference` again. (The compiled encoder reads the live weights.)

Like the modeling file, this file is copied next to the weights by `save_pretrained` and imports only torch,
transformers and the standard library (the optional runtimes inside try blocks, where they are used).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# What a tokenizer gives the model (the third only for encoders with segment embeddings, e.g. BERT).
MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Modes served by an optional runtime (ONNX Runtime, OpenVINO) from an ONNX export of the encoder (see below).
RUNTIME_MODES = ("onnx", "onnx_int8", "openvino", "openvino_bf16")
# Modes the full bench (bench/serve_speed.py: cosine >= 0.99 to exact for EVERY AG News and SST test text,
# accuracy within 0.3 points) measured outside the guard, with the measured reason: optimize_for_inference
# refuses them. Fill from that run; a mode whose guard depends on the CPU warns instead (bf16 where emulated).
MODES_OUTSIDE_GUARD: dict[str, str] = {
    "int8": "on a 2-core Intel Xeon (AMX, AVX512-BF16), 2 of 9,810 AG News and SST test texts fell below cosine "
    "0.99 to exact (min 0.984); onnx_int8 (within the guard) and bf16 / openvino_bf16 serve the same CPUs",
}
# Padded tokens per batch in the token-budget modes: about 64 texts of 64 tokens, where the encoder's matrix
# products are already large enough to run near the machine's peak on CPU (see bench/serve_speed.py).
DEFAULT_TOKEN_BUDGET = 4096
# Texts tokenised and sorted at a time. Sorting a window pads almost as little as sorting everything, and the
# tokenizer's per-text objects (ids, offsets, word ids) for one window are a few MB.
STREAM_WINDOW = 4096
# compiled: compilations allowed per model (dynamic shapes need 1-2: any batch, any length); beyond it torch
# runs new shapes eagerly (same numbers, slower). With dynamic shapes, lengths need no padding to buckets
# for fewer graphs (padding would only add work).
COMPILE_RECOMPILE_LIMIT = 8
# int8: input channels per linear layer, per batch, that bypass quantisation (BERT-style encoders have a few
# channels with values 10-30x larger than the rest; quantised with them, all other channels lose precision).
INT8_OUTLIER_CHANNELS = 16
OUTLIER_SAMPLE_ROWS = 512  # tokens per batch looked at to find them


@dataclass
class ServingPlan:
    """What `optimize_for_inference` set up: how to batch, and the encoder to run in place of `model.encoder`.

    `run_encoder(encoder_inputs) -> token states [batch, seq, hidden]` is None in the eager fp32 modes;
    `run_encoder(encoder_inputs, layers)` gives the hidden states `layers` (indices: 0 = the embedding
    layer's output, N = the last layer) of the same single pass, one tensor each or (runtime graphs) stacked
    `[len(layers), batch, seq, hidden]` (`split_layers` reads either)
    (what heads that mix layers read).
    `weights_version` and `device` record the encoder's state when a serving encoder holding its own copy of
    the weights (int8) was made: the staleness check. Other serving encoders read the live weights and leave
    `device` None: nothing can go stale.
    """

    mode: str = "exact"
    token_budget: int | None = None
    window: int = STREAM_WINDOW
    run_encoder: Callable[..., torch.Tensor] | None = None
    weights_version: int = 0
    device: torch.device | None = None

    def check_fresh(self, encoder: nn.Module) -> None:
        """Raise when the encoder's weights or device changed since the serving encoder was built from them."""
        if self.device is None:
            return
        if weights_version(encoder) != self.weights_version:
            raise RuntimeError(
                f"The encoder's weights changed after optimize_for_inference({self.mode!r}); the {self.mode} "
                "encoder still holds the old ones. Call model.optimize_for_inference(...) again."
            )
        device = next(encoder.parameters()).device
        if device != self.device:
            raise RuntimeError(
                f"The model moved from {self.device} to {device} after optimize_for_inference({self.mode!r}). "
                "Call model.optimize_for_inference(...) again on the new device."
            )


def weights_version(module: nn.Module) -> int:
    """Sum of the in-place modification counters of `module`'s parameters: changes whenever an optimizer step,
    `load_state_dict` or any in-place edit touches a weight."""
    return sum(parameter._version for parameter in module.parameters())


# ---------------------------------------------------------------------------------------------- batching
def plan_batches(lengths: list[int], batch_size: int, token_budget: int | None) -> list[tuple[int, int]]:
    """Split `lengths` (token counts, sorted longest first) into consecutive `(start, end)` batches.

    Without a token budget, every batch holds `batch_size` texts. With one, a batch holds as many texts as fit
    in `token_budget` padded tokens (count x length of its first, longest text), at least one; a text
    longer than the budget gets a batch of its own.
    """
    batches = []
    start = 0
    while start < len(lengths):
        if token_budget is None:
            count = batch_size
        else:
            count = max(1, token_budget // lengths[start])
        end = min(len(lengths), start + count)
        batches.append((start, end))
        start = end
    return batches


@dataclass
class TextBatch:
    """One padded batch of texts, as `MultiTaskEncoderModel.preprocess` yields them.

    `indices` are the rows' positions in the texts given; `inputs` the padded model inputs `[batch, seq]` on
    the model's device; `texts` the rows' texts and `encodings` their tokenizer `Encoding`s (word ids, and
    character offsets when they were asked for), both in row order.
    """

    indices: list[int]
    inputs: dict[str, torch.Tensor]
    texts: list[str]
    encodings: list[Any]


def iter_sorted_batches(
    texts: list[str],
    tokenize: Callable[[list[str], bool], tuple[list[dict[str, list[int]]], list[Any]]],
    pad: Callable[..., Any],
    device: torch.device,
    batch_size: int,
    with_offsets: bool,
    plan: ServingPlan,
) -> Iterator[TextBatch]:
    """Every text once, in `TextBatch`es: `window` texts at a time are tokenised (`tokenize(texts,
    with_offsets) -> (unpadded features, encodings)`) and sorted longest first; batches follow
    `plan_batches` and are padded by `pad` (the tokenizer's). `texts` must already be checked."""
    window = plan.window
    if plan.token_budget is None:  # whole batches per window: no short batch in the middle of a long list
        window = max(1, -(-window // batch_size)) * batch_size
    for window_start in range(0, len(texts), window):
        window_texts = texts[window_start : window_start + window]
        features, encodings = tokenize(window_texts, with_offsets)
        order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
        lengths = [len(features[i]["input_ids"]) for i in order]
        for start, end in plan_batches(lengths, batch_size, plan.token_budget):
            rows = order[start:end]
            padded = pad([features[i] for i in rows], return_tensors="pt")
            yield TextBatch(
                indices=[window_start + i for i in rows],
                inputs={key: value.to(device) for key, value in padded.items()},
                texts=[window_texts[i] for i in rows],
                encodings=[encodings[i] for i in rows],
            )


# ---------------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class ServingOptions:
    """The knobs of `optimize_for_inference` a mode's builder may read (see `build_serving_plan`)."""

    recompile_limit: int = COMPILE_RECOMPILE_LIMIT
    outlier_channels: int = INT8_OUTLIER_CHANNELS
    threads: int | None = None
    layers: tuple[int, ...] = ()


def serve_token_budget(encoder: nn.Module, plan: ServingPlan, options: ServingOptions) -> None:
    """token_budget: the live fp32 encoder; only the batching differs from exact."""


def serve_compiled(encoder: nn.Module, plan: ServingPlan, options: ServingOptions) -> None:
    plan.run_encoder = compile_encoder(encoder, options.recompile_limit)


def serve_bf16(encoder: nn.Module, plan: ServingPlan, options: ServingOptions) -> None:
    weight = next(encoder.parameters())
    if weight.dtype != torch.float32:
        raise ValueError(
            "The bf16 serving mode runs a float32 model's encoder under bf16 autocast; this model is "
            f"{weight.dtype} already, so the exact mode serves it in that dtype."
        )
    problem = native_bf16_missing(weight.device)
    if problem:
        warnings.warn(
            f"The bf16 serving mode will likely be slower than exact here: {problem}.", stacklevel=4
        )
    plan.run_encoder = Bf16EncoderStates(encoder)


def serve_int8(encoder: nn.Module, plan: ServingPlan, options: ServingOptions) -> None:
    plan.run_encoder = Int8EncoderStates(quantize_encoder_int8(encoder, options.outlier_channels))
    plan.device = next(encoder.parameters()).device
    plan.weights_version = weights_version(encoder)


def serve_runtime(encoder: nn.Module, plan: ServingPlan, options: ServingOptions) -> None:
    problem = native_bf16_missing(torch.device("cpu")) if plan.mode == "openvino_bf16" else None
    if problem:
        warnings.warn(
            f"The openvino_bf16 serving mode will likely be slower than openvino here: {problem}.",
            stacklevel=4,
        )
    plan.run_encoder = build_runtime_encoder(
        encoder, plan.mode, options.threads, options.outlier_channels, options.layers
    )
    plan.device = next(encoder.parameters()).device
    plan.weights_version = weights_version(encoder)


# Every mode but exact: its builder sets up the plan's serving encoder (and the staleness record when that
# encoder holds its own copy of the weights). A mode is one entry here.
SERVING_MODE_BUILDERS: dict[str, Callable[[nn.Module, ServingPlan, ServingOptions], None]] = {
    "token_budget": serve_token_budget,
    "compiled": serve_compiled,
    "bf16": serve_bf16,
    "int8": serve_int8,
    **dict.fromkeys(RUNTIME_MODES, serve_runtime),
}
SERVING_MODES = ("exact", *SERVING_MODE_BUILDERS)


def build_serving_plan(
    encoder: nn.Module,
    mode: str,
    token_budget: int | None = None,
    window: int = STREAM_WINDOW,
    recompile_limit: int = COMPILE_RECOMPILE_LIMIT,
    outlier_channels: int = INT8_OUTLIER_CHANNELS,
    threads: int | None = None,
    layers: tuple[int, ...] = (),
) -> ServingPlan:
    """The serving plan of `mode` for `encoder` (see the module docstring for the modes). `threads` is the
    runtime modes' thread count (default: `torch.get_num_threads()`). `layers`: the hidden-state indices
    the model's layer-mixing heads read, which the runtime modes' exported graph outputs besides the last
    layer (the other modes run the live encoder, which gives any layer)."""
    if mode not in SERVING_MODES:
        raise ValueError(f"Unknown serving mode {mode!r}; choose one of {list(SERVING_MODES)}.")
    if mode in MODES_OUTSIDE_GUARD:
        raise ValueError(
            f"The {mode} serving mode is not offered: it failed the accuracy guard of every non-exact mode "
            f"(bench/serve_speed.py): {MODES_OUTSIDE_GUARD[mode]}."
        )
    if token_budget is not None and token_budget < 1:
        raise ValueError(f"token_budget must be >= 1 padded tokens, got {token_budget}.")
    if window < 1:
        raise ValueError(f"window must be >= 1 texts, got {window}.")
    if mode == "exact":
        if token_budget is not None:
            raise ValueError("The exact mode batches by count (batch_size); token_budget needs another mode.")
        return ServingPlan(window=window)
    plan = ServingPlan(mode=mode, token_budget=token_budget or DEFAULT_TOKEN_BUDGET, window=window)
    options = ServingOptions(recompile_limit, outlier_channels, threads, layers)
    SERVING_MODE_BUILDERS[mode](encoder, plan, options)
    return plan


def encoder_hidden_states(
    encoder: nn.Module,
    encoder_inputs: dict[str, torch.Tensor],
    layers: tuple[int, ...] | None,
    stack: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """`encoder(**inputs)`'s `last_hidden_state` `[batch, seq, hidden]` (`layers` None), or the hidden states
    `layers` of the same pass (0 = the embedding layer's output): one `[batch, seq, hidden]` tensor each, or
    with `stack` (a graph export needs one output) stacked `[len(layers), batch, seq, hidden]`. Unstacked
    by default: the copy into one tensor cost a layer-mixing model ~5% of `predict` in the bf16 mode."""
    if layers is None:
        return encoder(**encoder_inputs).last_hidden_state
    hidden_states = encoder(**encoder_inputs, output_hidden_states=True).hidden_states
    selected = tuple(hidden_states[index] for index in layers)
    return torch.stack(selected) if stack else selected


def split_layers(states: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The per-layer tensors of what a serving encoder gives for `layers`: a tuple, or a stacked graph output."""
    return states.unbind(0) if isinstance(states, torch.Tensor) else tuple(states)


class EncoderStates(nn.Module):
    """`encoder(**inputs)` -> `last_hidden_state` `[batch, seq, hidden]`: one tensor out, what torch.compile
    traces best and all that pooling and the heads read; with `layers`, those hidden states stacked
    (`encoder_hidden_states`)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, encoder_inputs: dict[str, torch.Tensor], layers: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        return encoder_hidden_states(self.encoder, encoder_inputs, layers)


class Bf16EncoderStates(EncoderStates):
    """`EncoderStates` under bf16 autocast on the encoder's device; the states come back as float32, so
    pooling, normalisation and the heads run in float32 as in the exact mode. Reads the live weights."""

    def forward(
        self, encoder_inputs: dict[str, torch.Tensor], layers: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        device_type = next(self.encoder.parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16):
            states = encoder_hidden_states(self.encoder, encoder_inputs, layers)
        return states.float() if layers is None else tuple(layer.float() for layer in states)


def native_bf16_missing(device: torch.device) -> str | None:
    """None when `device` multiplies bf16 natively, else why not (bf16 is then emulated: slow)."""
    if device.type == "cuda":
        with torch.cuda.device(device):  # is_bf16_supported asks about the current device
            supported = torch.cuda.is_bf16_supported(including_emulation=False)
        return None if supported else "this GPU has no bf16 units"
    if device.type != "cpu":
        return None  # other accelerators: assume the vendor's autocast knows best
    # Private torch.cpu probes (torch >= 2.3); a build without them is treated as having neither.
    has_avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return None if has_avx512_bf16 or has_amx else "this CPU has neither AMX nor AVX512-BF16"


def compile_encoder(encoder: nn.Module, recompile_limit: int = COMPILE_RECOMPILE_LIMIT) -> Callable:
    """`EncoderStates(encoder)` under `torch.compile` (inductor) with dynamic batch and sequence sizes.

    One compiled graph serves every shape (a second may appear for size-1 batches); after `recompile_limit`
    compilations torch falls back to eager for new shapes, which is slower but gives the same numbers. The
    first call compiles (tens of seconds for a 6-layer encoder on 2 cores with a cold inductor cache). The
    graph reads the live weights (no inductor `freezing`, which would bake them in as constants), so training
    or loading new weights afterwards needs no rebuild.
    """
    options: dict[str, Any] = {"dynamic": True}
    parameters = inspect.signature(torch.compile).parameters
    if "recompile_limit" in parameters:  # torch >= 2.13: the cap and the count are per compiled region
        options["recompile_limit"] = recompile_limit
        if "isolate_recompiles" in parameters:
            options["isolate_recompiles"] = True
        return torch.compile(EncoderStates(encoder), **options)
    # Older torch: the cap is a process-wide dynamo setting, raised for these calls only.
    compiled = torch.compile(EncoderStates(encoder), **options)

    def run_compiled(
        encoder_inputs: dict[str, torch.Tensor], layers: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        limit = max(torch._dynamo.config.recompile_limit, recompile_limit)
        with torch._dynamo.config.patch(recompile_limit=limit):
            return compiled(encoder_inputs, layers)

    return run_compiled


# ---------------------------------------------------------------------------------------------- int8
class Int8DynamicLinear(nn.Module):
    """A frozen `nn.Linear` `[..., in] -> [..., out]` computed with int8 matrix products (fbgemm, CPU).

    Weights: int8 per output channel, symmetric, in [-63, 63]. Activations: quantised per call to 8-bit
    asymmetric over the whole batch. 7-bit weights keep the AVX2/AVX-512 u8 x s8 pair sums (<= 2 * 255 * 64)
    inside int16, so no product saturates. The `outlier_channels` input channels with the largest magnitude in
    the batch are taken out before quantising (they would stretch the scale for every other channel) and
    multiplied in fp32 with the original weights.
    """

    def __init__(self, linear: nn.Linear, outlier_channels: int = INT8_OUTLIER_CHANNELS) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 63
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        bias = None if linear.bias is None else linear.bias.detach().float()
        with warnings.catch_warnings(), fbgemm_engine():  # deprecated in favour of torchao: no warning
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(weight, scales.double(), zero_points, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(quantized, bias)
        self.fp32_weight = linear.weight  # shared with the original layer, read only for outlier channels
        self.outlier_channels = min(outlier_channels, weight.shape[1])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1]).float()
        if self.outlier_channels:
            # Outlier channels are large in nearly every token, so ~512 evenly spaced rows find them at a
            # fraction of the cost of a full pass over the batch (this layer's input is memory-bound work).
            sample = flat[:: max(1, flat.shape[0] // OUTLIER_SAMPLE_ROWS)]
            magnitude = torch.maximum(sample.amax(dim=0), sample.amin(dim=0).neg())
            channels = magnitude.topk(self.outlier_channels).indices
            outliers = flat.index_select(1, channels)
            flat = flat.index_fill(1, channels, 0.0)
        out = torch.ops.quantized.linear_dynamic(flat, self._packed, False)
        if self.outlier_channels:
            out = out.addmm_(outliers, self.fp32_weight.index_select(1, channels).t())
        return out.reshape(*hidden.shape[:-1], out.shape[-1])


@contextlib.contextmanager
def fbgemm_engine() -> Iterator[None]:
    """Run the block with torch's quantized engine on fbgemm kernels ("x86" unless "fbgemm" is already set),
    then restore the caller's engine: serving int8 changes no process-wide setting."""
    previous = torch.backends.quantized.engine
    if previous in ("x86", "fbgemm"):
        yield
        return
    torch.backends.quantized.engine = "x86"
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


class Int8EncoderStates(EncoderStates):
    """`EncoderStates` of an int8 encoder (`quantize_encoder_int8`), run on fbgemm kernels."""

    def forward(
        self, encoder_inputs: dict[str, torch.Tensor], layers: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        with fbgemm_engine():
            return super().forward(encoder_inputs, layers)


def int8_supported() -> str | None:
    """None when this torch build can run `Int8DynamicLinear`, else the reason it cannot."""
    engines = torch.backends.quantized.supported_engines
    if not any(engine in engines for engine in ("x86", "fbgemm")):
        return f"this torch build has no fbgemm/x86 quantized engine (it has {engines})"
    if not hasattr(torch.ops.quantized, "linear_dynamic"):
        return "this torch build has no quantized::linear_dynamic kernel"
    return None


def quantize_encoder_int8(encoder: nn.Module, outlier_channels: int = INT8_OUTLIER_CHANNELS) -> nn.Module:
    """A copy of `encoder` whose `nn.Linear` layers are `Int8DynamicLinear`; everything else (embeddings,
    LayerNorms, attention) is shared with `encoder`, not copied. CPU only."""
    problem = int8_supported()
    if problem:
        raise RuntimeError(f"The int8 serving mode is not available: {problem}.")
    if next(encoder.parameters()).device.type != "cpu":
        raise ValueError("The int8 serving mode runs on CPU (fbgemm kernels); move the model to CPU first.")
    if next(encoder.parameters()).dtype != torch.float32:
        raise ValueError("The int8 serving mode quantises fp32 weights; load the model in float32 first.")
    # deepcopy with every tensor pre-registered in the memo copies the module tree but shares the tensors.
    shared = {id(tensor): tensor for tensor in itertools.chain(encoder.parameters(), encoder.buffers())}
    quantized = copy.deepcopy(encoder, memo=shared)
    for module in list(quantized.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, Int8DynamicLinear(child, outlier_channels))
    return quantized.eval()


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


class ModelGraph(nn.Module):
    """The whole model as `export_model_onnx` traces it: token inputs `[batch, seq]` -> the embeddings
    `[batch, embedding_size]` and every task's logits (`[batch, n]`, token tasks `[batch, seq, n_tags]`), in
    `config.tasks` order. The model's own forward computes everything after the encoder (one encoder pass:
    with layer-mixing heads it gives their hidden states and the last layer)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.layers = exported_layers(model.encoder, model.mixed_layers())
        self.encoder_graph = EncoderGraph(model.encoder, self.layers)
        with (
            torch.no_grad()
        ):  # constants of the graph: label-text tasks serve the labels they were saved with
            self.label_embeddings = {
                name: model.embed_label_texts(spec.task_type.label_texts(spec))
                for name, spec in model.config.tasks.items()
                if spec.task_type.embeds_label_texts
            }

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states = self.encoder_graph(*inputs)
        attention_mask = inputs[self.encoder_graph.input_names.index("attention_mask")]
        if self.layers is None:
            encoder_outputs = {"last_hidden_state": states}
        else:
            hidden_states = dict(zip(self.layers, states.unbind(0)))
            last = self.model.config.encoder_config.num_hidden_layers
            encoder_outputs = {"last_hidden_state": hidden_states[last], "hidden_states": hidden_states}
        output = self.model(
            attention_mask=attention_mask,
            encoder_outputs=encoder_outputs,
            label_embeddings=self.label_embeddings,
        )
        return (output.embeddings, *(output[f"{name}_logits"] for name in self.model.config.tasks))


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
) -> Path:
    """Write `module` (eval mode, positional `[batch, seq]` inputs) to the single ONNX file `path` with
    torch.onnx's exporter (torch.export based), batch and sequence axes dynamic in every input and output."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # The graphs' forward takes `*inputs`: one varargs parameter whose shapes are a tuple, one per input.
    dynamic_shapes = {"inputs": tuple({0: batch, 1: sequence} for _ in example_inputs)}
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


def export_model_onnx(model: Any, directory: str | os.PathLike[str]) -> Path:
    """Write `model.onnx` (the whole model, see `ModelGraph`; inputs named as the tokenizer's outputs, outputs
    `embeddings` and `<task>_logits`), `config.json` (tasks, labels, pooling, max_seq_length) and the
    tokenizer to `directory`: all that ONNX Runtime or OpenVINO need to serve it without this package or
    its torch code. Returns the path of `model.onnx`."""
    require_onnx_exporter("export_onnx")
    tokenizer = model.tokenizer  # before any work: a model without one cannot be served from the folder
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    graph = ModelGraph(model)
    names = graph.encoder_graph.input_names
    output_names = ["embeddings", *(f"{name}_logits" for name in model.config.tasks)]
    was_training = model.training
    try:
        path = export_onnx_graph(
            graph, example_encoder_inputs(model.encoder, names), names, output_names, directory / "model.onnx"
        )
    finally:
        model.train(was_training)
    model.config.to_json_file(directory / "config.json")
    tokenizer.save_pretrained(directory)
    return path


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
    shared = {id(tensor): tensor for tensor in itertools.chain(encoder.parameters(), encoder.buffers())}
    split = copy.deepcopy(encoder, memo=shared)
    for module in list(split.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, OutlierSplitLinear(child, outlier_channels))
    return split.eval()


def quantize_onnx_int8(path: Path) -> Path:
    """ONNX Runtime's dynamic quantisation of the graph at `path`: every MatMul with a constant weight becomes
    an int8 product (weights per output channel, signed; activations per call, unsigned). Returns the new
    file's path, beside `path`."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as error:
        raise ImportError(
            missing_extra_message("The onnx_int8 serving mode", "onnxruntime", "onnx")
        ) from error
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
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(missing_extra_message("The onnx serving modes", "onnxruntime", "onnx")) from error
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
    try:
        import openvino
    except ImportError as error:
        raise ImportError(
            missing_extra_message("The openvino serving modes", "openvino", "openvino")
        ) from error
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
    extra = RUNTIME_EXTRAS[mode]
    require_onnx_exporter(f"The {mode} serving mode", extra)
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
