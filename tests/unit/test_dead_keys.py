"""No silent keys (issue 11): every key a DEFAULT_CONFIG declares is read somewhere in relayrl's source.

A key counts as read where the source uses its name as a string in a reading position: ``config["key"]``,
``config.get("key")`` / any call taking ``"key"`` as an argument, ``"key" in config``, or a tuple / list / set of
names that code iterates over (``for k in ("a", "b"): config[k]``). Not counted: the keys of dict literals (the
declarations themselves), assignments (``config["key"] = ...``), docstrings and comments, code inside validation
functions (``validate*``, ``_check*``: checking a value is not using it) and the validation tables of config.py.
An algorithm's own keys must be read in its package (``relayrl/agents/<algo>/``) or in shared code outside
``relayrl/agents/<other algo>/``; common keys anywhere. Options under ``optimizer`` are checked against the
policy optimizer's constructor by ``check_optimizer_options`` (every algorithm's defaults must pass it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import relayrl
from relayrl.agents.registry import ALGORITHMS, get_trainer_class
from relayrl.config import COMMON_CONFIG, prepare_config
from relayrl.models.catalog import MODEL_DEFAULTS

PACKAGE = Path(relayrl.__file__).parent
AGENTS = PACKAGE / "agents"

# Module-level names whose strings declare or type-check keys rather than use them.
DECLARATION_TABLES = {"CALLBACK_NAMES", "_NULLABLE_TYPES", "_FREE_DICTS"}
# Keys relayrl hands on instead of reading: their reader is the user's code.
READ_BY_USER_CODE = {
    "custom_options": "the user's custom model reads it from model_config",
}
# Package folders an algorithm's code lives in, beyond its own (ARS shares ES's perturbation workers).
EXTRA_DIRS = {"ARS": ["es"]}


def _is_validation(name: str) -> bool:
    return name.startswith("validate") or name.startswith("_check")


def string_reads(source: str) -> set[str]:
    """The strings that ``source`` reads as names (see the module docstring for what counts)."""
    tree = ast.parse(source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_validation(node.name):
            skipped.update(id(n) for n in ast.walk(node))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id in DECLARATION_TABLES for t in targets):
                skipped.update(id(n) for n in ast.walk(node))
    reads: set[str] = set()

    def add(node: ast.AST) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skipped:
            reads.add(node.value)

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            add(node.slice)
        elif isinstance(node, ast.Call):
            for arg in node.args:
                add(arg)
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            add(node.left)
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            for elt in node.elts:
                add(elt)
    return reads


def _package_reads() -> dict[Path, set[str]]:
    return {path: string_reads(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}


READS = _package_reads()


def _algo_dir(name: str) -> str:
    return ALGORITHMS[name][0].split(".")[2]  # relayrl.agents.<dir>


def _readable_in(path: Path, own_dirs: list[str]) -> bool:
    """Shared code, or the algorithm's own package; not another algorithm's package."""
    parts = path.relative_to(PACKAGE).parts
    if parts[0] != "agents" or len(parts) == 2:
        return True
    return parts[1] in own_dirs


def unread_keys(keys, own_dirs: list[str] | None = None, reads: dict[Path, set[str]] | None = None) -> list[str]:
    """The keys no module reads (``own_dirs``: only shared code and these algorithm packages count)."""
    reads = READS if reads is None else reads
    found: set[str] = set()
    for path, names in reads.items():
        if own_dirs is None or _readable_in(path, own_dirs):
            found |= names
    return sorted(k for k in keys if k not in found and k not in READ_BY_USER_CODE)


def test_every_common_key_is_read():
    keys = set(COMMON_CONFIG) | set(COMMON_CONFIG["multiagent"]) | set(COMMON_CONFIG["callbacks"])
    assert unread_keys(keys) == [], "declared in relayrl/config.py COMMON_CONFIG, read nowhere"


def test_every_model_key_is_read():
    assert unread_keys(MODEL_DEFAULTS) == [], "declared in relayrl/models/catalog.py MODEL_DEFAULTS, read nowhere"


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_algorithm_key_is_read_by_its_code(name):
    defaults = get_trainer_class(name)._default_config
    own = [k for k in defaults if k not in COMMON_CONFIG]
    dead = unread_keys(own, [_algo_dir(name)] + EXTRA_DIRS.get(name, []))
    assert dead == [], f"{name}'s DEFAULT_CONFIG declares keys its code never reads"


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_algorithm_default_config_passes_its_own_validation(name):
    # Includes check_optimizer_options: each default ``optimizer`` sub-key is a keyword of the policy optimizer.
    cls = get_trainer_class(name)
    prepare_config({}, cls._default_config, name, cls._validate_config)


def test_the_scan_reports_keys_that_are_only_declared_or_validated():
    source = """
DEFAULTS = {"declared_only": 1, "validated_only": 2, "read": 3, "read_by_get": 4, "listed": 5, "assigned_only": 6}

def validate_config(config):
    if config["validated_only"] < 0 or config.get("declared_only") is None:
        raise ValueError("validated_only")

def run(config):
    config["assigned_only"] = 7
    kwargs = {k: config[k] for k in ("listed",)}
    return config["read"], config.get("read_by_get"), kwargs
"""
    reads = {PACKAGE / "fake.py": string_reads(source)}
    keys = ["declared_only", "validated_only", "read", "read_by_get", "listed", "assigned_only"]
    assert unread_keys(keys, reads=reads) == ["assigned_only", "declared_only", "validated_only"]


def test_a_fake_key_in_a_real_default_config_fails_the_scan(monkeypatch):
    cls = get_trainer_class("PG")
    monkeypatch.setitem(cls._default_config, "fake_key_nobody_reads", 1)
    with pytest.raises(AssertionError, match="fake_key_nobody_reads"):
        test_every_algorithm_key_is_read_by_its_code("PG")


def test_another_algorithms_reads_do_not_count():
    # IMPALA's "vtrace" is read in relayrl/agents/impala only: for PG (whose package does not read it) it is dead.
    assert unread_keys(["vtrace"], ["impala"]) == []
    assert unread_keys(["vtrace"], ["pg"]) == ["vtrace"]
