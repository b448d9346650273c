"""Pure PPO / RLHF math as small torch functions (no I/O, no models, no framework code).

In the spirit of torchtune's ``rlhf`` module and CleanRL's PPO. Conventions:

* Tensors are batch-first ``[B, T]`` over the *response (answer)* tokens only.
* ``mask`` ``[B, T]`` (bool or float) marks real answer tokens (1) vs padding (0). Answers are
  usually right-padded, but every function here works from the mask alone: values at padded
  positions are never read into a statistic (they may even be NaN/inf), and outputs at padded
  positions are 0 unless stated otherwise.
* KL estimators use ``r = log pi - log pi_ref`` per token: ``k1 = r``, ``k2 = r^2 / 2``,
  ``k3 = exp(-r) - 1 + r`` (always >= 0). ``per_token_rewards`` trains on the one named by
  ``kl_estimator`` (default ``"k1"``, as in trlx / the released code); log all three.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "group_advantages",
    "kl_loss",
    "leave_one_out_advantages",
    "leave_one_out_baseline",
    "sequence_rewards",
    "kl_estimators",
    "last_token_index",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "per_token_rewards",
    "policy_loss",
    "sequence_kl",
    "token_kl_from_logits",
    "value_loss",
]

KL_ESTIMATORS = ("k1", "k2", "k3")


# ----------------------------------------------------------------------------- helpers


def _bool_mask(mask: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``mask`` as a bool tensor, checking its shape against ``like`` if given."""
    if like is not None and mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match tensor shape {tuple(like.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _zero_pad(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with padded positions replaced by 0 (NaN/inf there cannot leak, unlike ``x * mask``)."""
    return torch.where(_bool_mask(mask, x), x, torch.zeros((), dtype=x.dtype, device=x.device))


# ----------------------------------------------------------------------------- KL


def kl_estimators(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token KL(pi || pi_ref) estimators from sampled-token log-probs (Schulman's k1/k2/k3).

    With ``r = logprobs - ref_logprobs`` (log pi - log pi_ref, tokens sampled from pi):
    ``k1 = r`` (unbiased, can be negative), ``k2 = r^2 / 2`` (biased, >= 0),
    ``k3 = exp(-r) - 1 + r`` (unbiased, always >= 0). Returns ``{"k1", "k2", "k3"}``, same shape.
    """
    r = logprobs - ref_logprobs
    return {"k1": r, "k2": 0.5 * r.square(), "k3": torch.expm1(-r) + r}


def token_kl_from_logits(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(pi(.|s) || pi_ref(.|s)) at each position, summed over the vocabulary: ``[..., V] -> [...]``.

    ``sum_v pi(v) (log pi(v) - log pi_ref(v))`` with both distributions from their logits (apply a
    sampling temperature to both first). Summed along an answer sampled from pi, it is an unbiased
    estimate of the sequence KL with lower variance than k1 (which reads only the sampled token).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    p = logp.exp()
    # 0 * (log 0 - x) = 0: tokens the policy gives no mass contribute nothing, even where pi_ref is 0 too
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros((), dtype=p.dtype, device=p.device))
    return terms.sum(dim=-1)


def sequence_kl(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of a per-token quantity ``[B, T]`` over the answer tokens of each row -> ``[B]``."""
    return _zero_pad(per_token, mask).sum(dim=-1)


# ----------------------------------------------------------------------------- masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is set (over all dims, or along ``dim``).

    Padded values are ignored entirely. A slice with no valid entries gives NaN (0 / 0).
    """
    m = _bool_mask(mask, x)
    total = _zero_pad(x, m)
    count = m.to(x.dtype)
    if dim is None:
        return total.sum() / count.sum()
    return total.sum(dim=dim) / count.sum(dim=dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all valid entries (a scalar); Bessel-corrected if ``unbiased``.

    Raises ValueError if there are no valid entries, or only one with ``unbiased=True``.
    """
    m = _bool_mask(mask, x)
    n = int(m.sum().item())
    if n == 0:
        raise ValueError("masked_var: mask has no valid entries")
    if unbiased and n == 1:
        raise ValueError("masked_var: unbiased variance needs at least 2 valid entries")
    mean = masked_mean(x, m)
    var = masked_mean((x - mean).square(), m)
    if unbiased:
        var = var * (n / (n - 1))
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, unbiased: bool = True
) -> torch.Tensor:
    """Whiten ``x`` with the mean and variance of its valid entries only: ``(x - mean) / sqrt(var + 1e-8)``.

    With ``shift_mean=False`` the mean is added back (only the scale changes), as in trl/trlx.
    The variance is the unbiased one by default (as trl). Padded positions of the output are 0.
    """
    m = _bool_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=unbiased)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_pad(whitened, m)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index ``[B]`` (long) of the last valid token of each row: the answer's EOS position.

    Works from the mask alone (any padding side). Raises ValueError if a row has no valid token.
    """
    m = _bool_mask(mask)
    if m.dim() != 2:
        raise ValueError(f"last_token_index expects a [B, T] mask, got shape {tuple(m.shape)}")
    if not bool(m.any(dim=-1).all()):
        raise ValueError("last_token_index: some row has no valid tokens")
    positions = torch.arange(m.shape[-1], device=m.device).expand_as(m)
    return torch.where(m, positions, torch.full_like(positions, -1)).amax(dim=-1)


# ----------------------------------------------------------------------------- rewards and advantages


def per_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
    score_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO rewards: KL penalty on every answer token plus the sequence score at its EOS.

    ``rewards[b, t] = -kl_coef * kl[b, t]`` on answer tokens (0 on padding), and the sequence score
    ``scores[b]`` (optionally clipped to ``[-score_clip, score_clip]``) is added at the LAST VALID
    token of row ``b`` (``last_token_index``), never past it. ``kl`` is the chosen estimator
    (``"k1"``, ``"k2"`` or ``"k3"`` of ``kl_estimators``) with 0 on padding.
    Returns ``(rewards [B, T], kl [B, T])``.
    """
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    m = _bool_mask(mask, logprobs)
    kl = _zero_pad(kl_estimators(logprobs, ref_logprobs)[kl_estimator], m)
    rewards = -kl_coef * kl
    scores = torch.as_tensor(scores, dtype=rewards.dtype, device=rewards.device).reshape(-1)
    if scores.shape[0] != rewards.shape[0]:
        raise ValueError(f"scores has {scores.shape[0]} entries for a batch of {rewards.shape[0]}")
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards = rewards.index_put((rows, last_token_index(m)), scores, accumulate=True)
    return rewards, kl


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the answer tokens (computed without gradients).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, where
    values (and advantages) beyond the last valid token count as 0: the episode ends at the EOS.
    Rewards and values at padded positions are ignored. Vectorised over the batch, a reverse loop
    over T. Returns ``(advantages, returns)`` with ``returns = advantages + values``; both are 0
    on padding.
    """
    m = _bool_mask(mask, rewards)
    if values.shape != rewards.shape:
        raise ValueError(f"values shape {tuple(values.shape)} != rewards shape {tuple(rewards.shape)}")
    r = _zero_pad(rewards, m)
    v = _zero_pad(values, m)
    mf = m.to(r.dtype)
    T = r.shape[-1]
    advantages = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(r[:, 0])
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mf[:, t]
        advantages[:, t] = next_adv
        next_value = v[:, t]
    returns = advantages + v
    return advantages, returns


# ----------------------------------------------------------------------------- losses


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss, masked mean over answer tokens.

    ``ratio = exp(logprobs - old_logprobs)``;
    ``loss = mean(max(-A * ratio, -A * clamp(ratio, 1 - clip, 1 + clip)))``.
    Stats (detached scalars): ``clipfrac`` = fraction of valid tokens with ``|ratio - 1| > clip``
    (CleanRL's definition), ``approx_kl`` = mean of ``(ratio - 1) - log ratio`` (CleanRL, k3-style),
    ``ratio_mean`` = mean ratio.
    """
    m = _bool_mask(mask, logprobs)
    log_ratio = _zero_pad(logprobs - old_logprobs, m)
    ratio = torch.exp(log_ratio)
    adv = _zero_pad(advantages, m)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), m)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(((ratio - 1.0).abs() > clip).to(ratio.dtype), m),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, m),
            "ratio_mean": masked_mean(ratio, m),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped value loss, masked mean over answer tokens.

    ``v_clipped = old_values + clamp(values - old_values, -clip, clip)``;
    ``loss = 0.5 * mean(max((values - R)^2, (v_clipped - R)^2))``.
    Stats (detached): ``vf_clipfrac`` = fraction of valid tokens where the clipped term is the
    larger one, i.e. the clipped branch was chosen (trl's definition).
    """
    m = _bool_mask(mask, values)
    v = _zero_pad(values, m)
    old = _zero_pad(old_values, m)
    ret = _zero_pad(returns, m)
    v_clipped = old + torch.clamp(v - old, -clip, clip)
    loss_unclipped = (v - ret).square()
    loss_clipped = (v_clipped - ret).square()
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), m)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((loss_clipped > loss_unclipped).to(v.dtype), m)}
    return loss, stats


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var(returns - values) / Var(returns)`` over valid tokens (a scalar tensor).

    1 for perfect value predictions, 0 for predicting the mean, negative if worse; NaN if the
    returns have zero variance (as CleanRL).
    """
    m = _bool_mask(mask, values)
    var_returns = masked_var(returns, m, unbiased=False)
    var_residual = masked_var(returns - values, m, unbiased=False)
    if float(var_returns) == 0.0:
        return torch.full_like(var_returns, math.nan)
    return 1.0 - var_residual / var_returns


# ----------------------------------------------------------------------------- logits


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the categorical distribution at each position: ``[..., V] -> [...]``.

    Safe with ``-inf`` logits (0 * log 0 = 0).
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.special.entr(probs).sum(dim=-1)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``labels`` under ``logits``: ``[..., V]``, ``[...]`` -> ``[...]``.

    Memory-aware: for float32/64 it gathers the label logits and subtracts ``logsumexp`` (no full
    log-softmax tensor is materialised); for half/bfloat16 it runs ``log_softmax`` in float32 one
    row of the leading dimension at a time and returns float32.
    """
    index = labels.long().unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, dim=-1, index=index).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    rows = [
        torch.gather(F.log_softmax(row.float(), dim=-1), dim=-1, index=row_index).squeeze(-1)
        for row, row_index in zip(logits, index, strict=True)
    ]
    return torch.stack(rows)


# ----------------------------------------------------------------------------- critic-free baselines (GRPO, RLOO)


def _grouped(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B]`` scores, ``group_size`` consecutive answers per prompt -> ``[B / group_size, group_size]``."""
    if int(group_size) != group_size or group_size < 2:
        raise ValueError(f"group_size must be an integer of at least 2 (a baseline needs other answers), got {group_size!r}")
    scores = torch.as_tensor(scores).reshape(-1)
    if scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores do not split into groups of {group_size}")
    return scores.reshape(-1, int(group_size))


def group_advantages(scores: torch.Tensor, group_size: int, scale_rewards: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantage of each answer relative to its group: ``r - mean(group)``, divided by
    ``std(group) + eps`` (unbiased std, as TRL) when ``scale_rewards`` (false: Dr. GRPO's unscaled form).

    ``scores`` ``[B]`` hold ``group_size`` consecutive answers to each prompt. Returns ``[B]``.
    """
    g = _grouped(scores, group_size).float()
    centred = g - g.mean(dim=1, keepdim=True)
    if scale_rewards:
        centred = centred / (g.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def leave_one_out_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's baseline of each answer: the mean score of the other ``group_size - 1`` answers to its prompt. ``[B]``."""
    g = _grouped(scores, group_size).float()
    return ((g.sum(dim=1, keepdim=True) - g) / (group_size - 1)).reshape(-1)


def leave_one_out_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's advantage: each answer's score minus its leave-one-out baseline, ``G / (G - 1) (r - mean)``. ``[B]``."""
    return torch.as_tensor(scores).reshape(-1).float() - leave_one_out_baseline(scores, group_size)


def sequence_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole answer's reward with the KL penalty folded in: ``score - kl_coef * sum_t kl_t`` (RLOO, and GRPO
    with the KL as a reward penalty): :func:`per_token_rewards` summed along each answer.
    Returns ``(rewards [B], sequence kl [B])``."""
    rewards, kl = per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, kl_estimator)
    return rewards.sum(dim=-1), kl.sum(dim=-1)


def kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_estimator: str = "k3") -> torch.Tensor:
    """GRPO's KL term: the masked mean over answer tokens of a per-token KL(pi || pi_ref) estimator (k3 by
    default, as DeepSeekMath), differentiable in ``logprobs``; the loss adds ``beta`` times it."""
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    m = _bool_mask(mask, logprobs)
    return masked_mean(kl_estimators(logprobs, ref_logprobs)[kl_estimator], m)


# ----------------------------------------------------------------------------- KL controllers


class FixedKLController:
    """Constant KL coefficient (the paper's runs: 0 or 0.01). ``update`` is a no-op."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Do nothing: the coefficient stays fixed."""
        return None


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. (2019), as implemented in trlx.

    After a batch of ``n_steps`` samples whose (sequence-level) KL is ``current_kl``::

        proportional_error = clip(current_kl / target - 1, -0.2, 0.2)
        value *= 1 + proportional_error * n_steps / horizon

    so the coefficient grows when KL is above ``target`` and shrinks when below, at most 20% per
    ``horizon`` samples. The released config used ``init_kl_coef=0.1, target=6``.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int = 10000):
        if target <= 0:
            raise ValueError(f"target KL must be positive, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move ``value`` proportionally towards keeping ``current_kl`` at ``target``."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
