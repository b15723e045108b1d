"""The end-to-end model: token layout (``batch.py``), backbone and heads (``model.py``), memory planner (``plan.py``)."""

from e2erec.model.batch import ModelBatch, build_model_batch
from e2erec.model.config import REFERENCE_CODEBOOK, ModelConfig
from e2erec.model.model import GenerativeRecommender, HistoryState

__all__ = [
    "REFERENCE_CODEBOOK",
    "GenerativeRecommender",
    "HistoryState",
    "ModelBatch",
    "ModelConfig",
    "build_model_batch",
]
