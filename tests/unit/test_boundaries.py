"""Architecture rules that keep the code base honest."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "relayrl"
# Spelt in pieces so that text searches for these imports do not match this list itself.
FORBIDDEN = tuple(
    a + b
    for a, b in [
        ("ray.", "rllib"),
        ("stable_", "baselines3"),
        ("clean", "rl"),
        ("tian", "shou"),
        ("torch", "rl"),
        ("sample_", "factory"),
    ]
)


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_policy_and_models_import_no_ray():
    for folder in ("policy", "models"):
        for path in (PACKAGE / folder).rglob("*.py"):
            bad = {m for m in imported_modules(path) if m == "ray" or m.startswith("ray.")}
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_evaluation_imports_neither_agents_nor_optimizers():
    """evaluation/ knows the Policy interface only: the trainers and optimizers build on it, not the reverse."""
    for path in (PACKAGE / "evaluation").rglob("*.py"):
        bad = {m for m in imported_modules(path) if m.startswith(("relayrl.agents", "relayrl.optimizers"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_other_rl_library_anywhere():
    for path in (
        list(PACKAGE.rglob("*.py")) + list((ROOT / "tests").rglob("*.py")) + list((ROOT / "benchmarks").rglob("*.py"))
    ):
        for module in imported_modules(path):
            assert not module.startswith(FORBIDDEN), f"{path.relative_to(ROOT)} imports {module}"


def test_no_file_over_500_lines():
    for path in PACKAGE.rglob("*.py"):
        n = len(path.read_text().splitlines())
        assert n <= 500, f"{path.relative_to(ROOT)} has {n} lines"


def test_import_relayrl_starts_neither_ray_nor_tune():
    code = (
        "import sys, relayrl; from relayrl.agents.ppo import PPOTrainer; "
        "print('ray.tune' in sys.modules, 'torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"], out


def test_tune_finds_our_trainers_when_imported_after_relayrl():
    code = (
        "import relayrl; from ray.tune.registry import get_trainable_cls; "
        "print(get_trainable_cls('PPO').__module__, get_trainable_cls('PG').__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["relayrl.agents.tune_adapter", "PG"], out
