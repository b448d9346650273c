"""The GPU check's code (tests/paper_shapes.py) at tiny shapes on CPU: one RM step, one PPO step,
best-of-n scoring and gold scoring run and give finite numbers, so what `make test-gpu` runs at the
paper's shapes is exercised here too."""

from __future__ import annotations

import paper_shapes as ps
import pytest


@pytest.fixture(scope="module")
def rms(tmp_path_factory):
    return ps.save_rms(ps.TINY_NEOX, tmp_path_factory.mktemp("rms"), seeds=(1, 2))


def test_rm_step_at_tiny_shape():
    out = ps.rm_step(ps.TINY_NEOX, "cpu", pairs=4, length=64, steps=2)
    assert out["losses_finite"] and out["pairs_per_s"] > 0 and "peak_gib" not in out
    assert ps.line("rm-step", out).startswith("paper-shapes rm-step: params_m ")


def test_ppo_step_at_tiny_shape(rms, tmp_path):
    policy = ps.save_policy(ps.TINY_NEOX, tmp_path / "policy")
    out = ps.ppo_step(policy, rms, (1, 2), tmp_path, "cpu", rollouts=8, minibatch=4, new_tokens=16, eval_prompts=4)
    assert out["finite"] and out["evals"] == 2 and 0 < out["rollout_s"] <= out["step_s"] <= out["stage_s"]
    assert 0 < out["answer_length"] <= 16


def test_bon_scoring_at_tiny_shape(rms):
    out = ps.bon_scoring(rms, (1, 2), "cpu", prompts=2, n=16, answer_tokens=32, batch_size=8)
    assert out["finite"] and out["proxy_rises"] and out["members"] == 2 and out["answers"] == 32


def test_gold_scoring_at_tiny_shape(tmp_path):
    out = ps.gold_scoring(ps.TINY_LLAMA, tmp_path, "cpu", texts=6, batch_size=3)
    assert out["finite"] and out["max_tokens"] == 512 and out["batch_vs_alone"] < 1e-4
