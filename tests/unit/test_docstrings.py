"""The public classes document their constructor: a class docstring whose Google-style ``Args:`` section has one
entry per parameter of ``__init__`` (the fields of a dataclass), and no entry for a parameter that is gone."""

import dataclasses
import inspect
import re

import pytest

from relayrl.agents.trainer import Trainer
from relayrl.evaluation.rollout_worker import RolloutWorker
from relayrl.evaluation.worker_set import WorkerSet
from relayrl.models.catalog import ModelCatalog
from relayrl.models.torch_model import TorchModel
from relayrl.optimizers.async_gradients import AsyncGradientsOptimizer
from relayrl.optimizers.async_replay import AsyncReplayOptimizer
from relayrl.optimizers.async_samples import AsyncSamplesOptimizer
from relayrl.optimizers.minibatch_sgd import MinibatchSGD
from relayrl.optimizers.multi_gpu import LocalMultiGPUOptimizer
from relayrl.optimizers.policy_optimizer import PolicyOptimizer
from relayrl.optimizers.replay_options import ReplayOptions
from relayrl.optimizers.sync_replay import SyncReplayOptimizer
from relayrl.optimizers.sync_samples import SyncSamplesOptimizer
from relayrl.policy.torch_policy import TorchPolicy

DOCUMENTED = [
    TorchPolicy,
    PolicyOptimizer,
    SyncSamplesOptimizer,
    SyncReplayOptimizer,
    AsyncGradientsOptimizer,
    AsyncSamplesOptimizer,
    AsyncReplayOptimizer,
    LocalMultiGPUOptimizer,
    MinibatchSGD,
    ReplayOptions,
    Trainer,
    RolloutWorker,
    WorkerSet,
    TorchModel,
    ModelCatalog,
]

# An entry of an Args section: "name:", "*args:", "**options:" or "name (type):" at the entries' indentation.
ENTRY = re.compile(r"(\*{0,2}[A-Za-z_]\w*)(?: \([^)]*\))?:")


def class_docstring(cls: type) -> str:
    """The class's own docstring: not a base class's, nor the signature that @dataclass writes when there is none."""
    doc = cls.__dict__.get("__doc__")
    if dataclasses.is_dataclass(cls) and doc and doc.startswith(f"{cls.__name__}("):
        return ""
    return inspect.cleandoc(doc or "")


def documented_args(doc: str) -> list[str]:
    """The names of the entries of the docstring's ``Args:`` section (empty when it has none)."""
    lines = doc.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "Args:"]
    if not starts:
        return []
    start = starts[0]
    base = len(lines[start]) - len(lines[start].lstrip())
    names, entry_indent = [], None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= base:
            break
        if entry_indent is None:
            entry_indent = indent
        if indent == entry_indent:
            match = ENTRY.match(line.strip())
            assert match, f"not an Args entry: {line.strip()!r}"
            names.append(match.group(1).lstrip("*"))
    return names


def constructor_parameters(cls: type) -> tuple[list[str], list[str]]:
    """(the parameters every docstring must name, the variadic ones it may name)."""
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")], []
    if cls.__init__ is object.__init__:
        return [], []  # no constructor arguments
    required, variadic = [], []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:  # [0] is self
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            variadic.append(p.name)
        elif not p.name.startswith("_"):
            required.append(p.name)
    return required, variadic


@pytest.mark.parametrize("cls", DOCUMENTED, ids=lambda c: c.__name__)
def test_class_docstring_documents_every_constructor_argument(cls):
    doc = class_docstring(cls)
    assert doc, f"{cls.__name__} has no class docstring"
    required, variadic = constructor_parameters(cls)
    if not required and not variadic:
        return
    documented = documented_args(doc)
    assert documented, f"{cls.__name__}'s class docstring has no Args: section"
    missing = [name for name in required if name not in documented]
    assert not missing, f"{cls.__name__}'s class docstring does not document {missing}"
    stale = [name for name in documented if name not in required + variadic]
    assert not stale, f"{cls.__name__}'s class docstring documents {stale}, which {cls.__name__}() does not take"


@pytest.mark.parametrize("cls", [SyncReplayOptimizer, AsyncReplayOptimizer], ids=lambda c: c.__name__)
def test_keyword_options_name_their_type(cls):
    """An optimizer that takes ``**options`` says which dataclass they are and where its fields are documented."""
    doc = class_docstring(cls)
    assert "options" in documented_args(doc)
    assert cls.options_type.__name__ in doc
    assert inspect.getmodule(cls.options_type).__name__.rsplit(".", 1)[-1] in doc


def test_model_catalog_is_a_static_method_class():
    assert "__init__" not in vars(ModelCatalog)
    assert "static" in class_docstring(ModelCatalog)
