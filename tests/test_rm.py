"""Reward models: pooling, the pair loss, head init, training, seeds, multi-head, bootstrap, normalisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import compose

from rmopt.data.collate import pad
from rmopt.ensemble import STATS_FILE, RewardEnsemble, last_token_scores, member_paths
from rmopt.errors import RmoptError
from rmopt.modules.rm import init_score_head, multi_head_pair_loss


@pytest.fixture(scope="module")
def tiny_rm(tiny_source, toy_tokenizer):
    torch.manual_seed(0)
    model = tiny_source.load_reward_model(toy_tokenizer).eval()
    init_score_head(model, 1, seed=3)
    return model


def test_pooling_reads_last_real_token_with_right_or_left_padding(tiny_rm, toy_tokenizer):
    seqs = [[5, 9, 12, 7], [8, 3], [4, 4, 6, 11, 13, 2]]
    pad_id = toy_tokenizer.pad_token_id
    alone = torch.cat([last_token_scores(tiny_rm, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs])
    with torch.no_grad():
        for side in ("right", "left"):
            ids = pad(seqs, pad_id, side=side)
            mask = pad([[1] * len(s) for s in seqs], 0, side=side)
            assert torch.allclose(last_token_scores(tiny_rm, ids, mask), alone, atol=1e-5), side
        # Hugging Face's own forward (what AutoModelForSequenceClassification users call) pools the same place
        ids, mask = pad(seqs, pad_id), pad([[1] * len(s) for s in seqs], 0)
        assert torch.allclose(tiny_rm(input_ids=ids, attention_mask=mask).logits, alone, atol=1e-5)
    # a pad token would have been read instead, had pooling taken the last position
    assert not torch.allclose(tiny_rm.score(tiny_rm.base_model(ids).last_hidden_state[:, -1]), alone, atol=1e-3)


def test_pair_loss_by_hand_with_bootstrap_counts():
    # two pairs, one head: margins +1 and -1, pair 2 drawn twice
    scores = torch.tensor([[1.0], [0.0], [0.0], [1.0]])  # chosen rows, then rejected rows
    counts = torch.tensor([[1], [2]])
    l2 = 0.001
    pair1 = math.log1p(math.exp(-1.0)) + l2 * 0.5 * 1.0
    pair2 = math.log1p(math.exp(1.0)) + l2 * 0.5 * 1.0
    total, per_head, accs = multi_head_pair_loss(scores, counts, l2)
    assert total.item() == pytest.approx((pair1 + 2 * pair2) / 3, rel=1e-6)
    assert accs.tolist() == pytest.approx([1 / 3])
    # k heads: the total is the sum of the heads' own losses; a head that drew no pair adds nothing
    scores2 = torch.cat([scores, scores.flip(0), scores], dim=1)
    counts2 = torch.tensor([[1, 1, 0], [2, 1, 0]])
    total2, per_head2, _ = multi_head_pair_loss(scores2, counts2, l2)
    head2 = (math.log1p(math.exp(1.0)) + math.log1p(math.exp(-1.0))) / 2 + l2 * 0.5
    assert per_head2.tolist() == pytest.approx([(pair1 + 2 * pair2) / 3, head2, 0.0], rel=1e-6)
    assert total2.item() == pytest.approx(per_head2.sum().item())


def test_head_init_is_seeded_normal_and_can_grow_heads(tiny_source, toy_tokenizer):
    a = tiny_source.load_reward_model(toy_tokenizer)
    b = tiny_source.load_reward_model(toy_tokenizer)
    init_score_head(a, 1, seed=7)
    torch.randn(100)  # global RNG use in between must not matter
    init_score_head(b, 1, seed=7)
    assert torch.equal(a.score.weight, b.score.weight)
    init_score_head(b, 4, seed=8)
    assert b.score.weight.shape == (4, a.score.in_features) and b.config.num_labels == 4
    assert not torch.equal(b.score.weight[:1], a.score.weight)
    init_score_head(a, 64, seed=1)
    w = a.score.weight
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002


def test_bootstrap_counts_differ_by_seed_and_are_resamples():
    from rmopt.data.preference import bootstrap_counts

    a, a2, b = bootstrap_counts(500, 3, seed=1), bootstrap_counts(500, 3, seed=1), bootstrap_counts(500, 3, seed=2)
    assert (a.sum(0) == 500).all()  # each head: n draws with replacement
    assert np.array_equal(a, a2) and not np.array_equal(a, b)
    assert not np.array_equal(a[:, 0], a[:, 1])  # heads resample apart
    assert 0.55 < (a > 0).mean() < 0.72  # about 1 - 1/e of the rows are drawn


def test_member_paths_name_the_path(tmp_path):
    (tmp_path / "rm_seed1").mkdir()
    with pytest.raises(RmoptError, match="no {seed} placeholder") as e:
        RewardEnsemble.load(str(tmp_path / "rm_seed1"), [1, 2])
    assert str(tmp_path / "rm_seed1") in str(e.value)
    with pytest.raises(RmoptError, match="does not exist") as e:
        member_paths(str(tmp_path / "rm_seed{seed}"), [1, 2])
    assert str(tmp_path / "rm_seed2") in str(e.value)


# --- trained on toy pairs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_pairs_dir(toy_sft_dir, tmp_path_factory):
    from rmopt.pairs import make_pairs

    out = tmp_path_factory.mktemp("toy-pairs") / "pairs"
    overrides = [
        "experiment=toy",
        f"model.name_or_path={toy_sft_dir}",
        f"output_dir={out}",
        "train_size=640",
        "val_size=200",
        "progress=false",
    ]
    make_pairs(compose("pairs", overrides, output_dir=out.parent / "run"))
    return out


def train_rm(sft_dir, pairs_dir, out, seed, steps, *extra):
    from rmopt.rm import train

    overrides = [
        "experiment=toy",
        f"model.name_or_path={sft_dir}",
        f"data.path={pairs_dir}",
        f"output_dir={out}",
        f"seed={seed}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        "warmup_steps=10",
        "logger=none",
        "trainer.enable_progress_bar=false",
        *extra,
    ]
    return train(compose("rm", overrides, output_dir=out.parent / f"{out.name}-run-{seed}"))


@pytest.fixture(scope="module")
def trained(toy_sft_dir, toy_pairs_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "rm"
    metrics = train_rm(toy_sft_dir, toy_pairs_dir, out, 1, 160)
    return out, metrics


def test_trained_rm_beats_chance_and_loads_as_hf_folder(trained, toy_pairs_dir):
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, metrics = trained
    folder = out.parent / "rm_seed1"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert model.config.num_labels == 1
    # held-out accuracy recomputed here from the saved folder, through Hugging Face's own forward
    tok = AutoTokenizer.from_pretrained(folder)
    val = datasets.load_from_disk(str(toy_pairs_dir))["validation"]
    ens = RewardEnsemble([model], tok, max_length=64)
    chosen = [a[p] for a, p in zip(val["answers"], val["preference"], strict=True)]
    rejected = [a[1 - p] for a, p in zip(val["answers"], val["preference"], strict=True)]
    margin = ens.score(val["instruction"], val["input"], chosen) - ens.score(val["instruction"], val["input"], rejected)
    accuracy = (margin > 0).float().mean().item()
    assert accuracy == pytest.approx(metrics["val/accuracy"], abs=1e-6)
    assert accuracy > 0.62, accuracy  # chance is 0.5; 200 held-out pairs give a standard error of 0.035
    assert (folder / "rmopt_config.yaml").exists()


def test_saved_stats_normalise_held_out_scores(trained, toy_pairs_dir):
    import datasets

    folder = str(trained[0].parent / "rm_seed{seed}")
    stats = json.loads((trained[0].parent / "rm_seed1" / STATS_FILE).read_text())
    val = datasets.load_from_disk(str(toy_pairs_dir))["validation"]
    instructions = [i for i in val["instruction"] for _ in range(2)]
    inputs = [x for x in val["input"] for _ in range(2)]
    answers = [a for pair in val["answers"] for a in pair]
    raw = RewardEnsemble.load(folder, [1], max_length=64).score(instructions, inputs, answers)
    norm = RewardEnsemble.load(folder, [1], normalise=True, max_length=64).score(instructions, inputs, answers)
    assert raw.mean().item() == pytest.approx(stats["mean"], abs=1e-4)
    assert raw.std(unbiased=False).item() == pytest.approx(stats["std"], abs=1e-4)
    assert torch.allclose(norm, (raw - stats["mean"]) / stats["std"], atol=1e-5)
    assert norm.mean().item() == pytest.approx(0.0, abs=1e-4) and norm.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)


def test_same_seed_same_weights_other_seed_differs(toy_sft_dir, toy_pairs_dir, tmp_path):
    from safetensors.torch import load_file

    for seed, name in ((1, "a"), (1, "b"), (2, "c")):
        train_rm(toy_sft_dir, toy_pairs_dir, tmp_path / name, seed, 8)
    a, b, c = (load_file(tmp_path / f"{n}_seed{s}" / "model.safetensors") for n, s in (("a", 1), ("b", 1), ("c", 2)))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["score.weight"], c["score.weight"])
    trunk = [k for k in a if k != "score.weight"]
    assert any(not torch.equal(a[k], c[k]) for k in trunk)  # data order differs too, so the trunk moves apart


def test_multihead_and_bootstrap_members(toy_sft_dir, toy_pairs_dir, tmp_path):
    import datasets

    train_rm(toy_sft_dir, toy_pairs_dir, tmp_path / "mh", 1, 8, "ensemble=multihead", "ensemble.k=3")
    ens = RewardEnsemble.load(str(tmp_path / "mh_seed{seed}"), [1], normalise=True, max_length=64)
    assert ens.k == 3 and ens.heads == [3]
    val = datasets.load_from_disk(str(toy_pairs_dir))["validation"].select(range(5))
    scores = ens.score(val["instruction"], val["input"], [a[0] for a in val["answers"]])
    assert scores.shape == (3, 5)
    assert not torch.allclose(scores[0], scores[1])  # heads are different members
    stats = json.loads((tmp_path / "mh_seed1" / STATS_FILE).read_text())
    assert len(stats["mean"]) == len(stats["std"]) == 3
    # independent members with bootstrap=true: each seed trains on its own resample
    from rmopt.data.preference import PreferenceDataModule
    from rmopt.data.sources import ToyData

    source = ToyData(path=str(toy_pairs_dir))
    tok = ens.tokenizer
    rows = {}
    for seed in (1, 2):
        dm = PreferenceDataModule(source, tok, max_length=64, seed=seed, bootstrap=True)
        dm.setup()
        rows[seed] = [(tuple(r["chosen"]), int(r["counts"][0])) for r in dm.train_rows]
        assert sum(c for _, c in rows[seed]) == 640 and len(rows[seed]) < 640
    assert rows[1] != rows[2]
