"""Users' own model, preprocessor and action distribution on remote (Ray) workers and in Tune trials."""

import numpy as np
import pytest
from torch import nn

from relayrl.agents.pg import PGTrainer
from relayrl.models import ModelCatalog, TorchModel
from relayrl.models.action_dist import Categorical
from relayrl.models.preprocessors import Preprocessor


class TinyModel(TorchModel):
    """A plain MLP that counts its forward calls (to prove it is the model that ran)."""

    def __init__(self, obs_space, action_space, num_outputs, model_config, name):
        super().__init__(obs_space, action_space, num_outputs, model_config, name)
        hidden = model_config["custom_options"].get("hidden", 8)
        self.body = nn.Sequential(nn.Linear(int(np.prod(obs_space.shape)), hidden), nn.Tanh())
        self.pi = nn.Linear(hidden, num_outputs)
        self.vf = nn.Linear(hidden, 1)
        self.calls = 0

    def forward(self, input_dict, state, seq_lens):
        self.calls += 1
        self._features = self.body(input_dict["obs"].float().reshape(len(input_dict["obs"]), -1))
        return self.pi(self._features), state

    def value_function(self):
        return self.vf(self._features).squeeze(-1)


class ScaleBy10(Preprocessor):
    def _init_shape(self):
        return tuple(self.obs_space.shape)

    def transform(self, obs):
        return np.asarray(obs, dtype=np.float32) * 10.0


class CountingCategorical(Categorical):
    """Categorical whose class records that it was used (on whichever process samples)."""

    used = False

    def __init__(self, inputs, model=None):
        super().__init__(inputs, model)
        CountingCategorical.used = True


def _config(**model):
    return {
        "num_workers": 2,
        "sample_batch_size": 20,
        "train_batch_size": 40,
        "seed": 0,
        "model": {"custom_options": {"hidden": 8}, **model},
    }


@pytest.mark.parametrize("by", ["name", "class"])
def test_custom_model_preprocessor_and_dist_on_two_remote_workers(ray_session, by):
    ModelCatalog.register_custom_model("tiny_model", TinyModel)
    ModelCatalog.register_custom_preprocessor("scale_by_10", ScaleBy10)
    ModelCatalog.register_custom_action_dist("counting_categorical", CountingCategorical)
    if by == "name":
        model = {
            "custom_model": "tiny_model",
            "custom_preprocessor": "scale_by_10",
            "custom_action_dist": "counting_categorical",
        }
    else:
        model = {"custom_model": TinyModel, "custom_preprocessor": ScaleBy10, "custom_action_dist": CountingCategorical}
    trainer = PGTrainer(env="CartPole-v1", config=_config(**model))
    try:
        result = trainer.train()
        assert result["info"]["num_steps_sampled"] >= 40
        remote = trainer.workers.remote_workers()
        import ray

        def describe(w):
            policy = w.get_policy()
            return (
                type(policy.model).__name__,
                policy.model.calls,
                type(w.preprocessors["default_policy"]).__name__,
                policy.dist_class.__name__,
                CountingCategorical.used,
            )

        seen = ray.get([w.apply.remote(describe) for w in remote])
        for model_name, calls, prep, dist, used in seen:
            assert model_name == "TinyModel" and calls > 0
            assert prep == "ScaleBy10"
            assert dist == "CountingCategorical" and used
        # the observations a remote worker sampled went through the custom preprocessor (x10)
        obs = ray.get(remote[0].apply.remote(lambda w: np.abs(w.sample()["obs"]).max()))
        assert obs > 1.0
        # a checkpoint of a config naming classes can be written and read back
        path = trainer.save()
        trainer.restore(path)
    finally:
        trainer.stop()


def test_an_unregistered_name_is_a_clear_error():
    with pytest.raises(ValueError, match="custom_model 'no_such_model' is not registered"):
        PGTrainer(env="CartPole-v1", config={"model": {"custom_model": "no_such_model"}})
