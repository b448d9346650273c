"""The unbiased best-of-n estimator against brute force, Monte Carlo and exact binomials."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from rmopt.bon import (
    DEFAULT_NS,
    bon_weights,
    exact_best_of_n_reference,
    kl_bon,
    unbiased_best_of_n,
)
from rmopt.objectives import wco


def picked_answer(proxy_row, subset):
    """The answer best-of-n keeps from `subset`: highest proxy, and among tied maxima the highest index."""
    return max(subset, key=lambda answer: (proxy_row[answer], answer))


def brute_force_best_of_n(proxy, gold, n):
    """Average over prompts and over every n-subset of the answers of the picked answer's scores."""
    proxy_means, gold_means = [], []
    for proxy_row, gold_row in zip(proxy, gold, strict=True):
        picks = [
            picked_answer(proxy_row, subset) for subset in itertools.combinations(range(len(proxy_row)), n)
        ]
        proxy_means.append(sum(proxy_row[a] for a in picks) / len(picks))
        gold_means.append(sum(gold_row[a] for a in picks) / len(picks))
    return sum(proxy_means) / len(proxy_means), sum(gold_means) / len(gold_means)


def test_matches_brute_force_enumeration_with_ties():
    rng = np.random.default_rng(0)
    prompts, N = 5, 7
    proxy = rng.integers(0, 3, size=(prompts, N)).astype(np.float64)  # only 3 values: many ties
    gold = rng.standard_normal((prompts, N))
    ns = list(range(1, N + 1))
    result = unbiased_best_of_n(proxy, gold, ns)
    for j, n in enumerate(ns):
        expected_proxy, expected_gold = brute_force_best_of_n(proxy.tolist(), gold.tolist(), n)
        assert result["proxy_score"][j] == pytest.approx(expected_proxy, rel=1e-12, abs=1e-12)
        assert result["gold_score"][j] == pytest.approx(expected_gold, rel=1e-12, abs=1e-12)


def test_ties_go_to_the_highest_index():
    # All answers tie on proxy, so best-of-N over all of them must pick the last one.
    proxy = np.zeros((1, 4))
    gold = np.array([[10.0, 20.0, 30.0, 40.0]])
    result = unbiased_best_of_n(proxy, gold, [4, 1])
    assert result["gold_score"][0] == 40.0
    assert result["gold_score"][1] == pytest.approx(25.0)


def test_matches_monte_carlo_for_larger_n():
    rng = np.random.default_rng(1)
    N, n, draws = 60, 5, 20_000
    proxy = rng.standard_normal((1, N))
    gold = proxy + rng.standard_normal((1, N))
    estimate = unbiased_best_of_n(proxy, gold, [n])
    subsets = np.argsort(rng.random((draws, N)), axis=1)[:, :n]  # uniform n-subsets without replacement
    picks = subsets[np.arange(draws), np.argmax(proxy[0][subsets], axis=1)]
    for key, scores in (("proxy_score", proxy[0][picks]), ("gold_score", gold[0][picks])):
        standard_error = scores.std(ddof=1) / math.sqrt(draws)
        assert abs(estimate[key][0] - scores.mean()) < 5 * standard_error, key


def test_n_equal_1_is_the_mean_gold_over_all_answers():
    rng = np.random.default_rng(2)
    proxy = rng.standard_normal((4, 30)).astype(np.float32)
    gold = rng.standard_normal((4, 30)).astype(np.float32)
    result = unbiased_best_of_n(proxy, gold, [1])
    assert result["gold_score"][0] == pytest.approx(gold.astype(np.float64).mean(), abs=1e-12)
    assert result["proxy_score"][0] == pytest.approx(proxy.astype(np.float64).mean(), abs=1e-12)


def test_n_equal_N_is_the_gold_at_the_proxy_argmax_last_among_ties():
    proxy = np.array([[3.0, 1.0, 3.0, 2.0], [0.0, 5.0, 5.0, 5.0], [9.0, 1.0, 2.0, 3.0]])
    gold = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]])
    result = unbiased_best_of_n(proxy, gold, [4])
    # Picks: prompt 0 answer 2 (tie 0/2), prompt 1 answer 3 (tie 1/2/3), prompt 2 answer 0.
    assert result["gold_score"][0] == pytest.approx((3.0 + 8.0 + 9.0) / 3, abs=1e-15)
    assert result["proxy_score"][0] == pytest.approx((3.0 + 5.0 + 9.0) / 3, abs=1e-15)


def test_returns_float64_arrays_with_the_ns():
    rng = np.random.default_rng(3)
    proxy = rng.standard_normal((2, 20)).astype(np.float32)
    result = unbiased_best_of_n(proxy, proxy, (1, 3, 20))
    assert set(result) == {"n", "proxy_score", "gold_score"}
    np.testing.assert_array_equal(result["n"], [1, 3, 20])
    for key in ("proxy_score", "gold_score"):
        assert result[key].dtype == np.float64 and result[key].shape == (3,)


def test_proxy_score_never_falls_as_n_grows():
    rng = np.random.default_rng(4)
    proxy = rng.standard_normal((10, 500))
    ns = list(range(1, 501, 7))
    proxy_curve = unbiased_best_of_n(proxy, rng.standard_normal((10, 500)), ns)["proxy_score"]
    assert np.all(np.diff(proxy_curve) >= -1e-12)


