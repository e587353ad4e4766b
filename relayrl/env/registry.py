"""Environment names: ``register_env(name, creator)``, the multi-agent names below, else any Gymnasium id.

Multi-agent envs a YAML experiment can name: ``"multi_agent:CartPole-v1"`` (N independent copies, N from
``env_config: {num_agents: N}``, default 2), ``"pettingzoo:classic/tictactoe-v3"`` (a PettingZoo AEC env by its
registry id or module path) and ``"pettingzoo_parallel:NAME"`` (a Parallel one); see PettingZooCreator.

A creator takes an ``EnvContext`` (the ``env_config`` dict, plus ``worker_index`` and ``vector_index``)
and returns an environment. Registered names are also pushed to Ray Tune's registry, so trials running
in other processes find them.
"""

from __future__ import annotations

import difflib
import inspect
import sys
from typing import Any, Callable

import gymnasium as gym

_ENV_CREATORS: dict[str, Callable] = {}


class EnvContext(dict):
    """The ``env_config`` dict handed to an env creator, with attributes:

    - ``worker_index`` (0: the local worker) and ``vector_index`` (which sub-env of the worker);
    - ``model``: the trainer's model config; its ``framestack``, ``dim``, ``grayscale`` and ``zero_mean`` shape the
      Atari preprocessing of ALE ids (``relayrl.env.atari_wrappers.wrap_deepmind``); None: MODEL_DEFAULTS;
    - ``video_dir``: where the videos of ``monitor: True`` go (None: no videos);
    - ``render_mode``: "rgb_array" for the sub-env that records videos (sub-env 0 of each worker when
      ``video_dir`` is set), else None. Gymnasium ids are made with it; a ``register_env`` creator should pass it
      to its env (``gym.make(id, render_mode=ctx.render_mode)``) for ``monitor: True`` to work.
    """

    def __init__(
        self,
        env_config: dict | None,
        worker_index: int = 0,
        vector_index: int = 0,
        *,
        model: dict | None = None,
        video_dir: str | None = None,
    ):
        super().__init__(env_config or {})
        self.worker_index = worker_index
        self.vector_index = vector_index
        self.model = model
        self.video_dir = video_dir

    @classmethod
    def from_config(cls, config: dict, worker_index: int = 0) -> "EnvContext":
        """The context of a worker's first sub-env from a trainer config: ``env_config``, ``model`` and, with
        ``monitor``, the video directory a Trainer puts under the private key ``_video_dir`` (its logdir)."""
        video_dir = None
        if config.get("monitor"):
            video_dir = config.get("_video_dir")
            if video_dir is None:
                raise ValueError(
                    "monitor: True writes videos into a Trainer's logdir; a worker built without a"
                    " Trainer needs the directory as config['_video_dir']"
                )
        return cls(config.get("env_config"), worker_index, model=config.get("model"), video_dir=video_dir)

    @property
    def render_mode(self) -> str | None:
        return "rgb_array" if self.video_dir is not None and self.vector_index == 0 else None

    def copy_with_overrides(self, worker_index: int | None = None, vector_index: int | None = None) -> "EnvContext":
        return EnvContext(
            dict(self),
            self.worker_index if worker_index is None else worker_index,
            self.vector_index if vector_index is None else vector_index,
            model=self.model,
            video_dir=self.video_dir,
        )


def make_env(env_creator: Callable[[EnvContext], Any], ctx: EnvContext, env_name: str | None = None) -> Any:
    """``env_creator(ctx)``, wrapped in Gymnasium's RecordVideo when ``ctx`` asks for videos (``monitor: True``:
    sub-env 0 of each worker, files ``worker<worker_index>-episode-<n>.mp4`` in ``ctx.video_dir``)."""
    env = env_creator(ctx)
    if ctx.video_dir is not None and ctx.vector_index == 0:
        from relayrl.env.video import record_video

        env = record_video(env, ctx.video_dir, f"worker{ctx.worker_index}", env_name)
    return env


def register_env(name: str, env_creator: Callable[[EnvContext], Any]) -> None:
    """Makes ``name`` usable as ``env`` in a trainer config, the CLI and Tune experiments."""
    if not callable(env_creator):
        raise TypeError(f"register_env({name!r}, ...) needs a callable env creator, got {env_creator!r}")
    _ENV_CREATORS[name] = env_creator
    if "ray.tune" in sys.modules:
        _register_with_tune(name, env_creator)


def _register_with_tune(name: str, env_creator: Callable) -> None:
    from ray.tune.registry import register_env as tune_register_env

    tune_register_env(name, env_creator)


def registered_envs() -> dict[str, Callable]:
    return dict(_ENV_CREATORS)


