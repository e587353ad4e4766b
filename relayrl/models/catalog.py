"""ModelCatalog: picks the action distribution, preprocessor and model for a pair of spaces.

Usage::

    dist_class, num_outputs = ModelCatalog.get_action_dist(action_space, config["model"])
    model = ModelCatalog.get_model(obs_space, action_space, num_outputs, config["model"])
    ModelCatalog.register_custom_model("my_model", MyTorchModel)   # then model: {custom_model: my_model}
"""

from __future__ import annotations

import functools

import gymnasium as gym

from relayrl.models import action_dist as dists
from relayrl.models.preprocessors import Preprocessor, get_preprocessor, register_custom_preprocessor
from relayrl.models.torch_model import TorchModel

# Every key a user may put under config["model"]; each with what it does.
MODEL_DEFAULTS: dict = {
    # Hidden layer sizes of the fully connected network.
    "fcnet_hiddens": [256, 256],
    # Activation of the fully connected network: tanh, relu, elu or linear.
    "fcnet_activation": "tanh",
    # Share the hidden layers between the policy and the value function (else a separate value MLP).
    "vf_share_layers": False,
    # For Box actions: make the Gaussian's log-std a free parameter rather than a model output.
    "free_log_std": False,
    # Convolution filters [[out_channels, kernel, stride], ...] for image observations (None: by size).
    "conv_filters": None,
    # Activation of the convolutional layers.
    "conv_activation": "relu",
    # Wrap the model in an LSTM.
    "use_lstm": False,
    # Longest sequence an RNN is trained on.
    "max_seq_len": 20,
    # Size of the LSTM cell.
    "lstm_cell_size": 256,
    # Feed the previous action and reward to the LSTM.
    "lstm_use_prev_action_reward": False,
    # Atari preprocessing: stack this many frames (False / 0 to disable).
    "framestack": True,
    # Side of the square frame images are resized to.
    "dim": 84,
    # Turn frames to grayscale.
    "grayscale": False,
    # Scale frames to [-1, 1] instead of [0, 1].
    "zero_mean": True,
    # Name of a preprocessor registered with ModelCatalog.register_custom_preprocessor.
    "custom_preprocessor": None,
    # Name of a model registered with ModelCatalog.register_custom_model.
    "custom_model": None,
    # Name of an action distribution registered with ModelCatalog.register_custom_action_dist.
    "custom_action_dist": None,
    # Extra options passed to the custom model as model_config["custom_options"].
    "custom_options": {},
}


class ModelCatalog:
    _custom_models: dict[str, type[TorchModel]] = {}
    _custom_action_dists: dict[str, type[dists.ActionDistribution]] = {}

    @staticmethod
    def get_action_dist(action_space: gym.Space, config: dict | None = None, dist_type: str | None = None):
        """Returns ``(dist_class, num_outputs)`` for the action space."""
        config = config or {}
        custom = config.get("custom_action_dist")
        if custom:
            if custom not in ModelCatalog._custom_action_dists:
                raise ValueError(f"custom_action_dist {custom!r} is not registered")
            cls = ModelCatalog._custom_action_dists[custom]
            return cls, cls.required_model_output_shape(action_space, config)
        if dist_type == "deterministic":
            cls = dists.Deterministic
        elif isinstance(action_space, gym.spaces.Discrete):
            cls = dists.Categorical
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            cls = functools.partial(dists.MultiCategorical, input_lens=tuple(int(n) for n in action_space.nvec))
            return cls, dists.MultiCategorical.required_model_output_shape(action_space, config)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            cls = dists.DiagGaussian
        else:
            raise ValueError(
                f"action space {action_space} is not supported (Discrete, MultiDiscrete and 1-D Box are)"
            )
        return cls, cls.required_model_output_shape(action_space, config)

    @staticmethod
    def get_model(
        obs_space: gym.Space, action_space: gym.Space, num_outputs: int, model_config: dict, name: str = "model"
    ) -> TorchModel:
        """Builds the torch model named by ``custom_model``, else the default for the observation shape."""
        model_config = {**MODEL_DEFAULTS, **(model_config or {})}
        custom = model_config.get("custom_model")
        if custom:
            if custom not in ModelCatalog._custom_models:
                raise ValueError(
                    f"custom_model {custom!r} is not registered; known: {sorted(ModelCatalog._custom_models)}"
                )
            return ModelCatalog._custom_models[custom](obs_space, action_space, num_outputs, model_config, name)
        if model_config.get("use_lstm"):
            raise NotImplementedError("use_lstm is not supported yet")
        if len(obs_space.shape) == 3:
            from relayrl.models.visionnet import VisionNetwork

            return VisionNetwork(obs_space, action_space, num_outputs, model_config, name)
        from relayrl.models.fcnet import FullyConnectedNetwork

        return FullyConnectedNetwork(obs_space, action_space, num_outputs, model_config, name)

    get_model_v2 = get_model

    @staticmethod
    def get_preprocessor_for_space(observation_space: gym.Space, options: dict | None = None) -> Preprocessor:
        return get_preprocessor(observation_space, options)(observation_space, options)

    @staticmethod
    def register_custom_model(name: str, model_class: type[TorchModel]) -> None:
        ModelCatalog._custom_models[name] = model_class

    @staticmethod
    def register_custom_preprocessor(name: str, preprocessor_class: type[Preprocessor]) -> None:
        register_custom_preprocessor(name, preprocessor_class)

    @staticmethod
    def register_custom_action_dist(name: str, dist_class: type[dists.ActionDistribution]) -> None:
        ModelCatalog._custom_action_dists[name] = dist_class
