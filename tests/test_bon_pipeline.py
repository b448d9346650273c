"""The best-of-n pipeline: curves from stored scores, the CLI on the toy world, bad inputs, reuse."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import compose, save_stand_in_rms

from rmopt.bon import DEFAULT_NS, unbiased_best_of_n
from rmopt.bon_pipeline import (
    RESULTS_FILE,
    bon_curves,
    resolve_ns,
    run_bon,
)
from rmopt.data.gold_gens import load_gold_gens
from rmopt.errors import RmoptError


@pytest.fixture(scope="module")
def toy_rms(tmp_path_factory, toy_sft_dir):
    """Two stand-in reward models (SFT trunk + randomly initialised heads, different seeds)."""
    return save_stand_in_rms(toy_sft_dir, tmp_path_factory.mktemp("toy-rms"), head_std=1.0)  # members disagree


def _bon_cfg(out, overrides=()):
    return compose(
        "bon",
        ["experiment=toy", "progress=false", "device=cpu", f"output_dir={out}", *overrides],
        out / "run",
    )


def _read(out, name):
    return json.loads((out / name / RESULTS_FILE).read_text())


# ------------------------------------------------------------------ curves from stored scores


def test_ensemble_curves_follow_the_ensembles_own_ordering():
    # 2 members, 1 prompt, 4 answers: each member loves a different answer; WCO and mean pick answer 2.
    member_scores = np.array([[[9.0, 1.0, 6.0, 2.0]], [[1.0, 9.0, 6.0, 2.0]]], dtype=np.float32)
    gold = np.array([[0.0, 1.0, 5.0, 2.0]], dtype=np.float32)
    curves = bon_curves(
        member_scores, ["seed1", "seed2"], gold, [1, 4], True, ["mean", "wco", "uwo"], [0.5, 0.0]
    )
    assert sorted(curves) == ["mean", "seed1", "seed2", "uwo_0", "uwo_0.5", "wco"]
    # at n = N the best answer is the argmax of each proxy: members pick 0 and 1, WCO picks 2 (min 6)
    assert curves["seed1"]["gold_score"][-1] == 0.0
    assert curves["seed2"]["gold_score"][-1] == 1.0
    assert curves["wco"]["gold_score"][-1] == 5.0
    assert curves["wco"]["proxy_score"][-1] == 6.0
    # mean: [5, 5, 6, 2] -> answer 2; uwo 0.5: mean - 0.5 * var, var = [16, 16, 0, 0] -> [-3, -3, 6, 2]
    assert curves["mean"]["gold_score"][-1] == 5.0
    assert curves["uwo_0.5"]["proxy_score"][-1] == 6.0
    assert curves["uwo_0"]["proxy_score"] == curves["mean"]["proxy_score"]
    # n = 1 is the mean over all answers for every curve, gold 2.0
    assert all(c["gold_score"][0] == pytest.approx(2.0) for c in curves.values())
    # n = 2 for WCO by hand: sorted WCO [1(a0), 1(a1), 2(a3), 6(a2)], weights C(i-1,1)/C(4,2) = [0, 1, 2, 3]/6
    wco_n2 = unbiased_best_of_n(np.array([[1.0, 1.0, 6.0, 2.0]]), gold, [2])["gold_score"][0]
    assert wco_n2 == pytest.approx((0 * 0 + 1 * 1 + 2 * 2 + 3 * 5) / 6)
    assert curves["wco"]["kl_bon"] == [0.0, pytest.approx(np.log(4) - 3 / 4)]


def test_unknown_objective_is_one_line():
    with pytest.raises(RmoptError, match=r"unknown ensemble objective 'median'") as e:
        bon_curves(np.zeros((1, 1, 2)), ["seed1"], np.zeros((1, 2)), [1], True, ["median"], [])
    assert "\n" not in str(e.value)


def test_default_ns_are_clipped_to_big_n_and_explicit_ns_must_fit():
    assert resolve_ns(None, 12600) == [*DEFAULT_NS, 12600]
    assert resolve_ns(None, 12500) == list(DEFAULT_NS)
    assert resolve_ns(None, 500) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 500]
    assert resolve_ns(None, 512) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert resolve_ns([4, 1, 4], 8) == [1, 4]
    with pytest.raises(RmoptError, match=r"n=16 .*N=8") as e:
        resolve_ns([1, 16], 8)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ gold_gens from a local file


def _write_gens(path, rows):
    path.write_text(json.dumps(rows))
    return path


def test_gold_gens_from_local_json_in_the_published_schema(tmp_path, toy_rms):
    rows = [
        {
            "instruction": "Repeat the word sun 2 times.",
            "input": "",
            "answers": ["sun", "sun sun", "moon", "sun sun sun"],
            "gold_scores": [0.5, 1.0, -0.3, 0.8],
        },
        {
            "instruction": "Sort these letters.",
            "input": "b a",
            "answers": ["a b", "b a", "a", "a b c"],
            "gold_scores": [1.0, 0.0, 0.5, 0.7],
        },
    ]
    gens_file = _write_gens(tmp_path / "gens.json", rows)
    gens = load_gold_gens(str(gens_file), big_n=3)
    np.testing.assert_array_equal(gens.gold, np.array([[0.5, 1.0, -0.3], [1.0, 0.0, 0.5]], np.float32))
    instructions, inputs, answers = gens.chunk(0, 2)
    assert answers == ["sun", "sun sun", "moon", "a b", "b a", "a"]
    assert inputs == ["", "", "", "b a", "b a", "b a"]

    out = tmp_path / "bon"
    cfg = _bon_cfg(
        out,
        [
            f"gold_gens={gens_file}",
            f'proxy_rm_path="{toy_rms}/rm_seed{{seed}}"',
            "seeds=[1,2]",
            "big_n=3",
            "uwo_weights=[0.5]",
        ],
    )
    curves = run_bon(cfg)
    for name in ("seed1", "seed2", "mean", "wco", "uwo_0.5"):
        records = _read(out, name)
        assert [r["n"] for r in records] == [1, 2, 3]
        assert set(records[0]) == {"n", "proxy_score", "proxy_score_se", "gold_score", "gold_score_se", "kl_bon"}
        assert records[0]["gold_score"] == pytest.approx((0.5 + 1.0 - 0.3 + 1.0 + 0.0 + 0.5) / 6)
        # n = 1 is each prompt's mean gold (0.4 and 0.5): SE = std(ddof=1) / sqrt(2) = 0.05
        assert records[0]["gold_score_se"] == pytest.approx(0.05)
        per_prompt = json.loads((out / name / "bon_per_prompt.json").read_text())
        assert per_prompt["n"] == [1, 2, 3] and per_prompt["gold_score"][0] == pytest.approx([0.4, 0.5])
        assert curves[name]["gold_score"] == [r["gold_score"] for r in records]
    # the stored proxy scores re-create every curve by hand
    import pyarrow.parquet as pq

    table = pq.read_table(out / "proxy_scores.parquet")
    assert table.column_names == ["prompt", "answer", "seed1", "seed2"]
    assert table.schema.field("seed1").type == "float"
    scores = np.stack([table.column(c).to_numpy().reshape(2, 3) for c in ("seed1", "seed2")])
    wco = unbiased_best_of_n(scores.min(0), gens.gold, [3])["gold_score"][0]
    assert _read(out, "wco")[-1]["gold_score"] == pytest.approx(wco)


@pytest.mark.parametrize(
    "rows, overrides, message",
    [
        (
            [{"instruction": "a", "input": "", "answers": ["x", "y"], "gold_scores": [1.0]}],
            ["big_n=1"],
            r"row 0 has 2 answers but 1 gold_scores",
        ),
        (
            [{"instruction": "a", "input": "", "answers": ["x", "y"], "gold_scores": [1.0, 2.0]}],
            ["big_n=3"],
            r"big_n=3 .* only 2 answers",
        ),
        (
            [{"instruction": "a", "input": "", "answers": ["x", "y"], "gold_scores": [1.0, 2.0]}],
            ["big_n=2", "ns=[1,4]"],
            r"n=4 .*N=2",
        ),
        (
            [{"instruction": "a", "input": "", "answers": ["x", "y"], "gold_scores": [1.0, 2.0]}],
            ["big_n=2", "objectives=[mean,median]"],
            r"unknown ensemble objective 'median'",
        ),
        ([{"instruction": "a", "input": "", "answers": ["x", "y"]}], ["big_n=2"], r"no column 'gold_scores'"),
    ],
)
def test_bad_inputs_give_one_line_errors(tmp_path, toy_rms, rows, overrides, message):
    gens_file = _write_gens(tmp_path / "gens.json", rows)
    cfg = _bon_cfg(
        tmp_path / "bon",
        [f"gold_gens={gens_file}", f'proxy_rm_path="{toy_rms}/rm_seed{{seed}}"', "seeds=[1,2]", *overrides],
    )
    with pytest.raises(RmoptError, match=message) as e:
        run_bon(cfg)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ the CLI end to end on the toy world


def test_toy_world_end_to_end_generates_scores_and_reuses(
    tmp_path, toy_sft_dir, toy_rms, monkeypatch, capsys
):
    out = tmp_path / "bon"
    overrides = [
        f"model.name_or_path={toy_sft_dir}",
        f'proxy_rm_path="{toy_rms}/rm_seed{{seed}}"',
        "seeds=[1,2]",
        "big_n=6",
        "num_prompts=4",
        "uwo_weights=[0.1,0.5]",
        "generation_batch_size=8",
        "batch_size=5",
    ]
    curves = run_bon(_bon_cfg(out, overrides))
    names = ["seed1", "seed2", "mean", "wco", "uwo_0.1", "uwo_0.5"]
    assert sorted(curves) == sorted(names)
    for name in names:
        records = _read(out, name)
        assert [r["n"] for r in records] == [1, 2, 4, 6]  # defaults <= big_n, plus big_n
        assert records[0]["kl_bon"] == 0.0 and records[-1]["kl_bon"] == pytest.approx(np.log(6) - 5 / 6)
    assert (out / "bon.png").stat().st_size > 10_000

    # generated answers are saved in the published schema and gold-scored by the toy world's gold
    from rmopt.toy.graded import gold_score  # the default toy world (data=toy)

    gens = load_gold_gens(str(out / "gold_gens"), big_n=6)
    assert (gens.P, gens.N) == (4, 6)
    instructions, inputs, answers = gens.chunk(0, 4)
    expected = [gold_score(i, x, a) for i, x, a in zip(instructions, inputs, answers, strict=True)]
    np.testing.assert_allclose(gens.gold.ravel(), expected, rtol=1e-6)
    n1_gold = float(np.mean(expected))
    assert all(c["gold_score"][0] == pytest.approx(n1_gold) for c in curves.values())

    # the stored proxy scores match a fresh scoring of the same answers
    import pyarrow.parquet as pq

    from rmopt.ensemble import RewardEnsemble

    ensemble = RewardEnsemble.load(f"{toy_rms}/rm_seed{{seed}}", [1, 2], max_length=64)
    fresh = ensemble.score(instructions, inputs, answers).numpy()
    table = pq.read_table(out / "proxy_scores.parquet")
    np.testing.assert_allclose(table.column("seed2").to_numpy(), fresh[1], atol=1e-5)
    assert table.column("prompt").to_pylist()[:7] == [0] * 6 + [1]

    # a rerun neither generates nor scores again, and says the run had finished
    import rmopt.bon_pipeline as pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("scored or generated again")

    monkeypatch.setattr(pipeline, "score_members", refuse)
    monkeypatch.setattr(pipeline, "_sample_part", refuse)
    capsys.readouterr()
    again = run_bon(_bon_cfg(out, overrides))
    assert again == curves
    printed = capsys.readouterr().out
    assert "already done" in printed and "reusing generated answers" in printed

    # a changed member is scored again (only that one), the other is reused
    scored = []
    monkeypatch.setattr(
        pipeline,
        "score_members",
        lambda gens, paths, names, *a, **k: (
            scored.append(list(names)) or {n: [np.zeros((gens.P, gens.N), np.float32)] for n in names}
        ),
    )
    (toy_rms / "rm_seed2" / "config.json").touch()
    changed = run_bon(_bon_cfg(out, overrides))
    assert scored == [["seed2"]]
    assert changed["seed1"] == curves["seed1"]
    assert changed["seed2"]["proxy_score"] == [0.0] * 4


def test_cli_help_and_bare_seed_braces():
    help_text = subprocess.run([sys.executable, "-m", "rmopt.bon_pipeline", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0, help_text.stderr
    for option in (
        "proxy_rm_path",
        "seeds",
        "gold_gens",
        "big_n",
        "ns",
        "ensembles",
        "uwo_weights",
        "output_dir",
    ):
        assert f"\n  {option} " in help_text.stdout
    assert "(12600)" in help_text.stdout
    bare = subprocess.run(
        [sys.executable, "-m", "rmopt.bon_pipeline", "proxy_rm_path=models/x_seed{seed}"],
        capture_output=True,
        text=True,
    )
    assert bare.returncode == 1  # a user error: exit code 1, as every stage
    assert bare.stderr.strip().count("\n") == 0
    assert "'proxy_rm_path=\"models/x_seed{seed}\"'" in bare.stderr
