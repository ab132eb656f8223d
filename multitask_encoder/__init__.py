"""multitask-encoder: one pretrained encoder, pooled into a sentence embedding, serving many task heads."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .backbone import backbone_to_load, default_backbone, resolve_backbone
from .errors import MultiTaskEncoderError
from .model.configuration_multitask_encoder import MultiTaskEncoderConfig, TaskSpec
from .model.modeling_multitask_encoder import MultiTaskEncoderModel, MultiTaskEncoderOutput
from .model.pipeline_multitask_encoder import PIPELINE_TASK, MultiTaskTextClassificationPipeline
from .model.task_views_multitask_encoder import (
    MultiTaskEncoderForSequenceClassification,
    MultiTaskEncoderForTokenClassification,
)

# With the package imported, `from_backbone(None)` means the packaged default backbone ...
MultiTaskEncoderModel.backbone_resolver = staticmethod(backbone_to_load)
# ... and a saved folder loads through the Auto classes without remote code.
AutoConfig.register(MultiTaskEncoderConfig.model_type, MultiTaskEncoderConfig, exist_ok=True)
AutoModel.register(MultiTaskEncoderConfig, MultiTaskEncoderModel, exist_ok=True)
AutoModelForSequenceClassification.register(
    MultiTaskEncoderConfig, MultiTaskEncoderForSequenceClassification, exist_ok=True
)
AutoModelForTokenClassification.register(
    MultiTaskEncoderConfig, MultiTaskEncoderForTokenClassification, exist_ok=True
)
# ... and `pipeline("multitask-text-classification", model=model_object)` finds the pipeline class. A saved folder
# names its own pipeline file in config.json, which transformers only runs with trust_remote_code=True (or
# pipeline_class=MultiTaskTextClassificationPipeline).
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=MultiTaskTextClassificationPipeline, pt_model=AutoModel, type="text"
)

__version__ = "0.1.0"
__all__ = [
    "BatchPredictor",
    "MultiTaskEncoderConfig",
    "MultiTaskEncoderError",
    "MultiTaskEncoderForSequenceClassification",
    "MultiTaskEncoderForTokenClassification",
    "MultiTaskEncoderModel",
    "MultiTaskEncoderOutput",
    "MultiTaskTextClassificationPipeline",
    "TaskSpec",
    "default_backbone",
    "resolve_backbone",
]


def __getattr__(name: str):
    # BatchPredictor (distributed prediction) brings pyarrow and the batch command: imported when first asked for.
    if name == "BatchPredictor":
        from .batch_predictor import BatchPredictor

        return BatchPredictor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
