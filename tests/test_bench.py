"""Smoke test of `make bench` (bench/): tiny sizes, one repetition, no TRL peers; numbers come from `make bench`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is a top-level package beside rmopt/

from bench.common import Result, markdown, ratio_of, render_results, write_results


def test_ratio_means_rmopt_is_better_above_one():
    assert ratio_of(2.0, 4.0, higher_is_better=False) == 2.0  # ours takes half the time
    assert ratio_of(30.0, 10.0, higher_is_better=True) == 3.0  # ours trains 3x the pairs per second
    assert ratio_of(None, 1.0, True) is None and ratio_of(1.0, 0.0, True) is None


def test_results_files(tmp_path):
    results = [
        Result("a", 1.5, 3.0, "s", 2.0, "P=1 | x", ">= 1x", extra={"MFU ours": 0.25}),
        Result("b", 10.0, None, "pairs/s", None, "peer not run"),
    ]
    json_path, md_path = write_results(results, tmp_path, {"made": "now"})
    records = json.loads(json_path.read_text())
    assert [r["name"] for r in records] == ["a", "b"]
    assert set(records[1]) == {"name", "ours", "peer", "unit", "ratio", "setup", "target"}
    md = md_path.read_text()
    assert "| a | 1.50 | 3.00 | s | 2.00 | >= 1x | P=1 / x |" in md  # a | in setup cannot break the table
    assert "| b | 10.00 | n/a | pairs/s | n/a |" in md
    assert "MFU ours = 0.25" in md and "- **made**: now" in md
    assert "| benchmark |" in markdown([], {})
    # --update: only the given rows change; the other rows, their order and the old header stay
    write_results([Result("a", 1.0, 4.0, "s", 4.0, "again"), Result("c", 1.0, 1.0, "s", 1.0, "new")], tmp_path,
                  {"made": "later", "machine": "m", "note": "faster"}, update=True)
    records = json.loads(json_path.read_text())
    assert [(r["name"], r["ratio"]) for r in records] == [("a", 4.0), ("b", None), ("c", 1.0)]
    md = md_path.read_text()
    assert "- **made**: now" in md and "- **updated (a, c)**: later" in md and "- **update (a, c): note**: faster" in md
    assert "| a | 1.00 | 4.00 | s | 4.00 |" in md and "| b | 10.00 |" in md
    # a second update of another row keeps the first update's lines as they were
    write_results([Result("b", 2.0, 4.0, "s", 2.0, "b again")], tmp_path, {"made": "latest", "note": "other"}, update=True)
    md = md_path.read_text()
    assert "- **update (a, c): note**: faster" in md and "- **update (b): note**: other" in md
    assert "- **updated (b)**: latest" in md
    # re-measuring a row takes it out of the older lines: its settings are the new update's
    write_results([Result("a", 1.0, 4.0, "s", 4.0, "a again")], tmp_path, {"made": "last", "machine": "m0"}, update=True)
    md = md_path.read_text()
    assert "- **updated (c)**: later" in md and "- **update (c): machine**: m" in md and "- **update (c): note**: faster" in md
    assert "(a, c)" not in md and "- **updated (a)**: last" in md and "- **update (a): machine**: m0" in md
    write_results([Result("a", 1.0, 4.0, "s", 4.0, "again"), Result("c", 1.0, 1.0, "s", 1.0, "new")], tmp_path,
                  {"made": "later", "machine": "m", "note": "faster"}, update=True)  # back as it was for --render
    md = md_path.read_text()
    # --render: RESULTS.md again from results.json, header kept
    md_path.write_text(md.replace("| b | 10.00 |", "| b | garbled |"))
    render_results(tmp_path)
    assert md_path.read_text() == md
    with pytest.raises(FileNotFoundError, match="no results.json"):
        render_results(tmp_path / "empty")


@pytest.mark.parametrize(
    "scores",
    [
        np.array([[0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 0.0, -0.0, 2.0, -2.0]], np.float32),
        np.random.default_rng(0).integers(-3, 3, (40, 30)).astype(np.float32),  # many ties
        np.random.default_rng(1).standard_normal((20, 300)).astype(np.float16),
        np.random.default_rng(2).integers(-3, 3, (40, 30)).astype(np.float64),
        np.random.default_rng(3).integers(-3, 3, (40, 30)),
    ],
)
def test_fast_row_order_is_the_stable_argsort(scores):
    """The benchmark-driven sort in rmopt.bon must give exactly the stable order (ties by index)."""
    from rmopt.bon import _stable_row_order

    np.testing.assert_array_equal(_stable_row_order(scores), np.argsort(scores, axis=1, kind="stable"))


def test_quick_bench_runs_our_side_and_writes_results(tmp_path):
    from bench.run import BENCHMARKS, main

    assert main(["--quick", "--no-peers", "--out", str(tmp_path)]) == 0
    records = {r["name"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    assert len(records) == len(BENCHMARKS) + 1  # best-of-n gives two rows
    for r in records.values():
        assert r["ours"] is not None and r["ours"] > 0, r
        assert r["unit"] and r["setup"]
    trl = [n for n in records if n.startswith(("RM training", "SFT training", "PPO", "GRPO"))]
    assert len(trl) == 4 and all(records[n]["peer"] is None and records[n]["ratio"] is None for n in trl)
    # peers that need no extra library ran, and ratio follows the unit's direction
    for name, r in records.items():
        if name not in trl:
            assert r["peer"] > 0, r
            higher = r["unit"] not in ("s", "GiB")
            assert r["ratio"] == pytest.approx(r["ours"] / r["peer"] if higher else r["peer"] / r["ours"])
    md = (tmp_path / "RESULTS.md").read_text()
    assert all(f"| {name} |" in md for name in records)
