"""DeepMind preprocessing of ALE ids (needs the atari extra: ale-py and OpenCV)."""

import numpy as np
import pytest

ale_py = pytest.importorskip("ale_py", reason="the atari extra (ale-py) is not installed")
pytest.importorskip("cv2", reason="the atari extra (opencv-python-headless) is not installed")

from relayrl.env.registry import get_env_creator  # noqa: E402
from relayrl.evaluation import RolloutWorker  # noqa: E402
from relayrl.policy import Policy  # noqa: E402


class RandomPolicy(Policy):
    def compute_actions(self, obs_batch, state_batches=None, **kw):
        return np.array([self.action_space.sample() for _ in obs_batch]), [], {}

    def get_weights(self):
        return {}

    def set_weights(self, weights):
        pass


def test_pong_is_84x84x4_uint8_and_samples():
    env = get_env_creator("PongNoFrameskip-v4")({})
    obs, _ = env.reset(seed=0)
    assert obs.shape == (84, 84, 4) and obs.dtype == np.uint8
    assert env.observation_space.shape == (84, 84, 4)
    # The newest frame is the last channel: after a step the stack shifts by one.
    nxt, *_ = env.step(0)
    assert np.array_equal(nxt[..., :3], obs[..., 1:])
    worker = RolloutWorker(get_env_creator("PongNoFrameskip-v4"), RandomPolicy, sample_batch_size=8)
    batch = worker.sample()
    assert batch["obs"].shape == (8, 84, 84, 4)
