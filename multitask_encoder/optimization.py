"""Which encoder parameters train, and at what learning rate: freezing (whole encoder, embeddings, bottom N
layers), separate learning rates for heads and encoder, and layer-wise learning-rate decay."""

from __future__ import annotations

from torch import nn


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers, bottom first (BERT `encoder.layer`, DistilBERT
    `transformer.layer`, ...): the ModuleList whose length is the config's number of layers."""
    num_layers = encoder.config.num_hidden_layers
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise ValueError(f"Cannot find the {num_layers} transformer layers of {type(encoder).__name__}.")


def encoder_embeddings(encoder: nn.Module) -> nn.Module:
    """The encoder's input embedding block (word, position, token-type embeddings and their LayerNorm)."""
    embeddings = getattr(encoder, "embeddings", None)
    return embeddings if isinstance(embeddings, nn.Module) else encoder.get_input_embeddings()


def apply_freezing(
    model: nn.Module,
    freeze_encoder: bool = False,
    freeze_embeddings: bool = False,
    freeze_bottom_layers: int = 0,
) -> None:
    """Turn off gradients for the chosen encoder parts (heads and projection always train)."""
    encoder = model.encoder
    if freeze_encoder:
        encoder.requires_grad_(False)
        if not any(parameter.requires_grad for parameter in model.parameters()):
            raise ValueError(
                f"freeze_encoder leaves nothing to train: the model's tasks {list(model.config.tasks)} have no "
                "head (they score the embedding itself, so they train the encoder); drop freeze_encoder."
            )
        return
    if freeze_embeddings:
        encoder_embeddings(encoder).requires_grad_(False)
    if freeze_bottom_layers:
        layers = encoder_layers(encoder)
        if not 0 <= freeze_bottom_layers <= len(layers):
            raise ValueError(
                f"freeze_bottom_layers={freeze_bottom_layers}, but the encoder has {len(layers)} layers."
            )
        for layer in layers[:freeze_bottom_layers]:
            layer.requires_grad_(False)


def encoder_depths(model: nn.Module) -> dict[str, int]:
    """Depth below the top of the encoder of every encoder parameter name: layer i of L is at L - i,
    the embeddings at L + 1, anything above the layers (e.g. a final LayerNorm) at 0."""
    layers = encoder_layers(model.encoder)
    depth_of_layer = {id(p): len(layers) - i for i, layer in enumerate(layers) for p in layer.parameters()}
    embedding_ids = {id(p) for p in encoder_embeddings(model.encoder).parameters()}
    depths = {}
    for name, parameter in model.encoder.named_parameters():
        if id(parameter) in depth_of_layer:
            depths[f"encoder.{name}"] = depth_of_layer[id(parameter)]
        else:
            depths[f"encoder.{name}"] = len(layers) + 1 if id(parameter) in embedding_ids else 0
    return depths


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    decay_parameter_names: set[str],
    encoder_learning_rate: float | None = None,
    head_learning_rate: float | None = None,
    layerwise_lr_decay: float = 1.0,
) -> list[dict]:
    """Optimizer parameter groups, one per (learning rate, weight decay) pair, trainable parameters only.

    Heads, projection and learned loss weights use `head_learning_rate`; encoder layer i of L uses
    `encoder_learning_rate * layerwise_lr_decay ** (L - i)` and the embeddings `** (L + 1)`. The heads' scalar
    mixes (head `layers`) get no weight decay."""
    if not 0.0 < layerwise_lr_decay <= 1.0:
        raise ValueError(f"layerwise_lr_decay must be in (0, 1], got {layerwise_lr_decay}.")
    depths = encoder_depths(model) if layerwise_lr_decay != 1.0 else {}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("encoder."):
            # Layer-wise decay: lower layers hold more general features and move less.
            lr = (encoder_learning_rate or learning_rate) * layerwise_lr_decay ** depths.get(name, 0)
        else:  # heads, projection, learned loss weights
            lr = head_learning_rate or learning_rate
        # A head's scalar mix (one logit per layer, a scale) is not decayed, as LayerNorm weights are not.
        decay = weight_decay if name in decay_parameter_names and ".mix." not in name else 0.0
        groups.setdefault((lr, decay), []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]
