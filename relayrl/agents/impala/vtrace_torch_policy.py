"""IMPALA's learner loss: actor-critic with V-trace targets (Espeholt et al. 2018, "IMPALA: Scalable
Distributed Deep-RL with Importance Weighted Actor-Learner Architectures", https://arxiv.org/abs/1802.01561,
section 4: eq. 1 for the value targets v_s, section 4.2 for the policy gradient and the entropy bonus).

    loss = -sum_s log pi(a_s|x_s) rho_s (r_s + gamma v_{s+1} - V(x_s))  +  vf_loss_coeff * 0.5 * sum_s (V(x_s) - v_s)^2
           + entropy_coeff * sum_s H(pi(.|x_s))

Terms are sums, and ``entropy_coeff`` is ADDED as in RLlib 0.7's (2019) ``VTraceLoss`` (IMPALA's default -0.01 is a
bonus).

Batch layout: V-trace runs along trajectory pieces, the runs of consecutive rows of one (episode, agent) in time
order: rows with the same ``unroll_id``, ``eps_id`` and ``agent_index`` and consecutive ``t`` (a batch without an
``unroll_id`` column is read as rows of ``sample_batch_size`` steps, the sampler's truncate_episodes layout). A
single-agent batch's pieces are its sub-envs' rows of ``sample_batch_size`` steps, cut at episode ends; a
multi-agent batch's are each agent's steps within a fragment, which may be shorter (an agent that is done waits
for the episode's end) and start anywhere. The pieces are padded to time-major ``[T, B]`` for
``vtrace_from_logits`` (padding: zero reward, discount and value, ratio 1, so it adds nothing). Discounts are
``gamma * (1 - terminated)``; a piece's last step bootstraps from V(its NEXT_OBS) unless terminated, folded into
that step (reward ``r + gamma V(next_obs)``, discount 0), which is exactly V-trace's bootstrap. Behaviour
log-probs: the ACTION_LOGP column.

Recurrent models (``model.use_lstm``, a custom model with a state): the learner runs the model over sequences of
the chunking utility (``relayrl.policy.rnn_sequencing``) of ``sample_batch_size`` steps, the unroll length, which
bounds every piece: each sequence is one piece, i.e. one unroll cut at episode ends, and the model runs over it
from the state the actor had at its start (``state_in_*``), as in the paper's learner. One step more per sequence
values the bootstrap observation with the state after the piece's last step (padding follows the real steps, so it
changes none of their outputs). The real steps are then gathered in row order and V-trace runs over the pieces
exactly as above: padded steps reach no loss term, statistic or gradient. (A sequence shorter than its piece,
were the learner's sequence length set below the unroll's, would only restart the model from the recorded state;
V-trace would still run over the whole piece.)

With ``vtrace: False`` the policy is the A3C loss on GAE(gamma, lambda) advantages computed by the worker.
"""

from __future__ import annotations

import torch

from relayrl.agents.a3c.a3c_torch_policy import actor_critic_loss, postprocess_advantages
from relayrl.agents.impala.vtrace import vtrace_from_logits
from relayrl.policy.rnn_sequencing import SEQ_MASK, state_keys
from relayrl.policy.sample_batch import SampleBatch
from relayrl.policy.torch_policy_template import build_torch_policy
from relayrl.utils.torch_optim import Adam, RMSprop


