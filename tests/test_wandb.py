"""W&B logging: offline by default, one run per sweep job, and every job of a sweep in one group."""

import os
import re
import subprocess
import sys

from conftest import TINY


def test_sweep_jobs_get_their_own_wandb_runs_in_one_group(tmp_path):
    args = [
        "-m", "experiment=toy", "seed=1,2", "logger=wandb", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "sample_count=0", "trainer.enable_progress_bar=false", f"output_dir={tmp_path}/sft_$${{seed}}".replace("$$", "$"),
        f"hydra.sweep.dir={tmp_path}/sweep", *[f"model.config.{k}={v}" for k, v in TINY.items()],
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("RMOPT_SWEEP_ID", None)
    proc = subprocess.run([sys.executable, "-m", "rmopt.sft", *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 2  # each job its own run (not the first job's run reused)
    groups, names = [], []
    for run in runs:
        data = run.read_bytes()
        groups.append(set(re.findall(rb"sft-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", data)))
        names.append(set(re.findall(rb"sft-seed\d", data)))
    assert names == [{b"sft-seed1"}, {b"sft-seed2"}]
    assert groups[0] == groups[1] and len(groups[0]) == 1
