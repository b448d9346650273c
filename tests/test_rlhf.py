"""Tests for rmopt.rlhf against hand-computed numbers."""

import math

import pytest
import torch

from rmopt.rlhf import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_estimators,
    last_token_index,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    sequence_kl,
    value_loss,
)

LN2 = 0.6931471805599453
NAN = float("nan")


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        atol=atol,
        rtol=0,
    )


# ----------------------------------------------------------------------------- KL


def test_kl_estimators_hand_values():
    # pi = 0.5, pi_ref = 0.25 -> r = ln 2;  pi = 0.25, pi_ref = 0.5 -> r = -ln 2
    logprobs = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.3)]], dtype=torch.float64)
    ref = torch.tensor([[math.log(0.25), math.log(0.5), math.log(0.3)]], dtype=torch.float64)
    kl = kl_estimators(logprobs, ref)
    # k1 = r
    close(kl["k1"], [[0.6931471805599453, -0.6931471805599453, 0.0]])
    # k2 = r^2 / 2 = 0.480453013918201 / 2
    close(kl["k2"], [[0.2402265069591007, 0.2402265069591007, 0.0]])
    # k3 = exp(-r) - 1 + r: 0.5 - 1 + 0.693147 = 0.193147;  2 - 1 - 0.693147 = 0.306853
    close(kl["k3"], [[0.1931471805599453, 0.3068528194400547, 0.0]])


def test_k3_nonnegative_and_zero_when_equal():
    g = torch.Generator().manual_seed(0)
    logprobs = torch.randn(64, 32, generator=g) * 3
    ref = torch.randn(64, 32, generator=g) * 3
    assert (kl_estimators(logprobs, ref)["k3"] >= 0).all()
    assert (kl_estimators(logprobs, ref)["k2"] >= 0).all()
    same = kl_estimators(logprobs, logprobs.clone())
    for name in ("k1", "k2", "k3"):
        assert torch.equal(same[name], torch.zeros_like(logprobs)), name


def test_sequence_kl_sums_answer_tokens_only():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    close(sequence_kl(per_token, mask), [6.0, 9.0])


# ----------------------------------------------------------------------------- masked statistics


def test_masked_mean_and_var_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 999.0, -7.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    # valid entries 1, 2, 3, 5: mean 2.75; squared deviations 3.0625 + 0.5625 + 0.0625 + 5.0625 = 8.75
    close(masked_mean(x, mask), 2.75)
    close(masked_mean(x, mask, dim=1), [2.0, 5.0])
    close(masked_var(x, mask), 8.75 / 3)
    close(masked_var(x, mask, unbiased=False), 8.75 / 4)
    with pytest.raises(ValueError):
        masked_var(x, torch.zeros_like(mask))


def test_masked_whiten_mean0_var1_and_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 999.0, -7.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    w = masked_whiten(x, mask)
    close(masked_mean(w, mask), 0.0)
    close(masked_var(w, mask), 1.0)
    # std = sqrt(8.75 / 3) = 1.7078251; (1 - 2.75) / std = -1.0246951, (5 - 2.75) / std = 1.3174651
    close(w, [[-1.0246951, -0.4391550, 0.1463850], [1.3174651, 0.0, 0.0]])
    x2 = x.clone()
    x2[1, 1:] = torch.tensor([-1e6, NAN])
    assert torch.equal(masked_whiten(x2, mask), w)
    # shift_mean=False keeps the mean: valid entries = whitened + 2.75
    close(masked_whiten(x, mask, shift_mean=False), [[1.7253049, 2.3108450, 2.8963850], [4.0674651, 0, 0]])


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 0, 3]
    assert last_token_index(mask).dtype == torch.long
    with pytest.raises(ValueError):
        last_token_index(torch.tensor([[1, 1, 0], [0, 0, 0]]))


# ----------------------------------------------------------------------------- rewards


def test_per_token_rewards_score_at_last_valid_token_only():
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    logprobs = torch.randn(3, 4, generator=g)
    ref = torch.randn(3, 4, generator=g)
    scores = torch.tensor([2.0, -3.0, 0.5])
    rewards, kl = per_token_rewards(scores, logprobs, ref, mask, kl_coef=0.0)
    assert torch.equal(
        rewards,
        torch.tensor([[0.0, 0.0, 2.0, 0.0], [-3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]]),
    )
    # kl is still reported (k1 = r on answer tokens, 0 on padding)
    assert torch.equal(kl, torch.where(mask.bool(), logprobs - ref, 0.0))


