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
from relayrl.models import registry
from relayrl.models.action_mask import mask_columns
from relayrl.models.preprocessors import Preprocessor, get_preprocessor
from relayrl.models.spaces import NESTED_SPACES, UnsupportedSpaceException, check_action_space, is_nested
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
    # Wrap the default model (FC or conv) in an RNN (relayrl.models.recurrent); its value head reads the RNN output.
    # PG, PPO, A2C, A3C and IMPALA train recurrent models; the other algorithms reject use_lstm (issue 13).
    "use_lstm": False,
    # The RNN of use_lstm: "lstm" (state h and c) or "gru" (state h).
    "rnn_type": "lstm",
    # Longest sequence a recurrent model is trained on: trajectories are cut into pieces of at most this many
    # steps (relayrl.policy.rnn_sequencing), each starting from the state acting had there.
    "max_seq_len": 20,
    # Size of the RNN's state (hidden units of the LSTM or GRU).
    "lstm_cell_size": 256,
    # Feed the previous action (one-hot for Discrete, raw for Box) and the previous reward to the RNN.
    "lstm_use_prev_action_reward": False,
    # Atari preprocessing of ALE ids (relayrl.env.atari_wrappers.wrap_deepmind), applied when the env is made:
    # stack this many frames along the channels (True: 4; False / 0: one frame, no stacking).
    "framestack": True,
    # Atari preprocessing: side of the square frames are resized to (RLlib's fast Pong configs use 42).
    "dim": 84,
    # Atari preprocessing: grayscale frames (1 channel per frame); False keeps RGB (3 channels per frame).
    "grayscale": True,
    # Atari preprocessing: float32 frames centred to [-1, 1) ((x - 128) / 128); False keeps uint8 in [0, 255].
    "zero_mean": False,
    # A Preprocessor subclass, or the name it was registered with (ModelCatalog.register_custom_preprocessor).
    "custom_preprocessor": None,
    # A TorchModel subclass, or the name it was registered with (ModelCatalog.register_custom_model).
    "custom_model": None,
    # An ActionDistribution subclass, or the name it was registered with (ModelCatalog.register_custom_action_dist).
    "custom_action_dist": None,
    # Extra options passed to the custom model as model_config["custom_options"].
    "custom_options": {},
    # The entry of a Dict observation that says which Discrete actions are legal (1-D, one per action, > 0 =
    # legal; PettingZoo's "action_mask"). Every policy whose observation space has it masks illegal actions: the
    # default models never see it and never pick an illegal action (relayrl.models.masked_model), DQN's neither
    # (a custom model gets it in input_dict["obs"] and masks itself, e.g. with action_mask.mask_logits).
    # None: no masking, the entry is an ordinary observation.
    "action_mask_key": "action_mask",
}


def validate_model_config(model_config: dict | None, where: str = "model config") -> None:
    """Raises ValueError naming the key (``'model.fcnet_hiddens'``) for a model option the networks cannot be
    built from, so that ``[-5]`` or ``["a"]`` fail when the trainer is built, not deep inside torch."""
    from relayrl.models.torch_model import ACTIVATIONS

    def fail(key: str, what: str) -> None:
        raise ValueError(f"{where}: 'model.{key}' must be {what}, got {config[key]!r}")

    def positive_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    config = model_config or {}
    activations = sorted(k for k in ACTIVATIONS if k)
    if "fcnet_hiddens" in config:
        hiddens = config["fcnet_hiddens"]
        if not isinstance(hiddens, (list, tuple)) or not all(positive_int(h) for h in hiddens):
            fail("fcnet_hiddens", "a list of positive ints (layer sizes), e.g. [64, 64]")
    for key in ("fcnet_activation", "conv_activation"):
        if key in config and config[key] not in ACTIVATIONS:
            fail(key, f"one of {', '.join(activations)}")
    if config.get("conv_filters") is not None:
        filters = config["conv_filters"]
        if (
            not isinstance(filters, (list, tuple))
            or not filters
            or not all(
                isinstance(f, (list, tuple)) and len(f) == 3 and all(positive_int(x) for x in f) for f in filters
            )
        ):
            fail(
                "conv_filters",
                "a non-empty list of [out_channels, kernel, stride] of positive ints, e.g."
                " [[16, 8, 4], [32, 4, 2], [256, 11, 1]]",
            )
    for key in ("max_seq_len", "lstm_cell_size", "dim"):
        if key in config and not positive_int(config[key]):
            fail(key, "a positive int")
    key = config.get("action_mask_key")
    if key is not None and not (isinstance(key, str) and key):
        fail("action_mask_key", "the name of the action mask entry of a Dict observation (a non-empty string) or None")
    framestack = config.get("framestack", True)
    if not isinstance(framestack, bool) and not (isinstance(framestack, int) and framestack >= 0):
        fail("framestack", "true, false or a number of frames >= 0")
    if "rnn_type" in config and config["rnn_type"] not in ("lstm", "gru"):
        fail("rnn_type", '"lstm" or "gru"')