@pytest.mark.parametrize("N", [1, 2, 5, 10, 13])
def test_weights_match_exact_binomials(N):
    for n in range(1, N + 1):
        exact = [Fraction(math.comb(i - 1, n - 1), math.comb(N, n)) for i in range(1, N + 1)]
        assert sum(exact) == 1
        np.testing.assert_allclose(bon_weights(N, n), [float(w) for w in exact], rtol=1e-14, atol=0)


def test_weights_sum_to_1_at_full_scale():
    for n in DEFAULT_NS:
        weights = bon_weights(12_600, n)
        assert weights.shape == (12_600,)
        assert np.all(weights >= 0) and np.all(weights[: n - 1] == 0)
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    # The top answer is in a random n-subset with probability n / N.
    assert bon_weights(12_600, 6144)[-1] == pytest.approx(6144 / 12_600, rel=1e-15)


def test_exact_reference_agrees_with_the_fast_estimator():
    rng = np.random.default_rng(5)
    proxy = rng.standard_normal((3, 200)).astype(np.float32)
    proxy[0, :50] = proxy[0, 50:100]  # some ties
    gold = rng.standard_normal((3, 200)).astype(np.float32)
    ns = [1, 2, 7, 50, 128, 199, 200]
    fast = unbiased_best_of_n(proxy, gold, ns)
    exact = exact_best_of_n_reference(proxy, gold, ns)
    np.testing.assert_array_equal(fast["n"], exact["n"])
    for key in ("proxy_score", "gold_score"):
        np.testing.assert_allclose(fast[key], exact[key], rtol=0, atol=1e-9)


def test_exact_reference_matches_brute_force_with_ties():
    proxy = [[1.0, 2.0, 2.0, 0.0, 2.0]]
    gold = [[0.5, 1.0, -1.0, 3.0, 4.0]]
    exact = exact_best_of_n_reference(proxy, gold, [1, 2, 3, 5])
    for j, n in enumerate([1, 2, 3, 5]):
        assert exact["gold_score"][j] == pytest.approx(brute_force_best_of_n(proxy, gold, n)[1], abs=1e-15)


def test_kl_bon():
    assert kl_bon(1) == 0.0
    assert kl_bon(2) == pytest.approx(math.log(2) - 0.5)
    assert kl_bon(12_500) == pytest.approx(math.log(12_500) - 12_499 / 12_500)
    np.testing.assert_allclose(kl_bon(np.array([1, 4])), [0.0, math.log(4) - 0.75])
    with pytest.raises(ValueError, match="n >= 1"):
        kl_bon(0)


def test_default_ns_fit_the_papers_12600_answers():
    assert DEFAULT_NS[0] == 1 and max(DEFAULT_NS) <= 12_600
    assert list(DEFAULT_NS) == sorted(set(DEFAULT_NS))


@pytest.mark.parametrize("bad_n", [0, 13_000])
def test_n_outside_1_to_N_names_n_and_N(bad_n):
    scores = np.zeros((2, 12_600), dtype=np.float32)
    with pytest.raises(ValueError, match=f"n={bad_n} is outside 1..N=12600"):
        unbiased_best_of_n(scores, scores, [1, bad_n])
    with pytest.raises(ValueError, match=f"n={bad_n} is outside 1..N=12600"):
        bon_weights(12_600, bad_n)


def test_non_integer_n_is_refused():
    scores = np.zeros((1, 5))
    with pytest.raises(ValueError, match="integer"):
        unbiased_best_of_n(scores, scores, [2.5])


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"proxy \(2, 5\) vs gold \(2, 6\)"):
        unbiased_best_of_n(np.zeros((2, 5)), np.zeros((2, 6)), [1])


def test_wrong_rank_is_refused():
    with pytest.raises(ValueError, match=r"\[prompts, answers\]"):
        unbiased_best_of_n(np.zeros(5), np.zeros(5), [1])


def test_nan_in_proxy_is_refused():
    proxy = np.zeros((3, 4), dtype=np.float32)
    proxy[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*prompt 1, answer 2"):
        unbiased_best_of_n(proxy, np.zeros((3, 4)), [1])


def test_ensemble_gold_curve_follows_the_wco_ordering():
    # 2 members score 4 answers of 1 prompt; each member loves a different answer, WCO prefers answer 2.
    member_scores = np.array([[[9.0, 1.0, 6.0, 2.0]], [[1.0, 9.0, 6.0, 2.0]]])  # [k=2, P=1, N=4]
    gold = np.array([[0.0, 1.0, 5.0, 2.0]])
    wco_scores = wco(member_scores)
    np.testing.assert_array_equal(wco_scores, [[1.0, 1.0, 6.0, 2.0]])
    wco_order = np.argsort(wco_scores[0], kind="stable")
    for member in member_scores:
        assert not np.array_equal(np.argsort(member[0], kind="stable"), wco_order)
    ns = [1, 2, 3, 4]
    curve = unbiased_best_of_n(wco_scores, gold, ns)
    assert curve["gold_score"][-1] == gold[0, 2] == 5.0
    for member in member_scores:
        member_gold_at_N = unbiased_best_of_n(member, gold, ns)["gold_score"][-1]
        assert member_gold_at_N == gold[0, np.argmax(member[0])] != curve["gold_score"][-1]
    for j, n in enumerate(ns):  # and the whole curve is the brute force of the WCO picks
        assert curve["gold_score"][j] == pytest.approx(brute_force_best_of_n(wco_scores, gold, n)[1])
