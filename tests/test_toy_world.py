import numpy as np
import pytest

from rmopt.toy.world import (
    PENALTY_DUPLICATE,
    PENALTY_EXTRA,
    PENALTY_WRONG,
    ToyGoldReward,
    correct_answer,
    generate_dataset,
    generate_split,
    gold_score,
    parse_task,
)


@pytest.mark.parametrize(
    "instruction, input, answer, expected",
    [
        ("List 3 animals.", "", "cat, dog, fox", 1.0),
        ("List 3 animals.", "", "fox, cat, dog", 1.0),  # order does not matter for a list
        ("List 3 animals.", "", "cat, dog", 2 / 3),
        ("List 3 animals.", "", "cat, dog, fox, owl", 1.0 - PENALTY_EXTRA),
        ("List 3 animals.", "", "cat, dog, cat", 2 / 3 - PENALTY_DUPLICATE),
        ("List 3 animals.", "", "cat, dog, red", 2 / 3 - PENALTY_WRONG),
        ("Sort these letters.", "d a c", "a c d", 1.0),
        ("Sort these letters.", "d a c", "a d c", 1 / 3),
        ("Sort these letters.", "d a c", "a c d d", 1.0 - PENALTY_DUPLICATE),
        ("Sort these letters.", "d a c", "a c z", 2 / 3 - PENALTY_WRONG),
        ("Repeat the word sun 3 times.", "", "sun sun sun", 1.0),
        ("Repeat the word sun 3 times.", "", "sun sun", 2 / 3),
        ("Repeat the word sun 3 times.", "", "sun sun sun sun sun", 1.0 - 2 * PENALTY_EXTRA),
        ("Repeat the word sun 3 times.", "", "sun moon sun", 2 / 3 - PENALTY_WRONG),
        ("Repeat the word sun 3 times.", "", "", -1.0),
    ],
)
def test_gold_score_by_hand(instruction, input, answer, expected):
    assert gold_score(instruction, input, answer) == pytest.approx(expected)


def test_gold_is_clipped_and_rejects_foreign_instructions():
    assert gold_score("Repeat the word sun 2 times.", "", "a b c d e f g h") == -1.0
    with pytest.raises(ValueError, match="not a toy-world instruction"):
        parse_task("Write a poem.", "")


def test_gold_reward_interface_and_length_check():
    gold = ToyGoldReward()
    scores = gold.score(["List 2 colors.", "Sort these letters."], ["", "b a"], ["red, blue", "b a"])
    assert scores.dtype == np.float32 and scores.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="differ in length"):
        gold.score(["List 2 colors."], [], ["red"])


def test_generation_is_deterministic_and_correct_answers_score_one():
    assert generate_split(50, seed=3, noise=0.5) == generate_split(50, seed=3, noise=0.5)
    assert generate_split(50, seed=3) != generate_split(50, seed=4)
    for row in generate_split(200, seed=1, noise=0.0):
        assert gold_score(row["instruction"], row["input"], row["output"]) == 1.0
    rng = np.random.default_rng(0)
    assert gold_score("List 4 tools.", "", correct_answer("List 4 tools.", "", rng)) == 1.0


def test_sft_split_spreads_in_quality_and_has_alpaca_schema():
    ds = generate_dataset({"sft": 2000, "val": 100}, seed=0, sft_noise=0.5)
    assert set(ds) == {"sft", "val"}
    assert ds["sft"].column_names == ["instruction", "input", "output"]
    g = ToyGoldReward().score(ds["sft"]["instruction"], ds["sft"]["input"], ds["sft"]["output"])
    assert 0.3 < (g == 1.0).mean() < 0.7  # about half the SFT answers are right, the rest near misses
    assert g.min() < 0.5 and g.std() > 0.2


def test_val_prompts_are_unseen_by_every_other_split():
    from omegaconf import OmegaConf

    sizes = OmegaConf.load("conf/data/toy.yaml").sizes  # the world every stage uses
    ds = generate_dataset(dict(sizes), seed=0)
    prompts = {s: set(zip(ds[s]["instruction"], ds[s]["input"], strict=True)) for s in ds}
    training = prompts["sft"] | prompts["preference"] | prompts["unlabeled"]
    assert not prompts["val"] & training and not prompts["val"] & prompts["rm_val"]
    assert not prompts["rm_val"] & training  # the reward models' held-out pairs are unseen by their training too
    # nor does any held-out sort prompt have a training prompt's letters in another order (the same answer)
    letters = {s: {" ".join(sorted(x.split())) for i, x in p if i.startswith("Sort")} for s, p in prompts.items()}
    assert not letters["val"] & (letters["sft"] | letters["preference"] | letters["unlabeled"] | letters["rm_val"])
    assert len(prompts["val"]) >= 300 and len(prompts["rm_val"]) >= 100  # a few hundred distinct held-out prompts
    kinds = {s: np.mean([i.startswith("Sort") for i in ds[s]["instruction"]]) for s in ds}
    assert abs(kinds["val"] - kinds["sft"]) < 0.05 and abs(kinds["rm_val"] - kinds["sft"]) < 0.05  # same task mix


def test_rmopt_pairs_takes_its_held_out_pairs_from_rm_val_in_the_toy_world():
    from conftest import compose

    assert compose("pairs", ["experiment=toy"]).val_split == "rm_val"
    assert compose("pairs", ["experiment=toy", "val_split=val"]).val_split == "val"