class ModelCatalog:
    """Picks the action distribution, preprocessor and torch model for a pair of spaces, and holds the names of
    users' own ones (``register_custom_model`` / ``_preprocessor`` / ``_action_dist``; a config may also name the
    class itself). Registered names reach remote workers and Tune trials (see ``relayrl.models.registry``).

    A class of static methods, used as ``ModelCatalog.get_model(...)``: it has no constructor arguments and is not
    instantiated.
    """

    @staticmethod
    def get_action_dist(action_space: gym.Space, config: dict | None = None, dist_type: str | None = None):
        """Returns ``(dist_class, num_outputs)`` for the action space: Categorical (Discrete), MultiCategorical
        (MultiDiscrete), DiagGaussian (1-D Box), a MultiActionDistribution over the leaves (Tuple / Dict); raises
        UnsupportedSpaceException for other spaces."""
        config = config or {}
        custom = registry.resolve("action_dist", config.get("custom_action_dist"))
        if custom:
            return custom, custom.required_model_output_shape(action_space, config)
        if dist_type == "deterministic":
            cls = dists.Deterministic
        elif isinstance(action_space, gym.spaces.Discrete):
            cls = dists.Categorical
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            cls = functools.partial(dists.MultiCategorical, input_lens=tuple(int(n) for n in action_space.nvec))
            return cls, dists.MultiCategorical.required_model_output_shape(action_space, config)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            cls = dists.DiagGaussian
        elif is_nested(action_space):
            if config.get("free_log_std"):
                raise ValueError(
                    f"model.free_log_std needs a Box action space, not {action_space}: with a Tuple or"
                    " Dict space the model's outputs are the leaves' inputs side by side"
                )
            check_action_space(None, action_space, NESTED_SPACES)
            cls = dists.MultiActionDistribution.for_space(action_space)
        else:
            raise UnsupportedSpaceException(
                action_space,
                (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.Box, *NESTED_SPACES),
                detail="a Box action space must be 1-D",
            )
        return cls, cls.required_model_output_shape(action_space, config)

    @staticmethod
    def get_model(
        obs_space: gym.Space, action_space: gym.Space, num_outputs: int, model_config: dict, name: str = "model"
    ) -> TorchModel:
        """Builds the torch model named by ``custom_model``, else the default for the observation shape, wrapped in
        an ActionMaskModel when the observation has a ``model.action_mask_key`` entry (illegal actions masked)."""
        validate_model_config(model_config)
        model_config = {**MODEL_DEFAULTS, **(model_config or {})}
        custom = registry.resolve("model", model_config.get("custom_model"))
        if custom:
            return custom(obs_space, action_space, num_outputs, model_config, name)
        # The mask first: the inner model (below, with use_lstm the RNN) is built for the observation without it.
        if mask_columns(obs_space, action_space, model_config.get("action_mask_key")) is not None:
            from relayrl.models.masked_model import ActionMaskModel

            return ActionMaskModel(obs_space, action_space, num_outputs, model_config, name)
        if model_config.get("use_lstm"):
            from relayrl.models.recurrent import RecurrentNetwork

            return RecurrentNetwork(obs_space, action_space, num_outputs, model_config, name)
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
        registry.register("model", name, model_class)

    @staticmethod
    def register_custom_preprocessor(name: str, preprocessor_class: type[Preprocessor]) -> None:
        registry.register("preprocessor", name, preprocessor_class)

    @staticmethod
    def register_custom_action_dist(name: str, dist_class: type[dists.ActionDistribution]) -> None:
        registry.register("action_dist", name, dist_class)
