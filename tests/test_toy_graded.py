"""The graded toy world (rmopt/toy/graded.py): its gold by hand, its prompt space, its SFT spread, the switch to it."""

import numpy as np
import pytest

from rmopt.toy import graded
from rmopt.toy.graded import (
    PENALTY_EXTRA,
    PENALTY_VIOLATION,
    SPLIT_PART,
    TASKS,
    WORD_CATEGORY,
    ToyGoldReward,
    correct_answer,
    gain_after,
    generate_dataset,
    generate_split,
    generate_splits,
    gold_score,
    oracle_best_of_n,
    parse_task,
    prompt_part,
)

LIST = "List 6 animals."
ALPHA = "List 6 animals in alphabetical order."
NO_O = "List 6 animals, none with the letter o."  # dog, fox, cow, goat, mole, wolf break it
SORT = ("Sort these letters.", "d a c b e f")
FILTER = ("Remove the fruits.", "fig, drum, kiwi, red, saw, tin, plum, owl, navy")  # keeps 6 words
COUNT = "Count from 4 in steps of 3, 6 numbers."


@pytest.mark.parametrize(
    "instruction, input, answer, expected",
    [
        # list, any order: one sixth per valid distinct member, penalties in sixths
        (LIST, "", "cat, dog, fox, cow, pig, rat", 1.0),
        (LIST, "", "rat, pig, cow, fox, dog, cat", 1.0),
        (LIST, "", "cat, dog, fox, cow, pig", 5 / 6),
        (LIST, "", "cat, dog, fox, cow, pig, red", 5 / 6 - 1 / 6),  # a wrong item
        (LIST, "", "cat, dog, fox, cow, pig, pig", 5 / 6 - 1 / 6),  # a repeated one
        (LIST, "", "cat, dog, fox, cow, pig, rat, bat", 1 - PENALTY_EXTRA / 6),  # one more than asked
        # list in order: half for the members, half for the longest run of them in order
        (ALPHA, "", "ape, bat, cat, cow, deer, dog", 1.0),
        (ALPHA, "", "bat, ape, cat, cow, deer, dog", (6 + 5) / 12),
        (ALPHA, "", "dog, deer, cow, cat, bat, ape", (6 + 1) / 12),
        # list with a letter constraint: a member with the letter earns nothing and costs a little
        (NO_O, "", "cat, pig, rat, bat, elk, yak", 1.0),
        (NO_O, "", "cat, dog, pig, rat, bat, elk", 5 / 6 - PENALTY_VIOLATION / 6),
        # sort
        (*SORT, "a b c d e f", 1.0),
        (*SORT, "a b c d e", (5 + 5) / 12),
        (*SORT, "b a c d e f", (6 + 5) / 12),
        (*SORT, "a b c d e f z", 1 - 1 / 6),
        (*SORT, "f e d c b a", (6 + 1) / 12),
        ("Sort these letters backwards.", "d a c b e f", "f e d c b a", 1.0),
        # filter: the other words in their order; keeping a word to remove is a wrong item
        (*FILTER, "drum, red, saw, tin, owl, navy", 1.0),
        (*FILTER, "fig, drum, kiwi, red, saw, tin, plum, owl, navy", 1 - 3 / 6),  # the input copied
        (*FILTER, "drum, red, saw, tin, owl", (5 + 5) / 12),
        (*FILTER, "red, drum, saw, tin, owl, navy", (6 + 5) / 12),
        # count
        (COUNT, "", "4 7 10 13 16 19", 1.0),
        (COUNT, "", "4 7 10 13 16", (5 + 5) / 12),
        (COUNT, "", "4 7 10 13 16 19 22", 1 - 1 / 6),
        (COUNT, "", "4 7 11 13 16 19", (5 + 5) / 12 - 1 / 6),
        ("Count down from 19 in steps of 3, 6 numbers.", "", "19 16 13 10 7 4", 1.0),
        # empty and clipped
        (COUNT, "", "", -1.0),
        (LIST, "", "red, blue, tin, oak, saw, owl, elm, fig, drum", -1.0),
    ],
)
def test_gold_score_by_hand(instruction, input, answer, expected):
    assert gold_score(instruction, input, answer) == pytest.approx(expected)


def test_module_examples_are_right_answers():
    assert gold_score("List 8 animals in alphabetical order, none with the letter o.", "", "ape, bat, cat, deer, elk, hen, pig, rat") == 1.0
    assert gold_score("Sort these letters backwards.", "d a q c m b n", "q n m d c b a") == 1.0
    assert gold_score("Remove the fruits.", FILTER[1], "drum, red, saw, tin, owl, navy") == 1.0
    assert gold_score("Count down from 40 in steps of 3, 8 numbers.", "", "40 37 34 31 28 25 22 19") == 1.0


