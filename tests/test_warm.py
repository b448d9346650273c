"""rmopt-warm (rmopt/warm.py): weight-averaged reward models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import compose

from rmopt.errors import RmoptError


def test_average_weights_by_hand_and_mismatches_named():
    from rmopt.warm import average_weights, merge_heads

    a = {"w": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([0.0]), "step": torch.tensor([3])}
    b = {"w": torch.tensor([[3.0, 6.0]]), "b": torch.tensor([1.0]), "step": torch.tensor([5])}
    avg = average_weights([a, b], ["a", "b"])
    assert avg["w"].tolist() == [[2.0, 4.0]] and avg["b"].tolist() == [0.5]
    assert avg["step"].tolist() == [3]  # integer buffers are not averaged: the first member's
    with pytest.raises(RmoptError, match=r"members differ: 'w' is \(1, 3\) in c but \(1, 2\) in a"):
        average_weights([a, {**b, "w": torch.zeros(1, 3)}], ["a", "c"])
    with pytest.raises(RmoptError, match="members differ: a has weight 'b', d does not"):
        average_weights([a, {"w": b["w"], "step": b["step"]}], ["a", "d"])
    heads = merge_heads({"score.weight": torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 1.0]]), "x": torch.ones(3, 2)})
    assert heads["score.weight"].tolist() == [[2.0, 1.0]] and heads["x"].shape == (3, 2)  # only the head


def _train(sft, pairs, out, seed, *extra):
    from rmopt.rm import train

    train(compose("rm", ["experiment=toy", f"model.name_or_path={sft}", f"data.path={pairs}", f"output_dir={out}",
                         f"seed={seed}", "trainer.max_steps=6", "trainer.val_check_interval=6", "warmup_steps=2",
                         "logger=none", "trainer.enable_progress_bar=false", *extra],
                  output_dir=out.parent / f"{out.name}-run-{seed}"))


def _warm(pattern, seeds, out):
    from rmopt.warm import warm

    return warm(compose("warm", [f'proxy_rm_path="{pattern}"', f"seeds={seeds}", f"output_dir={out}"], output_dir=out.parent / "warm-run"))


def test_warm_is_the_members_average_and_scores_like_a_single_rm(toy_sft_dir, pairs_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rmopt.ensemble import RewardEnsemble

    for seed in (1, 2):
        _train(toy_sft_dir, pairs_dir, tmp_path / "rm", seed)
    out = _warm(f"{tmp_path}/rm_seed{{seed}}", "[1,2]", tmp_path / "rm-warm")
    loaded = [AutoModelForSequenceClassification.from_pretrained(p).state_dict()
              for p in (tmp_path / "rm_seed1", tmp_path / "rm_seed2", out)]
    for key in ("score.weight", "gpt_neox.layers.0.attention.query_key_value.weight", "gpt_neox.embed_in.weight"):
        torch.testing.assert_close(loaded[2][key], (loaded[0][key] + loaded[1][key]) / 2)
    assert not torch.equal(loaded[0]["score.weight"], loaded[1]["score.weight"])  # the members did differ
    stats = json.loads((out / "reward_stats.json").read_text())
    assert stats["n"] == 2 * 24 and stats["std"] > 0  # both answers of each of the 24 held-out pairs
    # it loads and scores as a one-member ensemble (what rmopt-bon and rmopt-ppo do with it)
    ens = RewardEnsemble.load(str(out), [0], normalise=True)
    assert ens.k == 1 and ens.score(["List 6 animals."], [""], ["cat, dog, fox, cow, pig, rat"]).shape == (1, 1)
    # rerunning is a no-op
    assert _warm(f"{tmp_path}/rm_seed{{seed}}", "[1,2]", tmp_path / "rm-warm") == out


def test_multihead_members_average_their_heads(toy_sft_dir, pairs_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    _train(toy_sft_dir, pairs_dir, tmp_path / "mh", 1, "ensemble=multihead", "ensemble.k=3")
    out = _warm(f"{tmp_path}/mh_seed1", "[1]", tmp_path / "mh-warm")
    member = AutoModelForSequenceClassification.from_pretrained(tmp_path / "mh_seed1")
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    assert member.config.num_labels == 3 and merged.config.num_labels == 1
    torch.testing.assert_close(merged.score.weight, member.score.weight.mean(dim=0, keepdim=True))


def test_mismatched_members_and_missing_ones_are_one_line_errors(toy_sft_dir, pairs_dir, tmp_path):
    _train(toy_sft_dir, pairs_dir, tmp_path / "rm", 1)
    shutil.copytree(tmp_path / "rm_seed1", tmp_path / "rm_seed2")
    config = json.loads((tmp_path / "rm_seed2" / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (tmp_path / "rm_seed2" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RmoptError, match="members differ: config 'num_hidden_layers' is 3 in .*rm_seed2 .* but 2 in"):
        _warm(f"{tmp_path}/rm_seed{{seed}}", "[1,2]", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # no partial output
    result = subprocess.run([sys.executable, "-m", "rmopt.warm", f'proxy_rm_path="{tmp_path}/rm_seed{{seed}}"', "seeds=[1,7]",
                             f"output_dir={tmp_path}/out2", f"hydra.run.dir={tmp_path}/h"], capture_output=True, text=True)
    assert result.returncode == 1 and not (tmp_path / "out2").exists()
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "rm_seed7" in lines[0] and "does not exist" in lines[0]


def test_bon_with_warm_true_adds_the_averaged_models_curve(toy_sft_dir, pairs_dir, tmp_path):
    import numpy as np

    from rmopt.bon_pipeline import bon_curve, run_bon
    from rmopt.data.gold_gens import load_gold_gens
    from rmopt.ensemble import RewardEnsemble

    for seed in (1, 2):
        _train(toy_sft_dir, pairs_dir, tmp_path / "rm", seed)
    out = tmp_path / "bon"
    cfg = compose("bon", ["experiment=toy", "progress=false", "device=cpu", f"output_dir={out}",
                          f"model.name_or_path={toy_sft_dir}", f'proxy_rm_path="{tmp_path}/rm_seed{{seed}}"', "seeds=[1,2]",
                          "big_n=6", "num_prompts=4", "generation_batch_size=8", "warm=true", "normalise=true"], out / "run")
    curves = run_bon(cfg)
    assert sorted(curves) == ["mean", "seed1", "seed2", "uwo_0.5", "warm", "wco"]  # WARM is not a member of the ensembles
    assert (out / "warm" / "bon_sampled_results.json").exists() and (out / "warm_rm" / "reward_stats.json").exists()
    # the curve is best-of-n under the averaged model's own scores of the same answers
    gens = load_gold_gens(str(out / "gold_gens"), 6)
    instructions, inputs, answers = gens.chunk(0, 4)
    scores = RewardEnsemble.load(str(out / "warm_rm"), [0], normalise=True).score(instructions, inputs, answers)[0]
    expected = bon_curve(scores.numpy().reshape(4, 6), gens.gold, curves["warm"]["n"])
    np.testing.assert_allclose(curves["warm"]["gold_score"], expected["gold_score"], rtol=1e-6)
    np.testing.assert_allclose(curves["warm"]["proxy_score"], expected["proxy_score"], rtol=1e-4)
    assert run_bon(cfg)["warm"]["gold_score"] == curves["warm"]["gold_score"]  # a rerun reuses everything
