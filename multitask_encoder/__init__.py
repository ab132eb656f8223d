"""multitask-encoder: one pretrained encoder, pooled into a sentence embedding, serving many task heads."""

from transformers import AutoConfig, AutoModel

from .backbone import default_backbone, resolve_backbone
from .configuration_multitask_encoder import MultiTaskEncoderConfig, TaskSpec
from .modeling_multitask_encoder import MultiTaskEncoderModel, MultiTaskEncoderOutput

# With the package imported, a saved folder loads through the Auto classes without remote code.
AutoConfig.register(MultiTaskEncoderConfig.model_type, MultiTaskEncoderConfig, exist_ok=True)
AutoModel.register(MultiTaskEncoderConfig, MultiTaskEncoderModel, exist_ok=True)

__version__ = "0.1.0"
__all__ = [
    "MultiTaskEncoderConfig",
    "MultiTaskEncoderModel",
    "MultiTaskEncoderOutput",
    "TaskSpec",
    "default_backbone",
    "resolve_backbone",
]