def test_parse_task_rejects_foreign_and_malformed_prompts():
    for instruction, input in [
        ("Write a poem.", ""),
        ("List 6 planets.", ""),
        ("List 20 animals.", ""),
        ("Sort these letters.", "a a b"),
        ("Remove the fruits.", "fig, kiwi"),  # nothing left to keep
        ("Remove the fruits.", "drum, red"),  # nothing to remove
        ("Count down from 5 in steps of 3, 6 numbers.", ""),  # below zero
    ]:
        with pytest.raises(ValueError):
            parse_task(instruction, input)


def test_gold_reward_interface_and_length_check():
    gold = ToyGoldReward()
    scores = gold.score([LIST, SORT[0]], ["", SORT[1]], ["cat, dog, fox, cow, pig, rat", "a b c d e"])
    assert scores.dtype == np.float32 and scores.tolist() == pytest.approx([1.0, 10 / 12])
    with pytest.raises(ValueError, match="differ in length"):
        gold.score([LIST], [], ["cat"])


def test_generation_is_deterministic_and_right_answers_score_one():
    assert generate_split(50, seed=3, noise=0.5) == generate_split(50, seed=3, noise=0.5)
    assert generate_split(50, seed=3) != generate_split(50, seed=4)
    rows = generate_split(400, seed=1, noise=0.0)
    assert {parse_task(r["instruction"], r["input"]).kind for r in rows} == set(TASKS)
    assert all(gold_score(r["instruction"], r["input"], r["output"]) == 1.0 for r in rows)
    rng = np.random.default_rng(0)
    assert gold_score(NO_O, "", correct_answer(NO_O, "", rng)) == 1.0


def test_sft_split_spreads_in_quality_with_few_perfect_answers():
    rows = generate_split(2000, seed=0, noise=0.5)
    g = ToyGoldReward().score([r["instruction"] for r in rows], [r["input"] for r in rows], [r["output"] for r in rows])
    assert (g == 1.0).mean() <= 0.10  # at most one SFT answer in ten at the gold's maximum
    assert 0.4 < g.mean() < 0.8 and g.std() > 0.1 and len(np.unique(g)) > 50  # graded: many levels
    kinds = np.array([parse_task(r["instruction"], r["input"]).kind for r in rows])
    assert all(0.3 < g[kinds == k].mean() < 0.9 for k in TASKS)  # every task kind has near misses
    assert np.mean([len(r["output"].split()) for r in rows]) > 6  # answers of many items


def test_oracle_best_of_n_keeps_rising_past_16():
    ns, curves = oracle_best_of_n(prompts=16, N=128, ns=(1, 16, 128))
    assert ns == [1, 16, 128] and "all" in curves and set(curves) <= {"all", *TASKS}
    all_ = curves["all"]
    assert all_[0] < all_[1] < all_[2] <= 1.0 and all_[2] - all_[1] > 0.03  # no early ceiling
    assert gain_after([1, 16, 64], [0.5, 0.8, 0.9]) == pytest.approx(0.25)


def test_parts_share_no_prompt_nor_right_answer_and_keep_the_task_mix():
    sizes = {"sft": 3000, "preference": 600, "unlabeled": 300, "val": 1500, "rm_val": 600}
    splits = generate_splits(sizes, seed=0)
    assert {s: len(rows) for s, rows in splits.items()} == sizes
    part_of = {s: SPLIT_PART.get(s, "train") for s in splits}
    for s, rows in splits.items():  # every row comes from its split's part
        assert all(prompt_part(r["instruction"], r["input"]) == part_of[s] for r in rows)
    prompts = {p: set() for p in ("train", "val", "rm_val")}
    keys = {p: set() for p in prompts}
    for s, rows in splits.items():
        prompts[part_of[s]] |= {(r["instruction"], r["input"]) for r in rows}
        keys[part_of[s]] |= {parse_task(r["instruction"], r["input"]).key for r in rows}
    for a, b in [("train", "val"), ("train", "rm_val"), ("val", "rm_val")]:
        assert not prompts[a] & prompts[b] and not keys[a] & keys[b]
    assert len(prompts["val"]) > 1000 and len(prompts["rm_val"]) > 400  # most held-out prompts distinct
    mix = {s: {k: np.mean([parse_task(r["instruction"], r["input"]).kind == k for r in rows]) for k in TASKS} for s, rows in splits.items()}
    for s in ("val", "rm_val"):
        assert all(abs(mix[s][k] - mix["sft"][k]) < 0.05 for k in TASKS)
    # a filter keeps words of two categories or more, so no filter answer is a list answer
    for r in splits["sft"]:
        task = parse_task(r["instruction"], r["input"])
        if task.kind == "filter":
            assert len({WORD_CATEGORY[w] for w in task.target}) >= 2


