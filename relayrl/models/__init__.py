"""Models, preprocessors and action distributions (torch; no Ray)."""

from relayrl.models.action_dist import (
    ActionDistribution,
    Categorical,
    Deterministic,
    DiagGaussian,
    MultiActionDistribution,
    MultiCategorical,
)
from relayrl.models.catalog import MODEL_DEFAULTS, ModelCatalog
from relayrl.models.preprocessors import Preprocessor, get_preprocessor, restore_original_dimensions
from relayrl.models.spaces import (
    UnsupportedSpaceException,
    check_action_space,
    flatten_action,
    unflatten_action,
)
from relayrl.models.torch_model import TorchModel

__all__ = [
    "ActionDistribution",
    "Categorical",
    "DiagGaussian",
    "Deterministic",
    "MultiCategorical",
    "MultiActionDistribution",
    "MODEL_DEFAULTS",
    "ModelCatalog",
    "Preprocessor",
    "get_preprocessor",
    "TorchModel",
    "UnsupportedSpaceException",
    "check_action_space",
    "flatten_action",
    "unflatten_action",
    "restore_original_dimensions",
]