def test_per_token_rewards_kl_penalty_hand_values_and_padding():
    # pi = 0.5, pi_ref = 0.25 on every token -> r = ln 2 per token; padded log-probs are NaN
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    logprobs = torch.full((2, 3), math.log(0.5), dtype=torch.float64)
    ref = torch.full((2, 3), math.log(0.25), dtype=torch.float64)
    logprobs[0, 2] = NAN
    rewards, kl = per_token_rewards(torch.tensor([2.0, 1.0]), logprobs, ref, mask, kl_coef=0.1)
    # row 0: [-0.1 ln2, -0.1 ln2 + 2, 0]; row 1: [-0.1 ln2, -0.1 ln2, -0.1 ln2 + 1]
    close(rewards, [[-0.0693147, 1.9306853, 0.0], [-0.0693147, -0.0693147, 0.9306853]])
    close(kl, [[LN2, LN2, 0.0], [LN2, LN2, LN2]])
    # k3 = 0.5 - 1 + ln 2 = 0.1931472 -> penalty -0.0193147
    rewards3, _ = per_token_rewards(torch.tensor([0.0, 0.0]), logprobs, ref, mask, 0.1, kl_estimator="k3")
    close(rewards3, [[-0.0193147, -0.0193147, 0.0], [-0.0193147, -0.0193147, -0.0193147]])
    with pytest.raises(ValueError):
        per_token_rewards(torch.tensor([0.0, 0.0]), logprobs, ref, mask, 0.1, kl_estimator="k4")


def test_per_token_rewards_score_clip():
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    zeros = torch.zeros(3, 2)
    rewards, _ = per_token_rewards(torch.tensor([5.0, -5.0, 0.5]), zeros, zeros, mask, 0.1, score_clip=1.0)
    assert torch.equal(rewards, torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.0, 0.5]]))


# ----------------------------------------------------------------------------- GAE


