import json

import pytest

from rmopt.summary import bon_summary, curve_summary, ppo_summary


def test_curve_summary_rise_then_fall():
    s = curve_summary([1, 2, 4, 8], [0.5, 0.7, 0.6, 0.2], [0.0, 1.0, 2.0, 3.0])
    assert s == {
        "gold_start": 0.5,
        "gold_max": 0.7,
        "n_at_max": 2,
        "gold_final": 0.2,
        "n_final": 8,
        "drop": pytest.approx(0.5),
        "proxy_start": 0.0,
        "proxy_final": 3.0,
    }


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
