"""Policies: the framework-free interface, the torch template and SampleBatch. No Ray here."""

from relayrl.policy.finite_checks import NonFiniteLossError
from relayrl.policy.policy import Policy
from relayrl.policy.random_policy import RandomPolicy
from relayrl.policy.sample_batch import DEFAULT_POLICY_ID, MultiAgentBatch, SampleBatch
from relayrl.policy.torch_policy import LEARNER_STATS_KEY, TorchPolicy, vf_preds_fetches
from relayrl.policy.torch_policy_template import build_torch_policy

__all__ = [
    "RandomPolicy",
    "Policy",
    "SampleBatch",
    "MultiAgentBatch",
    "DEFAULT_POLICY_ID",
    "TorchPolicy",
    "LEARNER_STATS_KEY",
    "vf_preds_fetches",
    "build_torch_policy",
    "NonFiniteLossError",
]
