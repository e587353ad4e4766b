"""Shared fixtures. Ray is started once per test session, only by tests that ask for it."""

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

# Classes defined in test modules are pickled by reference: Ray's workers must be able to import them, whoever
# starts Ray in this session (the fixture below, or a trainer with num_workers > 0 that finds it not running).
_HERE = os.path.dirname(os.path.abspath(__file__))
_PATHS = [os.path.join(_HERE, d) for d in ("unit", "integration", "learning")] + [_HERE]
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [*_PATHS, os.environ.get("PYTHONPATH")] if p)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
