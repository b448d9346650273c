"""The rmopt-pairs and rmopt-rm command lines: an ensemble sweep, and a sweep where one member fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TOY = ["experiment=toy", "logger=none", "trainer.enable_progress_bar=false"]


def run(module, args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )


@pytest.fixture(scope="module")
def cli_pairs(toy_sft_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    args = ["experiment=toy", f"model.name_or_path={toy_sft_dir}", "output_dir=pairs", "label_noise=0.25"]
    args += ["train_size=64", "val_size=32", "progress=false"]
    proc = run("rmopt.pairs", args, root)
    assert proc.returncode == 0, proc.stderr
    assert "train: 64 pairs" in proc.stdout
    return root


def test_two_seed_sweep_writes_both_members(toy_sft_dir, cli_pairs):
    args = ["-m", *TOY, f"model.name_or_path={toy_sft_dir}", "data.path=pairs", "output_dir=models/rm", "seed=1,2"]
    args += ["trainer.max_steps=4", "hydra.sweep.dir=sweep-ok"]
    proc = run("rmopt.rm", args, cli_pairs)
    assert proc.returncode == 0, proc.stderr
    assert "every job succeeded" in proc.stdout
    for seed in (1, 2):
        folder = cli_pairs / "models" / f"rm_seed{seed}"
        assert (folder / "model.safetensors").exists() and (folder / "reward_stats.json").exists()
        config = (folder / "rmopt_config.yaml").read_text()
        assert f"seed: {seed}\n" in config
    from rmopt.ensemble import RewardEnsemble

    ens = RewardEnsemble.load(str(cli_pairs / "models" / "rm_seed{seed}"), [1, 2], max_length=64)
    assert ens.score(["List 3 animals."], [""], ["cat, dog, fox"]).shape == (2, 1)


def test_failing_member_does_not_stop_the_sweep(toy_sft_dir, cli_pairs):
    # the first job points at pairs that do not exist; the second must still train, and the sweep reports the first
    args = ["-m", *TOY, f"model.name_or_path={toy_sft_dir}", "data.path=missing-pairs,pairs", "output_dir=models/f"]
    args += ["trainer.max_steps=2", "hydra.sweep.dir=sweep-fail"]
    proc = run("rmopt.rm", args, cli_pairs)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (cli_pairs / "models" / "f_seed1" / "model.safetensors").exists()
    assert "1 job(s) failed" in proc.stderr
    summary_line = [line for line in proc.stderr.splitlines() if line.startswith("  job 0 ")]
    assert summary_line and "missing-pairs" in summary_line[0], proc.stderr
    (record,) = [json.loads(p.read_text()) for p in (cli_pairs / "sweep-fail" / "failures").glob("*.json")]
    assert record["job"] == 0 and "data.path=missing-pairs" in record["overrides"]
    assert "Traceback" not in proc.stderr  # one line per failure, the traceback is in the record
