"""rmopt-rl: algorithm=grpo and algorithm=rloo beside PPO (the same stage, module and run folder)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import compose, save_stand_in_rms
from test_ppo import LengthReward, ppo_cfg, train_with_history

from rmopt.errors import RmoptError


@pytest.fixture(scope="module")
def rm_dirs(toy_sft_dir, tmp_path_factory):
    return save_stand_in_rms(toy_sft_dir, tmp_path_factory.mktemp("rms"))


def test_rl_config_is_the_ppo_config_with_the_algorithm_group():
    from omegaconf import OmegaConf

    def plain(cfg):
        return {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k not in ("task_name", "output_dir", "hydra")}

    assert plain(compose("rl", ["experiment=toy", "algorithm=ppo"])) == plain(compose("ppo", ["experiment=toy"]))
    grpo = compose("rl", ["algorithm=grpo"]).algorithm
    assert (grpo.name, grpo.group_size, grpo.scale_rewards, grpo.beta) == ("grpo", 4, True, 0.0)
    assert compose("rl", ["algorithm=rloo"]).output_dir == "runs/rl/rloo/mean"


def test_a_step_samples_each_prompt_group_size_times(toy_sft_dir, rm_dirs, tmp_path):
    from rmopt.ppo import build_module

    module = build_module(ppo_cfg(toy_sft_dir, rm_dirs, tmp_path, "algorithm=rloo", "algorithm.group_size=4", "rollout_batch_size=8"))
    instructions, inputs = module.prompt_batch(0)
    assert len(instructions) == 8
    assert instructions[0:4] == [instructions[0]] * 4 and instructions[4:8] == [instructions[4]] * 4
    assert inputs[0:4] == [inputs[0]] * 4
    nxt, _ = module.prompt_batch(1)
    assert nxt[0:4] == [nxt[0]] * 4


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_critic_free_runs_raise_an_easy_proxy(algorithm, toy_sft_dir, tmp_path):
    from rmopt.models import ModelSource

    tok = ModelSource(name_or_path=str(toy_sft_dir)).load_tokenizer()
    cfg = ppo_cfg(toy_sft_dir, "unused", tmp_path, f"algorithm={algorithm}", "trainer.max_steps=40", "eval_every=40",
                  "rollout_batch_size=16", "kl_coef=0.0")
    proxy = [h["proxy"] for h in train_with_history(cfg, LengthReward(tok))]
    early, late = np.mean(proxy[:8]), np.mean(proxy[-8:])
    assert late > early + 0.15, (early, late)



def test_grpo_with_a_kl_loss_resumes_bit_identically(toy_sft_dir, rm_dirs, tmp_path):
    from safetensors.torch import load_file

    from rmopt.ppo import train

    common = ("algorithm=grpo", "algorithm.beta=0.1", "kl_coef=0.05", "eval_every=2", "checkpoint_every=2",
              "seeds=[1,2]", "objective=wco")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(ppo_cfg(toy_sft_dir, rm_dirs, straight, "trainer.max_steps=4", *common))
    train(ppo_cfg(toy_sft_dir, rm_dirs, resumed, "trainer.max_steps=2", *common))
    half = load_file(resumed / "policy" / "model.safetensors")
    train(ppo_cfg(toy_sft_dir, rm_dirs, resumed, "trainer.max_steps=4", "ckpt_path=last", *common))
    a, b = load_file(straight / "policy" / "model.safetensors"), load_file(resumed / "policy" / "model.safetensors")
    assert any(not torch.equal(half[k], b[k]) for k in b)  # it trained past the kill
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    import json

    points = json.loads((straight / "results.json").read_text())["points"]
    assert [p["step"] for p in points] == [0, 2, 4] and points[-1]["kl"] > 0  # the same eval files as PPO


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algorithm=grpo", "algorithm.group_size=1"], "algorithm.group_size=1 is not valid for grpo; expected at least 2"),
        (["algorithm=rloo", "rollout_batch_size=10"], "rollout_batch_size=10 is not a multiple of algorithm.group_size=4"),
        (["algorithm=grpo", "algorithm.beta=-1"], "algorithm.beta=-1 is not valid"),
    ],
)
def test_bad_algorithm_settings_are_one_line_errors(overrides, message, toy_sft_dir, rm_dirs, tmp_path):
    from rmopt.ppo import build_module

    with pytest.raises(RmoptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_module(ppo_cfg(toy_sft_dir, rm_dirs, tmp_path, *overrides))


def test_an_unknown_algorithm_is_a_one_line_cli_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rmopt.rl", "algorithm=sac", 'proxy_rm_path="x"',
                             f"hydra.run.dir={tmp_path}/h"], capture_output=True, text=True)
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert result.returncode == 1 and len(lines) == 1 and "sac" in lines[0] and "algorithm" in lines[0], result.stderr


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_one_update_per_batch_takes_the_rollout_log_probs_from_its_own_forward(algorithm, toy_sft_dir, rm_dirs, tmp_path,
                                                                                 monkeypatch):
    """ppo_epochs=1 and one mini-batch: the rollout runs the reference's forward only, and training equals the
    path that also runs the policy's forward in the rollout (up to float rounding)."""
    from safetensors.torch import load_file

    from rmopt.modules import ppo as module
    from rmopt.ppo import train

    common = (f"algorithm={algorithm}", "ppo_epochs=1", "minibatch_size=8", "kl_coef=0.05", "trainer.max_steps=3",
              "eval_every=3", "eval_prompts=2", "optimizer.lr=1e-3", "seeds=[1,2]", "objective=wco")
    forwards, real = [], module.answer_forward
    monkeypatch.setattr(module, "answer_forward", lambda *a, **k: forwards.append(torch.is_grad_enabled()) or real(*a, **k))
    train(ppo_cfg(toy_sft_dir, rm_dirs, tmp_path / "reused", *common))
    assert forwards == [False, True] * 3  # per step: the reference (no gradients), then the update
    forwards.clear()
    monkeypatch.setattr(module.PPOModule, "one_update", lambda self, updates: False)
    train(ppo_cfg(toy_sft_dir, rm_dirs, tmp_path / "both", *common))
    assert forwards == [False, False, True] * 3
    start = load_file(toy_sft_dir / "model.safetensors")
    a, b = (load_file(tmp_path / run / "policy" / "model.safetensors") for run in ("reused", "both"))
    moved = max(float((a[k] - start[k]).abs().max()) for k in start if k in a)
    assert moved > 1e-3
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=moved * 1e-3)
    if algorithm == "ppo":  # the value head too: its old values came from the same forward
        from rmopt.ppo import VALUE_HEAD_FILE

        va, vb = (load_file(tmp_path / run / "policy" / VALUE_HEAD_FILE) for run in ("reused", "both"))
        for key in va:
            torch.testing.assert_close(va[key], vb[key], rtol=0, atol=moved * 1e-3)


