"""The toy lab's targets (experiments/targets.py) against hand-computed summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest


def _summary():
    oracle = {"n": [1, 4, 16, 64], "kl_bon": [0, 0.64, 1.83, 3.17], "gold_score": [0.2, 0.5, 0.6, 0.8]}
    single_curve = {"n": [1, 4, 16, 64], "gold_score": [0.2, 0.3, 0.35, 0.25]}
    bon = {"single": {"n_at_max": 16, "drop_cv": 0.1, "drop_cv_se": 0.02},
           "wco": {"drop_cv": 0.02}, "uwo_0.5": {"drop_cv": 0.05}, "mean": {"drop_cv": 0.09}}
    summary = {
        "world": {"sft_max_share": 0.04, "sft_max_share_se": 0.01, "sft_gold_mean": 0.2, "sft_gold_std": 0.4, "oracle": oracle},
        "bon": bon,
        "bon_clean": {"single": {"drop_cv": 0.07, "drop_cv_se": 0.01}},
        "ppo": {"single": {"rise_cv": 0.3, "rise_cv_se": 0.04}},
        "ppo_kl0.01": {"single": {"drop_cv": 0.12, "drop_cv_se": 0.03}, "wco": {"drop_cv": 0.06}, "uwo": {"drop_cv": -0.01}},
        "comparisons": {"bon": {"wco": {"gold_final": {"value": 0.15, "se": 0.05}},
                                "uwo_0.5": {"gold_final": {"value": 0.05, "se": 0.04}}},
                        "noise": {"drop_cv": {"value": 0.03, "se": 0.01}}},
    }
    return summary, {"bon": {"single": single_curve}}


def test_each_target_is_computed_from_its_inputs():
    from experiments.targets import measure

    summary, curves = _summary()
    t = measure(summary, curves)
    assert t["sft_at_max"] == {"value": 0.04, "se": 0.01}
    assert t["oracle_late_gain"]["value"] == pytest.approx((0.8 - 0.6) / (0.8 - 0.2))
    assert t["bon_single_peak_n"]["value"] == 16
    assert t["bon_single_rise_share"]["value"] == pytest.approx((0.35 - 0.2) / (0.6 - 0.2))  # oracle's gain by n = 16
    assert t["ppo_single_rise_over_sft_std"]["value"] == pytest.approx(0.3 / 0.4)
    assert t["ppo_single_rise_over_sft_std"]["se"] == pytest.approx(0.04 / 0.4)
    assert t["noise_drop_excess"] == {"value": 0.03, "se": 0.01}  # the paired difference, not the two drops'
    assert t["bon_wco_drop_ratio"]["value"] == pytest.approx(0.2) and t["bon_uwo_drop_ratio"]["value"] == pytest.approx(0.5)
    assert t["bon_wco_final_gain"] == {"value": 0.15, "se": 0.05}
    assert t["ppo_kl_single_drop"] == {"value": 0.12, "se": 0.03}
    assert t["ppo_kl_wco_drop_ratio"]["value"] == pytest.approx(0.5)
    assert t["ppo_kl_uwo_drop_ratio"]["value"] == pytest.approx(-0.01 / 0.12)
    assert "bon_mean_drop_ratio" not in t  # the mean ensemble is not a target


def test_rules_are_judged_on_the_estimate_or_the_interval():
    from experiments.targets import measure, with_verdicts

    summary, curves = _summary()
    v = with_verdicts(measure(summary, curves), z=1.96)
    met = {k for k, t in v.items() if t["met"]}
    # 0.04 <= 0.10; 0.33 >= 0.25; 16 >= 16; 0.375 >= 0.30; 0.75 >= 0.5; 0.03 +- 0.0196 above 0; WCO 0.2 <= 1/3;
    # UWO 0.5 > 1/3; WCO gain 0.15 +- 0.098 above 0; UWO 0.05 +- 0.078 is not; 0.12 +- 0.059 above 0; 0.5 > 1/3; -0.08 <= 1/3
    assert met == {"sft_at_max", "oracle_late_gain", "bon_single_peak_n", "bon_single_rise_share",
                   "ppo_single_rise_over_sft_std", "noise_drop_excess", "bon_wco_drop_ratio", "bon_wco_final_gain",
                   "ppo_kl_single_drop", "ppo_kl_uwo_drop_ratio"}
    summary["comparisons"]["noise"]["drop_cv"]["se"] = 0.02  # 0.03 +- 0.039: the interval includes zero
    assert not with_verdicts(measure(summary, curves), z=1.96)["noise_drop_excess"]["met"]


def test_a_ppo_drop_ratio_needs_the_single_rms_drop_to_be_there():
    from experiments.targets import measure, with_verdicts

    summary, curves = _summary()
    assert with_verdicts(measure(summary, curves), z=1.96)["ppo_kl_uwo_drop_ratio"]["met"]  # -0.08 <= 1/3, drop 0.12 +- 0.059
    # the same ratio, but the single RMs' drop 0.12 +- 5.0 * 0.03 = 0.12 +- 0.15 does not clear zero
    t = with_verdicts(measure(summary, curves), z=5.0)
    assert not t["ppo_kl_single_drop"]["met"] and not t["ppo_kl_uwo_drop_ratio"]["met"]
    assert t["ppo_kl_uwo_drop_ratio"]["value"] <= 1 / 3 and "needs:" in t["ppo_kl_uwo_drop_ratio"]["what"]


def test_a_ratio_to_a_drop_that_is_not_positive_is_undefined_and_unmet():
    from experiments.targets import measure, with_verdicts

    summary, curves = _summary()
    summary["bon"]["single"]["drop_cv"] = -0.01
    t = with_verdicts(measure(summary, curves), z=1.96)
    assert math.isnan(t["bon_wco_drop_ratio"]["value"]) and not t["bon_wco_drop_ratio"]["met"]


def test_over_replicates_is_mean_and_se_of_each_replicates_value():
    from experiments.targets import over_replicates, with_verdicts

    reps = [{"bon_single_peak_n": {"value": n, "se": math.nan}, "noise_drop_excess": {"value": d, "se": 0.001}}
            for n, d in ((16, 0.02), (32, 0.04), (8, 0.06))]
    out = over_replicates(reps)
    assert out["noise_drop_excess"]["value"] == pytest.approx(0.04)
    assert out["noise_drop_excess"]["se"] == pytest.approx(np.std([0.02, 0.04, 0.06], ddof=1) / 3**0.5)
    v = with_verdicts(out, z=4.30)  # Student's t for 2 degrees of freedom
    assert not v["noise_drop_excess"]["met"]  # 0.04 +- 4.30 * 0.0115 = 0.04 +- 0.050 includes zero
    assert v["noise_drop_excess"]["replicates"] == [0.02, 0.04, 0.06]
    assert out["bon_single_peak_n"]["value"] == pytest.approx(56 / 3)
    assert not v["bon_single_peak_n"]["met"]  # the mean 18.7 >= 16, but one replicate peaked at n = 8
    assert with_verdicts(over_replicates(reps[:2]), z=12.7)["bon_single_peak_n"]["met"]


def test_the_rise_share_carries_its_delta_method_se_over_prompts():
    from experiments.targets import measure

    summary, _ = _summary()
    a = np.array([1, 2, 3, 2]) * 0.1  # the single RMs' per-prompt gain by n = 16 (its peak): mean 0.2
    b = np.array([2, 2, 4, 4]) * 0.1  # the oracle's by n = 16: mean 0.3
    start = np.full(4, 0.2)
    single = np.stack([start, start + a / 2, start + a, start + a / 4])
    oracle = np.stack([start, start + b / 2, start + b, start + b + 0.2])
    curves = {"bon": {"single": {"n": [1, 4, 16, 64], "gold_score": single.mean(1).tolist(), "per_prompt": {"gold_score": single}}}}
    summary["world"]["oracle"] = {"n": [1, 4, 16, 64], "gold_score": oracle.mean(1).tolist(), "per_prompt": {"gold_score": oracle}}
    t = measure(summary, curves)["bon_single_rise_share"]
    assert t["value"] == pytest.approx(2 / 3)
    # on paper: residuals a - (2/3) b = (-1/30, 2/30, 1/30, -2/30); their SD sqrt((10/900) / 3) = 0.0608581,
    # over sqrt(4) = 0.0304290, over mean(b) = 0.3
    assert t["se"] == pytest.approx(0.101430, abs=1e-6)
    # the oracle's late gain (0.2 + b - b) / (0.2 + b): every prompt gains 0.2 after n = 16
    late = measure(summary, curves)["oracle_late_gain"]
    assert late["value"] == pytest.approx(0.2 / 0.5)
    # residuals 0.2 - 0.4 (0.4, 0.4, 0.6, 0.6) = (0.04, 0.04, -0.04, -0.04): SD 0.046188, / 2, / 0.5
    assert late["se"] == pytest.approx(0.046188, abs=1e-6)
    # an oracle over other prompts than the curve's (5 against 4): the same value, no SE rather than a wrong one
    wider = np.concatenate([oracle, oracle[:, :1]], axis=1)
    summary["world"]["oracle"] = {"n": [1, 4, 16, 64], "gold_score": wider.mean(1).tolist(), "per_prompt": {"gold_score": wider}}
    t = measure(summary, curves)["bon_single_rise_share"]
    assert t["value"] == pytest.approx(0.2 / (wider[2] - wider[0]).mean()) and math.isnan(t["se"])


def test_a_drop_ratios_se_agrees_with_a_bootstrap_over_prompts():
    from experiments.targets import measure

    rng = np.random.default_rng(0)
    P, ns = 400, [1, 4, 16, 64]
    summary, _ = _summary()

    def curve(peak_gain, drop):  # a clear peak at n = 16 (the cross-fitted peak on either half), noisy prompts
        g = np.stack([np.zeros(P), peak_gain / 2 + rng.normal(0, 0.3, P), peak_gain + rng.normal(0, 0.3, P),
                      peak_gain - drop + rng.normal(0, 0.3, P)])
        return {"n": ns, "gold_score": g.mean(1).tolist(), "per_prompt": {"gold_score": g}}

    curves = {"bon": {"single": curve(1.0, 0.4), "wco": curve(1.0, 0.15)}}

    def ratio(c):
        from rmopt.summary import summarise

        s = {name: summarise(x, "n") for name, x in c["bon"].items()}
        summary["bon"] = {"single": {**s["single"], "n_at_max": 16}, "wco": s["wco"]}
        return measure(summary, c)["bon_wco_drop_ratio"]

    t = ratio(curves)
    assert t["value"] == pytest.approx(0.15 / 0.4, abs=0.15)
    boot = []
    for _ in range(300):
        idx = rng.integers(0, P, P)
        boot.append(ratio({"bon": {k: {**v, "gold_score": v["per_prompt"]["gold_score"][:, idx].mean(1).tolist(),
                                          "per_prompt": {"gold_score": v["per_prompt"]["gold_score"][:, idx]}}
                                   for k, v in curves["bon"].items()}})["value"])
    assert t["se"] == pytest.approx(np.std(boot, ddof=1), rel=0.2)