def to_time_major(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``[B*T, ...]`` ordered row by row -> ``[T, B, ...]``."""
    return x.reshape(rows, -1, *x.shape[1:]).transpose(0, 1)


def trajectory_pieces(train_batch: dict, rows_of: int) -> torch.Tensor:
    """A bool per row: True where a trajectory piece ends (see the module docstring); ``rows_of`` is the row
    length of a batch without an ``unroll_id`` column (ValueError unless the batch is made of such rows)."""
    terminated = train_batch[SampleBatch.TERMINATEDS].bool()
    n = terminated.shape[0]
    ends = terminated | train_batch[SampleBatch.TRUNCATEDS].bool()
    ends[-1] = True
    if SampleBatch.UNROLL_ID not in train_batch:
        if n % rows_of:
            raise ValueError(
                f"IMPALA: a train batch of {n} steps is not made of rows of sample_batch_size={rows_of} steps;"
                " V-trace needs the sampler's truncate_episodes layout (or its unroll_id column)"
            )
        ends[rows_of - 1 :: rows_of] = True
        return ends
    for key in (SampleBatch.UNROLL_ID, SampleBatch.EPS_ID, SampleBatch.AGENT_INDEX):
        if key in train_batch:
            ends[:-1] |= train_batch[key][1:] != train_batch[key][:-1]
    if SampleBatch.T in train_batch:
        # t grows along a piece (by more than 1 for an agent that does not act at every env step); it does not
        # where a replayed copy of a batch follows the batch itself.
        ends[:-1] |= train_batch[SampleBatch.T][1:] <= train_batch[SampleBatch.T][:-1]
    return ends


# Columns V-trace reads per real step (a recurrent batch's are gathered from its padded sequences).
_STEP_COLUMNS = (
    SampleBatch.ACTIONS,
    SampleBatch.REWARDS,
    SampleBatch.TERMINATEDS,
    SampleBatch.TRUNCATEDS,
    SampleBatch.ACTION_LOGP,
    SampleBatch.UNROLL_ID,
    SampleBatch.EPS_ID,
    SampleBatch.AGENT_INDEX,
    SampleBatch.T,
)


def feed_forward_outputs(model, train_batch: dict, rows_of: int) -> tuple:
    """``(logits, values, columns, piece ends, bootstrap values)`` of a batch of rows: the model runs on the
    observations and on the NEXT_OBS of each piece's last step that did not terminate (its bootstrap)."""
    ends = trajectory_pieces(train_batch, rows_of)
    boot_idx = (ends & ~train_batch[SampleBatch.TERMINATEDS].bool()).nonzero().squeeze(-1)
    obs = train_batch[SampleBatch.OBS]
    logits_all, _ = model(
        {"obs": torch.cat([obs, train_batch[SampleBatch.NEXT_OBS][boot_idx]]), "is_training": True}, [], None
    )
    values_all = model.value_function()
    n = obs.shape[0]
    return logits_all[:n], values_all[:n], train_batch, ends, values_all[n:].detach()


def recurrent_outputs(model, train_batch: dict, rows_of: int) -> tuple:
    """``feed_forward_outputs`` of a padded batch of sequences (the module docstring): the model runs over each
    sequence plus one bootstrap step (its last step's NEXT_OBS, ACTIONS and REWARDS as the next step's
    observation, previous action and reward) from the sequence's start state; the outputs and columns returned
    are the real steps', in row order."""
    mask, seq_lens = train_batch[SEQ_MASK], train_batch[SampleBatch.SEQ_LENS].long()
    num_seq = seq_lens.shape[0]
    length = mask.shape[0] // num_seq
    idx = torch.arange(num_seq, device=mask.device)
    last = seq_lens - 1

    def with_bootstrap_step(steps: torch.Tensor, boot: torch.Tensor) -> torch.Tensor:
        x = steps.reshape(num_seq, length, *steps.shape[1:])
        x = torch.cat([x, x.new_zeros(num_seq, 1, *x.shape[2:])], dim=1)
        x[idx, seq_lens] = boot.to(x.dtype)
        return x.reshape(num_seq * (length + 1), *x.shape[2:])

    def last_step(key: str) -> torch.Tensor:
        return train_batch[key].reshape(num_seq, length, *train_batch[key].shape[1:])[idx, last]

    input_dict = {"obs": with_bootstrap_step(train_batch[SampleBatch.OBS], last_step(SampleBatch.NEXT_OBS))}
    for key, boot in ((SampleBatch.PREV_ACTIONS, SampleBatch.ACTIONS), (SampleBatch.PREV_REWARDS, SampleBatch.REWARDS)):
        if key in train_batch:
            input_dict[key] = with_bootstrap_step(train_batch[key], last_step(boot))
    input_dict["is_training"] = True
    state = [train_batch[k] for k in state_keys(train_batch)]
    logits, _ = model(input_dict, state, seq_lens)
    values = model.value_function().reshape(num_seq, length + 1)
    real = torch.zeros(num_seq, length + 1, dtype=torch.bool, device=mask.device)
    real[:, :length] = mask.reshape(num_seq, length)
    cols = {k: train_batch[k][mask] for k in _STEP_COLUMNS if k in train_batch}
    # Pieces never straddle a sequence: a sequence's last step is a piece's end unless the next sequence
    # continues the piece (only with sequences shorter than the unroll).
    seq_end = torch.zeros_like(real)
    seq_end[idx, last] = True
    ends = trajectory_pieces(cols, rows_of) & seq_end[real]
    boot = values[idx, seq_lens].detach()[torch.repeat_interleave(idx, seq_lens)]
    terminated = cols[SampleBatch.TERMINATEDS].bool()
    return logits[real.flatten()], values[real], cols, ends, boot[ends & ~terminated]


def vtrace_loss(policy, model, dist_class, train_batch: dict) -> tuple[torch.Tensor, dict]:
    """(loss, stats) of a train batch of trajectory pieces (see the module docstring)."""
    config = policy.config
    outputs = recurrent_outputs if SampleBatch.SEQ_LENS in train_batch else feed_forward_outputs
    logits, values, cols, ends, boot_values = outputs(model, train_batch, config["sample_batch_size"])
    n = values.shape[0]
    # A piece that did not terminate bootstraps from the value after its last step: folded into that step.
    boot_idx = (ends & ~cols[SampleBatch.TERMINATEDS].bool()).nonzero().squeeze(-1)
    gamma = config["gamma"]
    rewards = cols[SampleBatch.REWARDS].float().clone()
    rewards[boot_idx] += gamma * boot_values
    discounts = gamma * (~ends).float()

    dist = dist_class(logits, model)
    target_logp = dist.logp(cols[SampleBatch.ACTIONS])
    behaviour_logp = cols[SampleBatch.ACTION_LOGP].float()
    # Row r is step pos[r] of piece piece[r]: padded [pieces, T], then time-major.
    starts = torch.cat([ends.new_ones(1), ends[:-1]])
    piece = torch.cumsum(starts.long(), 0) - 1
    pos = torch.arange(n, device=values.device) - starts.nonzero().squeeze(-1)[piece]
    num_pieces, length = int(piece[-1]) + 1, int(pos.max()) + 1

    def padded(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(num_pieces, length)
        out[piece, pos] = x
        return out.transpose(0, 1)

    vs_tm, pg_advantages_tm = vtrace_from_logits(
        behaviour_logp=padded(behaviour_logp),
        target_logp=padded(target_logp.detach()),
        discounts=padded(discounts),
        rewards=padded(rewards),
        values=padded(values.detach()),
        bootstrap_value=values.new_zeros(num_pieces),
        clip_rho_threshold=config["vtrace_clip_rho_threshold"],
        clip_pg_rho_threshold=config["vtrace_clip_pg_rho_threshold"],
    )
    vs, pg_advantages = vs_tm[pos, piece], pg_advantages_tm[pos, piece]
    pi_loss = -(target_logp * pg_advantages).sum()
    vf_loss = 0.5 * (values - vs).pow(2).sum()
    entropy = dist.entropy().sum()
    total = pi_loss + config["vf_loss_coeff"] * vf_loss + config["entropy_coeff"] * entropy
    with torch.no_grad():
        var_vs = vs.var(unbiased=False)
        explained = 1 - (vs - values).var(unbiased=False) / var_vs if var_vs > 0 else torch.zeros(())
        stats = {
            "policy_loss": pi_loss.detach(),
            "vf_loss": vf_loss.detach(),
            "entropy": entropy.detach() / n,
            "total_loss": total.detach(),
            "vf_explained_var": explained,
            "mean_importance_ratio": torch.exp(target_logp - behaviour_logp).mean(),
        }
    return total, stats


def make_optimizer(policy, config: dict):
    """``opt_type``: "adam" (lr) or "rmsprop" (lr, decay, momentum, epsilon; TF semantics, see RMSprop)."""
    if config["opt_type"] == "adam":
        return Adam(policy.model.parameters(), lr=policy.cur_lr)
    if config["opt_type"] == "rmsprop":
        return RMSprop(
            policy.model.parameters(),
            lr=policy.cur_lr,
            decay=config["decay"],
            momentum=config["momentum"],
            epsilon=config["epsilon"],
        )
    raise ValueError(f"IMPALA config: 'opt_type' must be 'adam' or 'rmsprop', got {config['opt_type']!r}")


def _default_config() -> dict:
    from relayrl.agents.impala.impala import DEFAULT_CONFIG

    return DEFAULT_CONFIG


def unroll_sequences(policy, obs_space, action_space, config: dict) -> None:
    """A recurrent model learns over whole unrolls: sequences of ``sample_batch_size`` steps (the module
    docstring; ``validate_config`` rejects another ``model.max_seq_len``)."""
    policy.max_seq_len = int(config["sample_batch_size"])


VTraceTorchPolicy = build_torch_policy(
    "VTraceTorchPolicy",
    loss_fn=vtrace_loss,
    get_default_config=_default_config,
    optimizer_fn=make_optimizer,
    after_init=unroll_sequences,
    recurrent=True,
)

# vtrace: False -- the A3C loss on GAE advantages, with IMPALA's optimizers.
ImpalaA3CTorchPolicy = build_torch_policy(
    "ImpalaA3CTorchPolicy",
    loss_fn=actor_critic_loss,
    get_default_config=_default_config,
    postprocess_fn=postprocess_advantages,
    needs_value=True,
    optimizer_fn=make_optimizer,
    after_init=unroll_sequences,
    recurrent=True,
)
