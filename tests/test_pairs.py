"""rmopt-pairs: labels from gold scores, ties, label noise, and the saved pairs folder."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose

from rmopt.errors import RmoptError
from rmopt.pairs import label_pairs


def test_labels_follow_gold_and_ties_drop():
    gold = np.array([[0.1, 0.9], [0.5, -0.2], [0.3, 0.3], [-1.0, 1.0]])
    labels, keep, flipped = label_pairs(gold, np.random.default_rng(0), ties="drop", label_noise=0.0)
    assert keep.tolist() == [True, True, False, True]
    assert labels[keep].tolist() == [1, 0, 1]
    assert not flipped.any()


def test_ties_random_keeps_every_row_with_coin_flips():
    gold = np.zeros((4000, 2))
    labels, keep, _ = label_pairs(gold, np.random.default_rng(0), ties="random")
    assert keep.all()
    assert 0.45 < labels.mean() < 0.55


def test_label_noise_is_the_expected_fraction_of_wrong_labels():
    rng = np.random.default_rng(1)
    gold = rng.normal(size=(20000, 2))
    labels, keep, flipped = label_pairs(gold, np.random.default_rng(2), label_noise=0.25)
    truth = (gold[:, 1] > gold[:, 0]).astype(int)
    wrong = labels != truth
    assert (wrong == flipped).all()  # a label is wrong exactly when it was flipped
    assert abs(wrong.mean() - 0.25) < 0.01


def test_bad_knobs_raise():
    with pytest.raises(RmoptError, match="ties='sometimes'"):
        label_pairs(np.zeros((2, 2)), np.random.default_rng(0), ties="sometimes")
    with pytest.raises(RmoptError, match="label_noise=1.5"):
        label_pairs(np.zeros((2, 2)), np.random.default_rng(0), label_noise=1.5)


def make_pairs_dir(sft_dir, out, seed=0, **knobs):
    from rmopt.pairs import make_pairs

    overrides = ["experiment=toy", f"model.name_or_path={sft_dir}", f"output_dir={out}", f"seed={seed}", "progress=false"]
    overrides += [f"{k}={v}" for k, v in knobs.items()]
    return make_pairs(compose("pairs", overrides, output_dir=out.parent / f"{out.name}-run"))


def test_pairs_folder_schema_sizes_gold_and_seed(toy_sft_dir, tmp_path):
    import datasets

    from rmopt.toy.graded import gold_score  # the default toy world (data=toy)

    summary = make_pairs_dir(toy_sft_dir, tmp_path / "pairs", train_size=60, val_size=20, label_noise=0.25)
    ds = datasets.load_from_disk(str(tmp_path / "pairs"))
    assert set(ds) == {"train", "validation"}
    assert len(ds["train"]) == 60 and len(ds["validation"]) == 20
    assert ds["train"].column_names == ["instruction", "input", "answers", "preference", "gold_scores"]
    assert summary["train"]["pairs"] == 60
    for split, noisy in (("train", True), ("validation", False)):
        wrong = 0
        for row in ds[split]:
            assert len(row["answers"]) == 2 and row["preference"] in (0, 1)
            gold = [gold_score(row["instruction"], row["input"], a) for a in row["answers"]]
            assert gold == pytest.approx(row["gold_scores"], abs=1e-6)
            assert gold[0] != gold[1]  # ties dropped
            wrong += row["preference"] != int(gold[1] > gold[0])
        assert (wrong > 0) == noisy  # held-out labels stay clean
    assert summary["train"]["flipped"] == sum(
        r["preference"] != int(r["gold_scores"][1] > r["gold_scores"][0]) for r in ds["train"]
    )
    # same seed, same pairs; another seed, other samples
    make_pairs_dir(toy_sft_dir, tmp_path / "again", train_size=60, val_size=20, label_noise=0.25)
    make_pairs_dir(toy_sft_dir, tmp_path / "other", seed=1, train_size=60, val_size=20, label_noise=0.25)
    again = datasets.load_from_disk(str(tmp_path / "again"))
    other = datasets.load_from_disk(str(tmp_path / "other"))
    assert again["train"]["answers"] == ds["train"]["answers"]
    assert again["train"]["preference"] == ds["train"]["preference"]
    assert other["train"]["answers"] != ds["train"]["answers"]
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # written through a temp folder