def test_gae_hand_example_with_padding():
    # gamma = 1, lam = 0.95
    # row 0 (3 valid): r = [1, 0, 2], V = [0.5, 1.0, 1.5]
    #   t=2: delta = 2 + 0   - 1.5 = 0.5;  A2 = 0.5
    #   t=1: delta = 0 + 1.5 - 1.0 = 0.5;  A1 = 0.5 + 0.95 * 0.5   = 0.975
    #   t=0: delta = 1 + 1.0 - 0.5 = 1.5;  A0 = 1.5 + 0.95 * 0.975 = 2.42625
    #   returns = A + V = [2.92625, 1.975, 2.0]
    # row 1 (2 valid, the third entry is padding with garbage reward/value):
    #   t=1: delta = 1.0 + 0 (terminal) - 0.4 = 0.6;  A1 = 0.6
    #   t=0: delta = 0.5 + 0.4 - 0.2 = 0.7;           A0 = 0.7 + 0.95 * 0.6 = 1.27
    #   returns = [1.47, 1.0, 0]
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 9.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 1.0, 1.5], [0.2, 0.4, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    close(adv, [[2.42625, 0.975, 0.5], [1.27, 0.6, 0.0]])
    close(ret, [[2.92625, 1.975, 2.0], [1.47, 1.0, 0.0]])
    assert adv[1, 2] == 0


def test_gae_discount():
    # gamma = 0.9, lam = 0.5, r = [1, 1], V = [0, 0]:
    #   A1 = 1;  A0 = 1 + 0.9 * 0 - 0 + 0.9 * 0.5 * 1 = 1.45
    adv, ret = gae(torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.9, lam=0.5)
    close(adv, [[1.45, 1.0]])
    close(ret, [[1.45, 1.0]])


# ----------------------------------------------------------------------------- losses


def test_policy_loss_ratio_one_is_minus_mean_advantage():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -4.0, NAN]])
    adv = torch.tensor([[1.0, -2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, stats = policy_loss(logprobs, logprobs.clone(), adv, mask)
    # valid advantages 1, -2, 3, 4 -> mean 1.5
    close(loss, -1.5)
    close(stats["clipfrac"], 0.0)
    close(stats["approx_kl"], 0.0)
    close(stats["ratio_mean"], 1.0)


def test_policy_loss_clipping_hand_case():
    # token 0: ratio 1.5, A = +1 -> max(-1.5, -1.2) = -1.2 (clipped branch, no gradient)
    # token 1: ratio 1.5, A = -1 -> max( 1.5,  1.2) =  1.5 (unclipped branch)
    # token 2: ratio 1.0, A = +2 -> -2
    # token 3: padding
    # loss = (-1.2 + 1.5 - 2) / 3 = -0.5666667
    old = torch.tensor([[-1.0, -2.0, -0.7, -1.0]], dtype=torch.float64)
    logprobs = (old + torch.tensor([[math.log(1.5), math.log(1.5), 0.0, 5.0]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 2.0, 50.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = policy_loss(logprobs, old, adv, mask, clip=0.2)
    close(loss, -0.5666667)
    # CleanRL clipfrac: |ratio - 1| > 0.2 on 2 of 3 valid tokens
    close(stats["clipfrac"], 2 / 3)
    # approx_kl: (0.5 - ln 1.5) = 0.0945349 on two tokens, 0 on the third -> 0.0630233
    close(stats["approx_kl"], 0.0630233)
    close(stats["ratio_mean"], (1.5 + 1.5 + 1.0) / 3)
    loss.backward()
    # d/dlogp of -A*ratio/3 = -A*ratio/3: token 1 -> 1.5/3 = 0.5, token 2 -> -2/3; clipped token 0 -> 0
    close(logprobs.grad, [[0.0, 0.5, -0.6666667, 0.0]])


def test_value_loss_clipping_hand_case():
    # clip 0.2
    # a: old 1.0, v 1.5,  R 2.0:  (v-R)^2 = 0.25, v_clip 1.2  -> 0.64; max 0.64 (clipped chosen)
    # b: old 1.0, v 1.1,  R 0.0:  1.21, v_clip 1.1 -> 1.21;          max 1.21
    # c: old 0.0, v -0.5, R -1.0: 0.25, v_clip -0.2 -> 0.64;         max 0.64 (clipped chosen)
    # d: old 0.0, v 0.5,  R -1.0: 2.25, v_clip 0.2  -> 1.44;         max 2.25 (unclipped chosen)
    # loss = 0.5 * (0.64 + 1.21 + 0.64 + 2.25) / 4 = 0.5925; vf_clipfrac = 2 / 4
    values = torch.tensor([[1.5, 1.1, -0.5, 0.5, 3.0]])
    old = torch.tensor([[1.0, 1.0, 0.0, 0.0, NAN]])
    returns = torch.tensor([[2.0, 0.0, -1.0, -1.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    close(loss, 0.5925)
    close(stats["vf_clipfrac"], 0.5)


def test_value_loss_without_clipping():
    # v = old, so no clipping: 0.5 * mean((1 - 0)^2, (2 - 4)^2) = 0.5 * 2.5 = 1.25
    values = torch.tensor([[1.0, 2.0, 7.0]])
    returns = torch.tensor([[0.0, 4.0, -7.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = value_loss(values, values.clone(), returns, mask)
    close(loss, 1.25)
    close(stats["vf_clipfrac"], 0.0)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 60.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    close(explained_variance(returns.clone(), returns, mask), 1.0)
    # predicting the mean of the valid returns (2.5) explains nothing
    close(explained_variance(torch.full_like(returns, 2.5), returns, mask), 0.0)
    # V = [1, 2, 3, 3] vs R = [1, 2, 3, 4]: Var(residual [0,0,0,1]) = 0.1875, Var(R) = 1.25 -> 0.85
    values = torch.tensor([[1.0, 2.0, 3.0], [3.0, -9.0, -9.0]])
    close(explained_variance(values, returns, mask), 0.85)


# ----------------------------------------------------------------------------- logits


def test_entropy_and_logprobs_from_logits():
    # probs [0.5, 0.25, 0.25]: H = 0.5 ln 2 + 0.5 ln 4 = 1.0397208; uniform over 4: ln 4 = 1.3862944
    logits = torch.tensor(
        [[[math.log(0.5) + 3, math.log(0.25) + 3, math.log(0.25) + 3, -math.inf], [1.0, 1.0, 1.0, 1.0]]]
    )
    close(entropy_from_logits(logits), [[1.0397208, 1.3862944]])
    labels = torch.tensor([[1, 3]])
    close(logprobs_from_logits(logits, labels), [[-1.3862944, -1.3862944]])
    close(logprobs_from_logits(logits, torch.tensor([[0, 0]])), [[-LN2, -1.3862944]])
    lp_bf16 = logprobs_from_logits(logits.to(torch.bfloat16), labels)
    assert lp_bf16.shape == (1, 2)
    close(lp_bf16, [[-1.3862944, -1.3862944]], atol=2e-2)


# ----------------------------------------------------------------------------- KL controllers


def test_fixed_kl_controller_unchanged():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 1000)
    assert ctl.value == 0.05


def test_adaptive_kl_controller_one_update():
    # init 0.1, target 6, horizon 10000
    # KL 9: error = 9/6 - 1 = 0.5 -> clipped to 0.2; mult = 1 + 0.2 * 256 / 10000 = 1.00512 -> 0.100512
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, n_steps=256)
    assert ctl.value == pytest.approx(0.100512, abs=1e-12)
    # KL 5.4: error = 0.9 - 1 = -0.1; mult = 1 - 0.1 * 1000 / 10000 = 0.99 -> 0.1 * 0.99 = 0.099
    ctl = AdaptiveKLController(0.1, target=6.0)
    ctl.update(5.4, n_steps=1000)
    assert ctl.value == pytest.approx(0.099, abs=1e-12)


# --- critic-free baselines (GRPO, RLOO) ------------------------------------------------------------------


def test_group_advantages_by_hand():
    from rmopt.rlhf import group_advantages

    scores = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0])  # two prompts, three answers each
    # group 1: mean 2, unbiased std 1 -> -1, 0, 1; group 2: mean 4/3, std sqrt(16/3) = 2.3094
    scaled = group_advantages(scores, 3, eps=0.0)
    torch.testing.assert_close(scaled, torch.tensor([-1.0, 0.0, 1.0, -0.57735, -0.57735, 1.15470]), atol=1e-5, rtol=0)
    unscaled = group_advantages(scores, 3, scale_rewards=False)  # Dr. GRPO
    torch.testing.assert_close(unscaled, torch.tensor([-1.0, 0.0, 1.0, -4 / 3, -4 / 3, 8 / 3]))
    # a group of equal scores has no signal: zero advantages, not NaN
    assert group_advantages(torch.tensor([2.0, 2.0]), 2).tolist() == [0.0, 0.0]


def test_leave_one_out_baseline_and_advantages_by_hand():
    from rmopt.rlhf import leave_one_out_advantages, leave_one_out_baseline

    scores = torch.tensor([1.0, 2.0, 6.0, 3.0])  # two prompts, two answers each
    assert leave_one_out_baseline(scores, 2).tolist() == [2.0, 1.0, 3.0, 6.0]
    assert leave_one_out_advantages(scores, 2).tolist() == [-1.0, 1.0, 3.0, -3.0]
    # G / (G - 1) times the centred score, and brute force over each answer's others
    scores = torch.tensor([0.5, -1.0, 2.0, 4.0])
    brute = [scores[i] - torch.stack([scores[j] for j in range(4) if j != i]).mean() for i in range(4)]
    torch.testing.assert_close(leave_one_out_advantages(scores, 4), torch.stack(brute))
    torch.testing.assert_close(leave_one_out_advantages(scores, 4), 4 / 3 * (scores - scores.mean()))


def test_group_sizes_that_cannot_give_a_baseline_are_refused():
    from rmopt.rlhf import group_advantages, leave_one_out_baseline

    with pytest.raises(ValueError, match="group_size must be an integer of at least 2"):
        leave_one_out_baseline(torch.ones(4), 1)
    with pytest.raises(ValueError, match="5 scores do not split into groups of 2"):
        group_advantages(torch.ones(5), 2)


def test_sequence_rewards_fold_the_summed_kl_into_the_score():
    from rmopt.rlhf import sequence_rewards

    logprobs = torch.tensor([[-1.0, -2.0, 9.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -1.0, -2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])  # the 9.0 is padding and never read
    rewards, kl = sequence_rewards(torch.tensor([1.0, 2.0]), logprobs, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([0.5 - 1.0, 0.0 + 0.5 + 1.5]))  # k1 summed over answer tokens
    torch.testing.assert_close(rewards, torch.tensor([1.0 + 0.05, 2.0 - 0.2]))


def test_kl_loss_is_the_masked_mean_of_k3_and_has_its_gradient():
    from rmopt.rlhf import kl_loss

    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, 3.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0], [-0.5, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss = kl_loss(logprobs, ref, mask)
    r = torch.tensor([0.5, -1.0, 0.0])
    expected = (torch.exp(-r) - 1 + r).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # d/dr (e^-r - 1 + r) / 3 = (1 - e^-r) / 3 on valid tokens, 0 on padding
    torch.testing.assert_close(logprobs.grad, torch.tensor([[(1 - math.exp(-0.5)) / 3, (1 - math.exp(1.0)) / 3], [0.0, 0.0]]))