def _tune_env_creator(name: str) -> Callable | None:
    """An env registered with ``ray.tune.registry.register_env`` (Tune's registry answers before ``ray.init`` too:
    it keeps what it has not yet written to Ray's store)."""
    if "ray.tune.registry" not in sys.modules:
        return None
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if _global_registry.contains(ENV_CREATOR, name):
        return _global_registry.get(ENV_CREATOR, name)
    return None


def get_env_creator(env: Any) -> Callable[[EnvContext], Any]:
    """Resolves a config's ``env`` (a registered name, a Gymnasium id, an env class or a creator)."""
    if env is None:
        raise ValueError("no environment given: pass env='CartPole-v1' (a Gymnasium id or a name from register_env)")
    if isinstance(env, str):
        if env in _ENV_CREATORS:
            return _ENV_CREATORS[env]
        creator = _tune_env_creator(env) or _prefixed_creator(env)
        if creator is not None:
            return creator
        if env not in gym.registry:
            _try_import_env_packages(env)
        if env not in gym.registry:
            known = list(_ENV_CREATORS) + list(gym.registry.keys())
            close = difflib.get_close_matches(env, known, n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"unknown environment {env!r}: not registered with relayrl.register_env and not a Gymnasium id{hint}"
            )
        return _GymMaker(env)
    if isinstance(env, type):
        return _class_creator(env)
    if callable(env):
        return env
    raise ValueError(f"env must be a name or a creator, got {env!r}")


def _class_creator(env: type) -> Callable[[EnvContext], Any]:
    """An env class's creator: called with the env config (RLlib's convention), or with nothing when its
    constructor takes no argument (a plain Gymnasium env class)."""
    try:
        signature = inspect.signature(env)
    except (TypeError, ValueError):  # no signature to read (a builtin): RLlib's convention
        return lambda ctx: env(ctx)
    for args in ((None,), ()):
        try:
            signature.bind(*args)
        except TypeError:
            continue
        return (lambda ctx: env(ctx)) if args else (lambda ctx: env())
    raise ValueError(
        f"env class {env.__name__} cannot be made: its constructor {env.__name__}{signature} takes neither the"
        " env config (one argument, RLlib's convention) nor no argument; wrap it: env=lambda config: ..."
    )


def _prefixed_creator(env: str) -> Callable | None:
    """The built-in multi-agent names: ``"multi_agent:ENV"`` (``env_config["num_agents"]`` independent copies of
    ENV, a Gymnasium id or registered name, default 2; the rest of env_config goes to each copy),
    ``"pettingzoo:MODULE"`` and ``"pettingzoo_parallel:MODULE"`` (relayrl.env.pettingzoo_env.PettingZooCreator).
    None for any other name."""
    prefix, sep, rest = env.partition(":")
    if not sep or prefix not in ("multi_agent", "pettingzoo", "pettingzoo_parallel"):
        return None
    if not rest:
        raise ValueError(f"environment {env!r} names nothing after {prefix + ':'!r}")
    if prefix == "multi_agent":
        from relayrl.env.multi_agent_env import make_multi_agent

        try:
            get_env_creator(rest)
        except ValueError as e:
            raise ValueError(f"environment {env!r}: {e}") from None
        return make_multi_agent(rest, 2)
    from relayrl.env.pettingzoo_env import PettingZooCreator

    try:
        return PettingZooCreator(rest, parallel=prefix == "pettingzoo_parallel")
    except ImportError as e:
        raise ValueError(f"environment {env!r}: {e}") from None


class _GymMaker:
    """Picklable creator for a Gymnasium id; ``env_config`` entries become ``gym.make`` keyword arguments, and
    ``ctx.render_mode`` (videos) the env's render_mode unless env_config sets one. Atari (ALE) ids get the
    DeepMind preprocessing of ``relayrl.env.atari_wrappers`` with the Atari keys of ``ctx.model``."""

    def __init__(self, env_id: str):
        self.env_id = env_id

    def __call__(self, ctx: EnvContext | None = None) -> gym.Env:
        kwargs = dict(ctx or {})
        render_mode = getattr(ctx, "render_mode", None)
        if render_mode is not None:
            kwargs.setdefault("render_mode", render_mode)
        env = gym.make(self.env_id, **kwargs)
        if len(env.observation_space.shape or ()) == 3:
            from relayrl.env.atari_wrappers import atari_options, is_atari, wrap_deepmind

            if is_atari(env):
                env = wrap_deepmind(env, **atari_options(getattr(ctx, "model", None)))
        return env

    def __repr__(self) -> str:
        return f"gym.make({self.env_id!r})"


def _try_import_env_packages(env_id: str) -> None:
    """Atari ids live in ale_py, which registers them on import."""
    if "NoFrameskip" in env_id or env_id.startswith("ALE/") or "Deterministic" in env_id:
        try:
            import ale_py  # noqa: F401

            gym.register_envs(ale_py)
        except ImportError:
            pass