@pytest.mark.parametrize("algorithm, epochs", [("ppo", 2), ("grpo", 2), ("rloo", 1)])
def test_without_a_kl_term_or_a_logger_the_rollout_skips_the_reference(algorithm, epochs, toy_sft_dir, rm_dirs, tmp_path,
                                                                        monkeypatch):
    """kl_coef 0, no KL loss, no logger: the reference's log-probs reach nothing, so the rollout leaves its forward
    out (as TRL's GRPO does with beta 0), and training is bit-identical to the path that runs it."""
    from safetensors.torch import load_file

    from rmopt.modules import ppo as module
    from rmopt.ppo import train

    # 2 epochs x 2 mini-batches, or one update on the whole batch (the bench's setting: no rollout forward at all)
    minibatch = 4 if epochs == 2 else 8
    common = (f"algorithm={algorithm}", "kl_coef=0.0", f"ppo_epochs={epochs}", f"minibatch_size={minibatch}",
              "trainer.max_steps=3", "eval_every=3", "eval_prompts=2", "optimizer.lr=1e-3", "seeds=[1,2]", "objective=mean")
    updates = [True] * (4 if epochs == 2 else 1)
    forwards, real = [], module.answer_forward
    monkeypatch.setattr(module, "answer_forward", lambda *a, **k: forwards.append(torch.is_grad_enabled()) or real(*a, **k))
    train(ppo_cfg(toy_sft_dir, rm_dirs, tmp_path / "skipped", *common))
    rollout = [False] if epochs == 2 else []  # the policy's rollout forward (no gradients), unless one update
    assert forwards == (rollout + updates) * 3
    forwards.clear()
    monkeypatch.setattr(module.PPOModule, "metrics_seen", lambda self: True)  # as with a logger: the KL is logged
    train(ppo_cfg(toy_sft_dir, rm_dirs, tmp_path / "full", *common))
    assert forwards == (rollout + [False] + updates) * 3  # and the reference's
    start = load_file(toy_sft_dir / "model.safetensors")
    a, b = (load_file(tmp_path / run / "policy" / "model.safetensors") for run in ("skipped", "full"))
    assert max(float((a[k] - start[k]).abs().max()) for k in start if k in a) > 1e-3
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    "overrides, needed",
    [
        (["algorithm=grpo", "kl_coef=0.0"], False),
        (["algorithm=rloo", "kl_coef=0.0"], False),
        (["algorithm=ppo", "kl_coef=0.0"], False),
        (["algorithm=grpo", "kl_coef=0.0", "algorithm.beta=0.04"], True),
        (["algorithm=rloo", "kl_coef=0.01"], True),
        (["algorithm=ppo", "kl_coef=0.0", "kl_controller=adaptive", "kl_init=0.0"], True),
    ],
)
def test_the_reference_is_needed_for_a_kl_term_a_penalty_or_an_adaptive_coefficient(overrides, needed, toy_sft_dir,
                                                                                     rm_dirs, tmp_path):
    from rmopt.ppo import build_module

    module = build_module(ppo_cfg(toy_sft_dir, rm_dirs, tmp_path, *overrides))
    assert module.needs_reference() is needed


def test_with_a_logger_every_step_logs_its_kl_and_entropy(toy_sft_dir, rm_dirs, tmp_path):
    """The reference is left out only when nothing reads it: a logger writing each step gets the KL and entropy."""
    import csv

    from rmopt.ppo import train

    train(ppo_cfg(toy_sft_dir, rm_dirs, tmp_path / "run", "algorithm=grpo", "kl_coef=0.0", "trainer.max_steps=3",
                  "eval_every=3", "eval_prompts=2", "logger=csv", "optimizer.lr=1e-3"))
    (metrics,) = list((tmp_path / "run").rglob("metrics.csv"))
    with open(metrics) as f:
        rows = [r for r in csv.DictReader(f) if r.get("kl/k1")]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    assert float(rows[-1]["kl/k1"]) != 0  # the policy moved from its reference
    assert all(float(r["policy/entropy"]) > 0 for r in rows)
