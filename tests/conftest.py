"""Shared fixtures. Ray is started once per test session, only by tests that ask for it."""

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        # Classes defined in test modules are pickled by reference: the actors must be able to import them.
        here = os.path.dirname(os.path.abspath(__file__))
        paths = [os.path.join(here, d) for d in ("unit", "integration", "learning")] + [here]
        os.environ["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
