"""Multi-agent tools: checkpoints of every policy, compute_action / rollout / export per policy, the multiagent config
in YAML (mapping functions as text), the built-in multi-agent env names, and callbacks that see the agent ids."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from relayrl.agents import checkpoint as ckpt
from relayrl.agents.checkpoint import CheckpointError
from relayrl.agents.ppo import DEFAULT_CONFIG as PPO_DEFAULTS
from relayrl.agents.ppo import PPOTrainer
from relayrl.agents.trainer import Trainer
from relayrl.cli import main
from relayrl.config import validate_config
from relayrl.env.registry import get_env_creator
from relayrl.multiagent_config import TableMapping, TemplateMapping, resolve_mapping_fn
from relayrl.policy.export import policy_dir_name

# Policy ids that are no file names: a slash, a space.
IDS = ("player/1", "p 0")
CONFIG = {
    "seed": 0,
    "num_workers": 0,
    "train_batch_size": 128,
    "sample_batch_size": 64,
    "sgd_minibatch_size": 64,
    "num_sgd_iter": 2,
    "observation_filter": "MeanStdFilter",
    "model": {"fcnet_hiddens": [16]},
    "multiagent": {
        "policies": {IDS[0]: None, IDS[1]: [None, None, None, {"lr": 1e-3}]},
        "policy_mapping_fn": {0: IDS[0], 1: IDS[1]},  # as a YAML mapping: stored in checkpoints as it is
    },
}
ENV = "multi_agent:CartPole-v1"


def state_of(trainer: Trainer) -> dict:
    local = trainer.workers.local_worker()
    return {
        "policies": {pid: p.get_state() for pid, p in local.policy_map.items()},
        "filters": local.get_filter_states(),
    }


def assert_identical(a, b, where="state"):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}.{i}")
    elif isinstance(a, (np.ndarray, torch.Tensor)):
        x, y = np.asarray(a), np.asarray(b)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    trainer = PPOTrainer(env=ENV, config=CONFIG)
    trainer.train()
    trainer.train()
    path = trainer.save(str(tmp_path_factory.mktemp("ckpt")))
    yield trainer, path
    trainer.stop()


# --- checkpoints ----------------------------------------------------------------------------------------------
def test_checkpoint_holds_every_policy_under_its_own_id(trained):
    trainer, path = trained
    manifest, state = ckpt.read_checkpoint(path)
    assert sorted(os.listdir(path)) == [ckpt.MANIFEST, ckpt.TENSORS]  # ids are keys, never file names
    assert set(manifest["spaces"]) == set(state["policies"]) == set(state["filters"]) == set(IDS)
    for pid in IDS:
        assert state["policies"][pid]["optimizers"], pid  # its optimizer's state (Adam's moments)
        assert state["filters"][pid]["rs"]["n"] > 0, pid
    assert state["config"]["multiagent"]["policy_mapping_fn"] == {0: IDS[0], 1: IDS[1]}
    # The per-policy override is stored and comes back.
    assert state["config"]["multiagent"]["policies"][IDS[1]][3] == {"lr": 1e-3}


def test_restore_keeps_the_agent_step_counter(trained):
    trainer, path = trained
    agent_steps = trainer.optimizer.num_agent_steps_sampled
    assert agent_steps > trainer.optimizer.num_steps_sampled  # 2 agents: more agent steps than env steps
    fresh = PPOTrainer(env=ENV, config=CONFIG)
    try:
        fresh.restore(path)
        assert fresh.optimizer.num_agent_steps_sampled == agent_steps
        result = fresh.train()
        assert result["agent_steps_total"] == agent_steps + result["agent_steps_this_iter"]
    finally:
        fresh.stop()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_restore_every_policy_bit_identical_with_another_num_workers(trained, num_workers, request):
    trainer, path = trained
    if num_workers:
        request.getfixturevalue("ray_session")
    fresh = PPOTrainer(env=ENV, config={**CONFIG, "num_workers": num_workers, "seed": 7})
    try:
        fresh.restore(path)
        assert_identical(state_of(trainer), state_of(fresh))
        assert fresh.get_policy(IDS[1]).config["lr"] == 1e-3
        for remote in fresh.workers.remote_workers():  # the restored weights and filters reached the workers
            import ray

            weights = ray.get(remote.get_weights.remote())
            assert_identical(trainer.get_weights(), weights, "remote weights")
            filters = ray.get(remote.get_filter_states.remote())  # running statistics (its buffer starts empty)
            local = trainer.workers.local_worker().get_filter_states()
            assert_identical({p: f["rs"] for p, f in local.items()}, {p: f["rs"] for p, f in filters.items()})
        fresh.train()  # and it trains on from there
    finally:
        fresh.stop()


def test_from_checkpoint_rebuilds_the_multi_agent_trainer(trained):
    trainer, path = trained
    rebuilt = Trainer.from_checkpoint(path, {"num_workers": 0})
    try:
        assert sorted(rebuilt.workers.local_worker().policy_map) == sorted(IDS)
        assert_identical(state_of(trainer), state_of(rebuilt))
        assert rebuilt.iteration == trainer.iteration == 2
    finally:
        rebuilt.stop()


def test_a_mapping_function_that_cannot_be_imported(trained, tmp_path):
    """A script's function (``__main__:fn``) or a lambda is stored by a name another process cannot import: restore
    does not need it, from_checkpoint says to pass the mapping, and works when it is passed."""
    trainer, good = trained
    path = str(tmp_path / "ckpt")
    shutil.copytree(good, path)
    manifest_path = os.path.join(path, ckpt.MANIFEST)
    with open(manifest_path) as f:
        manifest = json.load(f)
    manifest["state"]["config"]["multiagent"]["policy_mapping_fn"] = {"__callable__": "__main__:no_such_mapping"}
    manifest["state"]["config"]["callbacks"]["on_episode_end"] = {"__callable__": "<unrestorable <lambda>>"}
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    fresh = PPOTrainer(env=ENV, config=CONFIG)
    fresh.restore(path)
    assert_identical(state_of(trainer), state_of(fresh))
    fresh.stop()
    with pytest.raises(CheckpointError, match=r"policy_mapping_fn '__main__:no_such_mapping' cannot be imported"):
        Trainer.from_checkpoint(path)
    mapping = {"multiagent": {"policy_mapping_fn": {"0": IDS[0], "1": IDS[1]}}}
    rebuilt = Trainer.from_checkpoint(path, mapping)
    assert rebuilt.config["callbacks"]["on_episode_end"] is None  # a lambda callback is left out
    rebuilt.stop()


# --- acting, rollout, export ----------------------------------------------------------------------------------
def test_compute_action_for_every_policy(trained):
    trainer, _ = trained
    obs = np.array([0.01, -0.02, 0.03, 0.04], dtype=np.float32)
    worker = trainer.workers.local_worker()
    for pid in IDS:
        action = trainer.compute_action(obs, policy_id=pid, explore=False)
        filtered = worker.filters[pid](obs[None], update=False)
        logits = worker.policy_map[pid].model({"obs": torch.as_tensor(filtered)}, [], None)[0]
        assert action == int(torch.argmax(logits)), pid
        assert trainer.compute_action(obs, policy_id=pid, full_fetch=True)[2]  # extra fetches per policy
    with pytest.raises(ValueError, match=r"no policy 'default_policy'.*\['p 0', 'player/1'\]"):
        trainer.compute_action(obs)
    with pytest.raises(ValueError, match="no policy 'nope'"):
        trainer.compute_action(obs, policy_id="nope")


def test_rollout_prints_every_agents_return(trained, tmp_path, capsys):
    _, path = trained
    out = str(tmp_path / "episodes.jsonl")
    assert main(["rollout", path, "--episodes", "2", "--out", out]) == 0
    printed = capsys.readouterr().out
    episodes = [ln for ln in printed.splitlines() if ln.startswith("episode")]
    assert len(episodes) == 2 and "agents: 0 (player/1)" in episodes[0] and "1 (p 0)" in episodes[0], printed
    assert "agent 0 (policy 'player/1'): mean return" in printed
    assert "agent 1 (policy 'p 0'): mean return" in printed
    with open(out) as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 2
    for line in lines:
        assert line["policies"] == {"0": IDS[0], "1": IDS[1]}
        assert line["return"] == pytest.approx(sum(line["agent_returns"].values()))
        assert line["agent_returns"]["0"] == pytest.approx(sum(r.get("0", 0.0) for r in line["rewards"]))
        assert line["length"] == len(line["rewards"]) == max(line["agent_returns"].values())  # CartPole: 1 a step


def test_rollout_a_steps_budget_and_a_mapping_to_no_policy(trained, capsys):
    _, path = trained
    assert main(["rollout", path, "--steps", "5"]) == 0
    assert len([ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("episode")]) == 1
    bad = json.dumps({"multiagent": {"policy_mapping_fn": "q{agent_id}"}})
    assert main(["rollout", path, "--config", bad]) == 2
    assert "agent 0 maps to policy 'q0', which" in capsys.readouterr().err


def test_export_every_policy_into_its_own_directory(trained, tmp_path, capsys):
    trainer, path = trained
    export_dir = str(tmp_path / "exported")
    assert main(["export", path, export_dir]) == 0
    with open(os.path.join(export_dir, "policies.json")) as f:
        index = json.load(f)
    assert index["policies"] == {"player/1": "player%2F1", "p 0": "p%200"}
    assert sorted(os.listdir(export_dir)) == ["p%200", "player%2F1", "policies.json"]
    ort = pytest.importorskip("onnxruntime")
    obs = np.array([[0.05, 0.5, -0.05, -0.5]], dtype=np.float32)
    for pid, name in index["policies"].items():
        session = ort.InferenceSession(os.path.join(export_dir, name, "model.onnx"))
        action = session.run(None, {"obs": obs})[0]
        assert int(action[0]) == trainer.compute_action(obs[0], policy_id=pid, explore=False), pid
    one = str(tmp_path / "one")
    assert main(["export", path, one, "--policy-id", "p 0"]) == 0
    assert {"model.onnx", "export.json"} <= set(os.listdir(one))
    assert main(["export", path, one, "--policy-id", "p0"]) == 2
    assert "choose one of ['p 0', 'player/1']" in capsys.readouterr().err


def test_policy_dir_names_are_safe_and_distinct():
    names = {pid: policy_dir_name(pid) for pid in ["p0", "player/1", "p 0", ".", "..", ".x", "a%2Fb", "ü", "a\\b"]}
    assert names["p0"] == "p0" and names["player/1"] == "player%2F1" and names["p 0"] == "p%200"
    assert names["."] == "%2E" and names[".."] == "%2E." and names["a%2Fb"] == "a%252Fb"
    assert len(set(names.values())) == len(names)
    assert all("/" not in n and "\\" not in n and n not in (".", "..") for n in names.values())
    with pytest.raises(ValueError, match="non-empty string"):
        policy_dir_name("")


# --- the multiagent config as text (YAML) -----------------------------------------------------------------------
def mapping(agent_id, episode=None, **kwargs):
    return f"p{agent_id}"


def test_mapping_fn_forms():
    assert TemplateMapping("policy_{agent_id}")(3) == "policy_3"
    table = resolve_mapping_fn({0: "a", "player_2": "b"})
    assert isinstance(table, TableMapping) and table(0) == "a" and table("player_2") == "b"
    assert resolve_mapping_fn({"0": "a"})(0) == "a"  # a YAML key "0" for agent 0
    with pytest.raises(ValueError, match="maps agents .* and not agent 5"):
        table(5)
    assert resolve_mapping_fn("os.path:basename") is os.path.basename
    assert resolve_mapping_fn(mapping) is mapping and resolve_mapping_fn(None) is None


@pytest.mark.parametrize(
    "value, message",
    [
        ("no_such_pkg.mapping:fn", r"cannot import module 'no_such_pkg.mapping'.*importable by the driver and every"),
        ("os.path:no_such_fn", r"module 'os.path' has no 'no_such_fn'"),
        ("os:sep", r"'os:sep' is a str, not a function"),
        ("p{agent_id.__class__}", r"may hold the field \{agent_id\} only"),
        ("p{other}", r"may hold the field \{agent_id\} only"),
        ("p{agent_id!r}", r"may hold the field \{agent_id\} only"),
        ("justaname", r"must be a function, 'package.module:function', a template"),
        ({0: 1}, r"maps agent ids to policy ids \(strings\)"),
        (3, r"'multiagent.policy_mapping_fn' must be str or dict or callable"),
    ],
)
def test_bad_mapping_fn_is_a_clear_error_at_build_time(value, message):
    config = {"multiagent": {"policies": {"p0": None, "p1": None}, "policy_mapping_fn": value}}
    with pytest.raises(ValueError, match=message):
        validate_config(config, PPO_DEFAULTS, "PPO")


@pytest.mark.parametrize(
    "policies, extra, message",
    [
        ({0: None}, {}, r"a policy id must be a non-empty string, got 0 \(quote it in YAML\)"),
        ({"": None}, {}, r"a policy id must be a non-empty string"),
        ({"a\nb": None}, {}, r"holds control characters"),
        ({"p0": [None, None]}, {}, r"multiagent.policies\['p0'\] is \[None, None\]; an entry is null or \["),
        ({"p0": [None, None, None, {"lrr": 0.1}]}, {}, r"unknown key \"multiagent.policies\['p0'\].lrr\".*'lr'"),
        ({"p0": [None, None, None, {"lr": "fast"}]}, {}, r"multiagent.policies\['p0'\].lr\" must be"),
        ({"p0": ["no_such_pkg:Policy", None, None, {}]}, {}, r"policy class 'no_such_pkg:Policy': cannot import"),
        ({"p0": [None, "Box(4)", None, {}]}, {}, r"the observation space must be a gymnasium Space or null"),
        ({"p0": None}, {"policies_to_train": ["p1"]}, r"policies_to_train names \['p1'\], not among"),
    ],
)
def test_bad_policies_are_clear_errors_at_build_time(policies, extra, message):
    config = {"multiagent": {"policies": policies, "policy_mapping_fn": "p{agent_id}", **extra}}
    with pytest.raises(ValueError, match=message):
        validate_config(config, PPO_DEFAULTS, "PPO")


def test_yaml_multiagent_config_trains(tmp_path):
    """The YAML forms as ``relayrl train -f`` reads them: null entries, lists, a class by import path."""
    from relayrl.experiments import UserError, load_experiment_file, validate_experiments

    text = """
