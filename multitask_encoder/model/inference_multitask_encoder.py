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
encoder with torch.onnx and serve that graph: onnx_multitask_encoder.py.

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
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    from .onnx_multitask_encoder import build_runtime_encoder  # the export needs this file's encoders

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
    with warnings.catch_warnings():
        # The first torch.compile imports inductor, whose modules use deprecated torch.jit decorators: torch's
        # own deprecation notes, not the user's to act on.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        compiled = torch.compile(EncoderStates(encoder), **options)
    if "recompile_limit" in parameters:
        return compiled
    # Older torch: the cap is a process-wide dynamo setting, raised for these calls only.

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
    return copy_replacing_linears(encoder, lambda linear: Int8DynamicLinear(linear, outlier_channels))


def copy_replacing_linears(encoder: nn.Module, replace: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """A copy of `encoder` (eval mode) whose `nn.Linear` layers are `replace(linear)`; other tensors are shared."""
    # deepcopy with every tensor pre-registered in the memo copies the module tree but shares the tensors.
    shared = {id(tensor): tensor for tensor in itertools.chain(encoder.parameters(), encoder.buffers())}
    copied = copy.deepcopy(encoder, memo=shared)
    for module in list(copied.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, replace(child))
    return copied.eval()
