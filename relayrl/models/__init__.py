"""Models, preprocessors and action distributions (torch; no Ray)."""

from relayrl.models.action_dist import (
    ActionDistribution,
    Categorical,
    Deterministic,
    DiagGaussian,
    MultiCategorical,
)
from relayrl.models.catalog import MODEL_DEFAULTS, ModelCatalog
from relayrl.models.preprocessors import Preprocessor, get_preprocessor
from relayrl.models.torch_model import TorchModel

__all__ = [
    "ActionDistribution",
    "Categorical",
    "DiagGaussian",
    "Deterministic",
    "MultiCategorical",
    "MODEL_DEFAULTS",
    "ModelCatalog",
    "Preprocessor",
    "get_preprocessor",
    "TorchModel",
]