ma:
    run: PPO
    env: multi_agent:CartPole-v1
    config:
        env_config: {num_agents: 3}
        seed: 0  # an episode of 3 random CartPoles ends within the 64 steps (unseeded: not always)
        train_batch_size: 64
        sample_batch_size: 32
        sgd_minibatch_size: 32
        num_sgd_iter: 1
        multiagent:
            policies:
                p0: null
                p1: [relayrl.agents.ppo.ppo_torch_policy:PPOTorchPolicy, null, null, {lr: 0.002}]
            policy_mapping_fn: test_multi_agent_tools:shared_mapping
"""
    path = tmp_path / "ma.yaml"
    path.write_text(text)
    experiments = load_experiment_file(str(path))
    assert validate_experiments(experiments) >= 1
    config = experiments["ma"]["config"]
    trainer = PPOTrainer(env=experiments["ma"]["env"], config=config)
    try:
        assert trainer.get_policy("p1").config["lr"] == 0.002 and trainer.get_policy("p0").config["lr"] != 0.002
        result = trainer.train()
        assert set(result["policy_reward_mean"]) == {"p0", "p1"}
    finally:
        trainer.stop()
    path.write_text(text.replace("test_multi_agent_tools:shared_mapping", "test_multi_agent_tools:nothing_here"))
    with pytest.raises(UserError, match="module 'test_multi_agent_tools' has no 'nothing_here'"):
        validate_experiments(load_experiment_file(str(path)))


def shared_mapping(agent_id, episode=None, **kwargs):
    return "p1" if agent_id == 2 else "p0"


# --- env names and callbacks --------------------------------------------------------------------------------------
def test_multi_agent_env_names():
    env = get_env_creator("multi_agent:Pendulum-v1")({"num_agents": 3})
    assert env.possible_agents == [0, 1, 2] and env.action_space.shape == (1,)
    assert get_env_creator("multi_agent:CartPole-v1")({}).possible_agents == [0, 1]
    with pytest.raises(ValueError, match="'multi_agent:CartPol-v1'.*did you mean 'CartPole-v1'"):
        get_env_creator("multi_agent:CartPol-v1")
    pytest.importorskip("pettingzoo")
    env = get_env_creator("pettingzoo:classic/tictactoe-v3")({})
    assert env.possible_agents == ["player_1", "player_2"]
    with pytest.raises(ValueError, match="not in pettingzoo's aec registry; did you mean 'classic/tictactoe-v3'"):
        get_env_creator("pettingzoo:classic/tictactoe-v2")
    with pytest.raises(ValueError, match="cannot be imported"):
        get_env_creator("pettingzoo:pettingzoo.classic.no_such_game")


def test_callbacks_see_the_agent_ids():
    seen = {"step": set(), "post": set(), "end": []}

    def on_episode_step(info):
        episode = info["episode"]
        for agent in episode.get_agents():
            if episode.last_observation_for(agent) is not None:
                seen["step"].add((agent, episode.policy_for(agent)))

    def on_postprocess_traj(info):
        policy, batch = info["pre_batch"]
        seen["post"].add((info["agent_id"], info["episode"].policy_for(info["agent_id"]), batch.count > 0))

    def on_episode_end(info):
        seen["end"].append(dict(info["episode"].agent_rewards))

    callbacks = {"on_episode_step": on_episode_step, "on_postprocess_traj": on_postprocess_traj}
    config = {**CONFIG, "callbacks": {**callbacks, "on_episode_end": on_episode_end}}
    trainer = PPOTrainer(env=ENV, config=config)
    try:
        trainer.train()
    finally:
        trainer.stop()
    assert seen["step"] == {(0, IDS[0]), (1, IDS[1])}
    assert seen["post"] == {(0, IDS[0], True), (1, IDS[1], True)}
    assert seen["end"] and all(set(r) == {(0, IDS[0]), (1, IDS[1])} for r in seen["end"])
