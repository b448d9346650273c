import json
import math

import numpy as np
import pytest

from rmopt.summary import average_curve, bon_summary, curve_summary, difference, ppo_summary


def test_curve_summary_rise_then_fall():
    s = curve_summary([1, 2, 4, 8], [0.5, 0.7, 0.6, 0.2], [0.0, 1.0, 2.0, 3.0])
    assert s == {
        "gold_start": 0.5,
        "gold_max": 0.7,
        "n_at_max": 2,
        "gold_final": 0.2,
        "n_final": 8,
        "drop": pytest.approx(0.5),
        "rise": pytest.approx(0.2),
        "proxy_start": 0.0,
        "proxy_final": 3.0,
        "proxy_gain": 3.0,
    }


def test_standard_errors_of_the_summary_come_from_per_prompt_values():
    # two prompts, three points; means 0.5, 0.7, 0.2: peak at the second point
    gold = [[0.4, 0.6], [0.8, 0.6], [0.2, 0.2]]
    s = curve_summary([1, 2, 4], np.mean(gold, axis=1), x_name="n", gold_per_prompt=gold)
    assert (s["gold_max"], s["n_at_max"], s["drop"]) == (pytest.approx(0.7), 2, pytest.approx(0.5))
    assert s["gold_max_se"] == pytest.approx(0.1)  # std([0.8, 0.6], ddof=1) / sqrt(2)
    assert s["drop_se"] == pytest.approx(0.1)  # per-prompt drops 0.6 and 0.4
    assert s["rise_se"] == pytest.approx(0.2) and s["gold_final_se"] == 0.0  # rises 0.4 and 0.0
    other = curve_summary([1, 2, 4], [0.5, 0.6, 0.3], x_name="n", gold_per_prompt=[[0.4, 0.6], [0.7, 0.5], [0.4, 0.2]])
    d = difference(s, other, "drop")  # per-prompt drops 0.6 - 0.3 and 0.4 - 0.3
    assert d["value"] == pytest.approx(0.2) and d["se"] == pytest.approx(0.1)
    assert math.isnan(difference(s, curve_summary([1, 2], [0.1, 0.0]), "drop")["se"])


def test_the_cross_fitted_peak_does_not_chase_noise():
    # 4 prompts, 3 points: even prompts peak at point 1, odd ones at point 2, by chance
    gold = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    s = curve_summary([1, 2, 4], gold.mean(axis=1), x_name="n", gold_per_prompt=gold)
    assert s["gold_max"] == 0.5 and s["rise"] == 0.5  # the plain maximum rises with the noise
    # each half's peak, read on the other half: prompts 0, 2 at point 2 and prompts 1, 3 at point 1 -> all 0
    assert s["gold_peak_cv"] == 0.0 and s["rise_cv"] == 0.0
    assert s["drop_cv"] == pytest.approx(-0.5) and s["drop_cv_se"] == pytest.approx(np.std([0, -1, 0, -1], ddof=1) / 2)
    # a real rise and fall is kept: both halves peak at the middle point
    real = np.array([[0.1, 0.2, 0.1, 0.2], [0.9, 0.8, 0.9, 0.8], [0.3, 0.2, 0.3, 0.2]])
    r = curve_summary([1, 2, 4], real.mean(axis=1), x_name="n", gold_per_prompt=real)
    assert r["drop_cv"] == pytest.approx(r["drop"]) == pytest.approx(0.6) and r["rise_cv"] == pytest.approx(0.7)


def test_average_curve_averages_per_prompt_and_recomputes_the_band():
    a = {"n": [1, 2], "gold_score": [0.5, 0.6], "per_prompt": {"gold_score": [[0.4, 0.6], [0.5, 0.7]]}}
    b = {"n": [1, 2], "gold_score": [0.5, 0.2], "per_prompt": {"gold_score": [[0.6, 0.4], [0.1, 0.3]]}}
    avg = average_curve([a, b])
    assert avg["gold_score"] == pytest.approx([0.5, 0.4])
    np.testing.assert_allclose(avg["per_prompt"]["gold_score"], [[0.5, 0.5], [0.3, 0.5]])
    assert avg["gold_score_se"] == pytest.approx([0.0, 0.1])


def test_curve_summary_monotone_has_no_drop_and_ignores_unscored_points():
    s = curve_summary([0.0, 0.5, 1.5, 2.0], [0.1, 0.2, 0.3, float("nan")], x_name="kl")
    assert s["drop"] == 0.0 and s["kl_at_max"] == 1.5 and s["gold_final"] == 0.3 and s["kl_final"] == 1.5
    with pytest.raises(ValueError, match="no gold-scored point"):
        curve_summary([1], [float("nan")])


def test_bon_and_ppo_summaries_read_the_stage_outputs(tmp_path):
    (tmp_path / "bon" / "wco").mkdir(parents=True)
    rows = [{"n": 1, "proxy_score": 0.0, "gold_score": 0.4, "kl_bon": 0.0}, {"n": 4, "proxy_score": 1.0, "gold_score": 0.3, "kl_bon": 0.64}]
    (tmp_path / "bon" / "wco" / "bon_sampled_results.json").write_text(json.dumps(rows))
    assert bon_summary(tmp_path / "bon")["wco"]["drop"] == pytest.approx(0.1)
    run = tmp_path / "ppo" / "mean"
    run.mkdir(parents=True)
    points = [{"step": 0, "kl": 0.0, "proxy_score": 0.1, "gold_score": 0.5}, {"step": 10, "kl": 2.0, "proxy_score": 0.9, "gold_score": 0.6}]
    (run / "results.json").write_text(json.dumps({"points": points}))
    s = ppo_summary({"mean": run})["mean"]
    assert s["kl_at_max"] == 2.0 and s["drop"] == 0.0 and s["step_final"] == 10
