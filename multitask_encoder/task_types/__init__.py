"""Task types, package side: labels, metrics, card and prediction-file columns of each type (see types.py)."""

from .types import TASK_TYPES, IndexedMetric, LabelBatch, LabelError, TaskType, task_type

__all__ = ["TASK_TYPES", "IndexedMetric", "LabelBatch", "LabelError", "TaskType", "task_type"]
