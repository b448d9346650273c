"""Measurements: the exact KL, standard errors over prompts, and the PPO evaluation's KL axis."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import compose, save_stand_in_rms

from rmopt.bon import best_of_n_per_prompt, exact_best_of_n_reference, unbiased_best_of_n
from rmopt.rlhf import token_kl_from_logits
from rmopt.stats import excludes_zero, group_means, mean_and_se, ratio_and_se, standard_error, t95


def test_token_kl_by_hand_and_with_zero_mass():
    p, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.25, 0.5])
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    assert float(token_kl_from_logits(p.log(), q.log())) == pytest.approx(expected, abs=1e-6)
    # a token the policy never emits contributes nothing, even where the reference gives it no mass either
    logits = torch.tensor([0.0, float("-inf"), 0.0])
    assert float(token_kl_from_logits(logits, torch.tensor([0.0, float("-inf"), 0.0]))) == 0.0
    assert float(token_kl_from_logits(logits, torch.tensor([0.0, 0.0, 0.0]))) == pytest.approx(math.log(3 / 2), abs=1e-6)


def test_summed_token_kl_is_unbiased_for_the_sequence_kl():
    """Brute force over every two-token sequence of a tiny model: E_pi[sum_t KL_t] = KL(pi || pi_ref) of sequences."""
    g = torch.Generator().manual_seed(0)
    V = 3
    first, ref_first = torch.randn(V, generator=g), torch.randn(V, generator=g)
    second, ref_second = torch.randn(V, V, generator=g), torch.randn(V, V, generator=g)  # logits given token 1
    lp1, lq1 = first.log_softmax(-1), ref_first.log_softmax(-1)
    lp2, lq2 = second.log_softmax(-1), ref_second.log_softmax(-1)
    sequence_kl = sum(
        math.exp(lp1[a] + lp2[a, b]) * float(lp1[a] + lp2[a, b] - lq1[a] - lq2[a, b])
        for a, b in itertools.product(range(V), repeat=2)
    )
    kl1 = float(token_kl_from_logits(first, ref_first))
    expected_sum = sum(math.exp(lp1[a]) * (kl1 + float(token_kl_from_logits(second[a], ref_second[a]))) for a in range(V))
    assert expected_sum == pytest.approx(sequence_kl, rel=1e-5)


def test_standard_errors_by_hand():
    assert standard_error([1.0, 2.0, 3.0, 6.0]) == pytest.approx(math.sqrt(14 / 3) / 2)
    assert math.isnan(standard_error([1.0]))
    np.testing.assert_allclose(standard_error([[1.0, 5.0], [3.0, 5.0]], axis=0), [1.0, 0.0])
    groups, means = group_means([1.0, 3.0, 10.0, 0.0, 2.0], [7, 7, 2, 2, 7])
    assert groups == [7, 2] and means.tolist() == [2.0, 5.0]
    mean, se = mean_and_se([0.1, 0.3])
    assert (mean, se) == (pytest.approx(0.2), pytest.approx(0.1))
    assert excludes_zero(1.0, 0.5) and not excludes_zero(1.0, 0.52) and excludes_zero(-1.0, 0.1)
    assert t95(2) == pytest.approx(4.303) and t95(1) == pytest.approx(12.706) and t95(100) == 1.96
    assert not excludes_zero(1.0, float("nan"))


def test_ratio_of_means_and_its_delta_method_error_by_hand():
    # a = (1, 3), b = (2, 2): r = 2 / 2 = 1; residuals a - b = (-1, 1): SE 1, over mean(b) = 2 -> 0.5
    assert ratio_and_se([1.0, 3.0], [2.0, 2.0]) == (pytest.approx(1.0), pytest.approx(0.5))
    # a proportional to b per prompt: the ratio is exact, its SE zero (the paired covariance counts)
    assert ratio_and_se([2.0, 4.0, 8.0], [1.0, 2.0, 4.0]) == (pytest.approx(2.0), pytest.approx(0.0, abs=1e-12))
    assert all(math.isnan(v) for v in ratio_and_se([1.0, 2.0], [1.0, -1.0]))


def test_best_of_n_per_prompt_is_each_prompts_exact_estimate():
    rng = np.random.default_rng(3)
    proxy = rng.normal(size=(5, 9)).astype(np.float32)
    proxy[2, :4] = 0.5  # ties
    gold = rng.normal(size=(5, 9)).astype(np.float32)
    ns = [1, 2, 5, 9]
    per_prompt = best_of_n_per_prompt(proxy, gold, ns, chunk=2)
    for p in range(5):
        exact = exact_best_of_n_reference(proxy[p : p + 1], gold[p : p + 1], ns)
        np.testing.assert_allclose(per_prompt["gold_score"][:, p], exact["gold_score"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(per_prompt["proxy_score"][:, p], exact["proxy_score"], rtol=1e-6, atol=1e-7)
    mean = unbiased_best_of_n(proxy, gold, ns)
    np.testing.assert_allclose(per_prompt["gold_score"].mean(1), mean["gold_score"], rtol=1e-12)


# ------------------------------------------------------------------------- PPO evaluation


@pytest.fixture(scope="module")
def rm_dirs(toy_sft_dir, tmp_path_factory):
    return save_stand_in_rms(toy_sft_dir, tmp_path_factory.mktemp("rms"))


def _module(toy_sft_dir, rm_dirs, out, *overrides):
    from rmopt.ppo import build_module

    cfg = compose(
        "ppo",
        [
            "experiment=toy", f"model.name_or_path={toy_sft_dir}", f'proxy_rm_path="{rm_dirs}/rm_seed{{seed}}"',
            "seeds=[1,2]", f"output_dir={out}", "logger=none", "max_new_tokens=12", "eval_prompts=8",
            "num_layers_unfrozen=1", *overrides,
        ],
        output_dir=out / "hydra",
    )
    module = build_module(cfg)
    with torch.no_grad():  # move the policy away from the reference so the KL is far from 0
        g = torch.Generator().manual_seed(0)
        for p in module.policy.lm.parameters():
            if p.requires_grad:
                p.add_(0.6 * p.std() * torch.randn(p.shape, generator=g))
    return module


@torch.no_grad()
def _monte_carlo_kl(module, temperature: float, answers_per_prompt: int, seed: int) -> np.ndarray:
    """Per-prompt KL(pi || pi_ref) at ``temperature`` by plain sampling (full forwards, no cache) and the
    sampled answers' log-ratio k1 = log pi(a) - log pi_ref(a): nothing shared with the module's evaluation."""
    from rmopt.generation import encode_prompts

    lm, ref, tok = module.policy.lm.eval(), module.reference, module.tokenizer
    g = torch.Generator().manual_seed(seed)
    ev = module.eval_prompts
    per_prompt = []
    for prompt in encode_prompts(tok, list(ev["instruction"]), list(ev["input"])):
        x = torch.tensor([prompt] * answers_per_prompt)
        k1, done = torch.zeros(answers_per_prompt), torch.zeros(answers_per_prompt, dtype=torch.bool)
        for _ in range(module.s.max_new_tokens):
            logp = (lm(x).logits[:, -1].float() / temperature).log_softmax(-1)
            logq = (ref(x).logits[:, -1].float() / temperature).log_softmax(-1)
            token = torch.multinomial(logp.exp(), 1, generator=g)
            k1 += torch.where(done, 0.0, (logp.gather(1, token) - logq.gather(1, token)).squeeze(1))
            done |= token.squeeze(1) == tok.eos_token_id
            x = torch.cat([x, token], dim=1)
            if bool(done.all()):
                break
        per_prompt.append(float(k1.mean()))
    return np.array(per_prompt)


@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_eval_kl_is_the_trained_policys_kl_whatever_the_eval_settings(toy_sft_dir, rm_dirs, tmp_path, temperature):
    module = _module(toy_sft_dir, rm_dirs, tmp_path, f"temperature={temperature}", "eval_temperature=0.5",
                     "eval_top_p=0.9", "eval_samples=96", "eval_prompts=16")
    record = module.evaluate(0)
    assert record["settings"]["temperature"] == 0.5 and record["settings"]["top_p"] == 0.9
    assert record["settings"]["train_temperature"] == temperature and record["settings"]["samples"] == 96
    mc = _monte_carlo_kl(module, temperature, answers_per_prompt=96, seed=1)
    assert mc.mean() > 0.3  # the perturbation moved the policy: the test can tell a wrong KL from a right one
    for key in ("kl_per_prompt", "kl_k1_per_prompt"):  # paired over prompts: prompt-to-prompt spread cancels
        diff, se = mean_and_se(np.asarray(record[key]) - mc)
        assert abs(diff) < 4 * se, (key, diff, se, record[key], mc)
        assert 4 * se < 0.3 * mc.mean()  # tight enough to catch a KL 30% off
    # proxy-scored answers were sampled at 0.5 / 0.9: no per-answer KL on them
    assert "kl" not in record["rows"][0] and len(record["rows"]) == 16 * 96


def test_eval_at_the_training_settings_keeps_each_answers_kl_and_its_standard_errors(toy_sft_dir, rm_dirs, tmp_path):
    module = _module(toy_sft_dir, rm_dirs, tmp_path, "eval_samples=3", "eval_prompts=4")
    record = module.evaluate(0)
    rows = record["rows"]
    assert len(rows) == 12 and [r["prompt"] for r in rows] == [p for p in range(4) for _ in range(3)]
    per_prompt_kl = [np.mean([r["kl"] for r in rows if r["prompt"] == p]) for p in range(4)]
    per_prompt_proxy = [np.mean([r["proxy"] for r in rows if r["prompt"] == p]) for p in range(4)]
    assert record["kl"] == pytest.approx(np.mean(per_prompt_kl))
    assert record["kl_se"] == pytest.approx(np.std(per_prompt_kl, ddof=1) / 2)
    assert record["proxy_se"] == pytest.approx(np.std(per_prompt_proxy, ddof=1) / 2)
    assert record["kl_per_prompt"] == pytest.approx(per_prompt_kl)
    assert all(r["kl"] >= 0 for r in rows)  # the exact per-token KL is never negative (k1 can be)


def test_gold_scores_carry_their_standard_error_over_prompts(tmp_path):
    import json

    from rmopt.ppo import run_points, score_gold

    rows = [{"prompt": p, "instruction": "Repeat the word sun 2 times.", "input": "", "answer": a}
            for p, a in [(0, "sun sun"), (0, "sun"), (1, "moon"), (1, "sun sun")]]
    (tmp_path / "eval").mkdir()
    record = {"step": 0, "kl": 0.0, "proxy": 0.0, "proxy_members": [0.0], "proxy_member_std": 0.0, "rows": rows}
    (tmp_path / "eval" / "step_000000.json").write_text(json.dumps(record))

    class Gold:
        def score(self, instructions, inputs, answers):
            return [1.0 if a == "sun sun" else 0.5 if a == "sun" else -0.3 for a in answers]

    score_gold(tmp_path, Gold())
    point = run_points(tmp_path)[0]
    # per-prompt means 0.75 and 0.35
    assert point["gold_score"] == pytest.approx(0.55)
    assert point["gold_score_se"] == pytest.approx(np.std([0.75, 0.35], ddof=1) / math.sqrt(2))