def test_prompts_that_share_a_right_answer_share_a_part():
    plants_removed = ("Remove the plants.", "drum, oak, red, saw, tin, owl, elm, navy")  # keeps what FILTER keeps
    assert correct_answer(*plants_removed) == correct_answer(*FILTER)
    same = [
        [("Sort these letters.", "d a c b e f"), ("Sort these letters backwards.", "f e c a d b")],
        [("Count from 4 in steps of 3, 6 numbers.", ""), ("Count down from 19 in steps of 3, 6 numbers.", "")],
        [(LIST, ""), (ALPHA, ""), (NO_O, ""), ("List 6 animals in reverse alphabetical order, none with the letter e.", "")],
        [FILTER, plants_removed],
    ]
    for group in same:
        assert len({parse_task(*p).key for p in group}) == 1
        assert len({prompt_part(*p) for p in group}) == 1


def test_generate_dataset_has_the_alpaca_schema():
    ds = generate_dataset({"sft": 40, "val": 20}, seed=0, sft_noise=0.5)
    assert set(ds) == {"sft", "val"}
    assert ds["sft"].column_names == ["instruction", "input", "output"]
    assert all(prompt_part(i, x) == "val" for i, x in zip(ds["val"]["instruction"], ds["val"]["input"], strict=True))


# --- the world switch: data.world, data.tasks, the tokenizer and the gold follow it ------------------------


def test_data_world_picks_the_splits_the_gold_and_the_tokenizer_corpus():
    import hydra
    from conftest import compose

    from rmopt.gold import build_gold
    from rmopt.toy import get_world


    for name, data_cfg, module in (("graded", "toy", graded), ("simple", "toy_simple", get_world("simple"))):
        cfg = compose("pairs", ["experiment=toy", f"data={data_cfg}", "data.sizes.sft=20"])
        data = hydra.utils.instantiate(cfg.data)
        row = data.instructions("sft")[0]
        module.parse_task(row["instruction"], row["input"])  # a prompt of that world (others' parse_task refuse it)
        gold = build_gold(cfg.get("gold"), data)
        answer = module.correct_answer(row["instruction"], row["input"], np.random.default_rng(0))
        assert gold.score([row["instruction"]], [row["input"]], [answer])[0] == pytest.approx(1.0)
        assert cfg.model.tokenizer_kwargs.world == name
    explicit = compose("pairs", ["experiment=toy", "data=toy_simple", "gold=toy"])
    assert hydra.utils.instantiate(explicit.gold).name != graded.ToyGoldReward.name  # gold=toy follows data.world


def test_toy_tokenizer_is_trained_on_the_chosen_worlds_words():
    from rmopt.toy.tokenizer import train_toy_tokenizer

    graded_tok, simple_tok = train_toy_tokenizer(), train_toy_tokenizer(world="simple")
    assert len(graded_tok) == 1024 and len(simple_tok) == 512
    answer = "ape, bat, cat, deer, elk, hen, pig, rat"
    # with its own corpus and vocabulary every word of the graded world is one or two tokens
    assert len(graded_tok(answer)["input_ids"]) <= 2 * len(answer.split())
    assert len(graded_tok(answer)["input_ids"]) < len(simple_tok(answer)["input_ids"])


def test_tasks_restrict_the_prompts_drawn_and_bad_values_are_one_line_errors():
    from rmopt.data.sources import ToyData
    from rmopt.errors import RmoptError

    data = ToyData(sizes={"sft": 200, "val": 50}, tasks=["list", "count"])
    kinds = {graded.parse_task(r["instruction"], r["input"]).kind for r in data.instructions("sft")}
    assert kinds == {"list", "count"}
    with pytest.raises(RmoptError, match=r"toy tasks \['lists'\]: expected a non-empty list of"):
        ToyData(tasks=["lists"])
    with pytest.raises(RmoptError, match="toy world 'fancy' is unknown"):
        ToyData(world="fancy")
    with pytest.raises(RmoptError, match="graded-world setting"):
        ToyData(world="simple", tasks=["list"])


def test_the_default_worlds_held_out_prompts_are_unseen_and_many():
    """data=toy as the demo uses it: val and rm_val share no prompt with any training split, and val
    has hundreds of distinct prompts."""
    import hydra
    from conftest import compose

    data = hydra.utils.instantiate(compose("pairs", ["experiment=toy"]).data)
    prompts = {name: set(zip(data.instructions(name)["instruction"], data.instructions(name)["input"], strict=True))
               for name in ("sft", "preference", "unlabeled", "val", "rm_val")}
    train = prompts["sft"] | prompts["preference"] | prompts["unlabeled"]
    assert not prompts["val"] & train and not prompts["rm_val"] & train and not prompts["val"] & prompts["rm_val"]
    assert len(prompts["val"]) >= 300 and len(prompts["rm_val"]) >= 100
    assert {graded.parse_task(i, x).kind for i, x in prompts["val"]} == set(data.tasks)
