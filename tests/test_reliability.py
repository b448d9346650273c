"""Issue 10: kill -9 and resume, no-op reruns, sweep failures, one-line errors, non-finite loss, determinism.

Most tests run a stage's Hydra main in-process (sys.argv patched, cwd a tmp folder); the kill tests
start one training subprocess each and kill it once a checkpoint exists.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose, save_stand_in_rms

TINY_ARGS = [f"model.config.{k}={v}" for k, v in TINY.items()]
QUIET = ["logger=none", "trainer.enable_progress_bar=false"]
# a tiny SFT run over ~3 epochs of 12 batches: resumes land mid-epoch; validation (with sampling) every 10
SFT_ARGS = ["experiment=toy", *QUIET, *TINY_ARGS, "data.sizes.sft=200", "data.sizes.val=32", "batch_size=16"]
SFT_ARGS += ["trainer.max_steps=40", "checkpoint_every=5", "trainer.val_check_interval=10", "sample_count=2"]
RM_ARGS = [
    "experiment=toy",
    *QUIET,
    *TINY_ARGS,
    "batch_size=8",
    "trainer.max_steps=30",
    "trainer.max_epochs=-1",
]
RM_ARGS += ["checkpoint_every=4", "trainer.val_check_interval=8", "warmup_steps=5"]


def weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def run_main(main, argv, monkeypatch, capsys):
    """Run a stage's console entry point in-process; (exit code, stdout, stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["rmopt", *argv])
    monkeypatch.delenv("RMOPT_TRACEBACK", raising=False)
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------ kill -9 and resume


def kill_at_checkpoint(module, args, cwd, ckpt_dir: Path, step: int, timeout: float = 120):
    """Start ``python -m module args``; SIGKILL it as soon as ``ckpt_dir/step{step}.ckpt`` exists."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    try:
        while not (ckpt_dir / f"step{step}.ckpt").exists():
            if proc.poll() is not None:
                raise AssertionError(
                    f"{module} ended before step {step}: {proc.stderr.read().decode()[-2000:]}"
                )
            assert time.monotonic() < deadline, f"no step{step}.ckpt after {timeout} s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def check_checkpoints_whole(ckpt_dir: Path):
    """Every checkpoint left by the kill loads (a temporary file may remain, under a dot name)."""
    names = [p.name for p in ckpt_dir.iterdir() if not p.name.startswith(".")]
    assert "last.ckpt" in names
    for name in names:
        torch.load(ckpt_dir / name, map_location="cpu", weights_only=True)


def test_sft_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    from rmopt.sft import train

    # uninterrupted, in-process
    train(compose("sft", [*SFT_ARGS, f"output_dir={tmp_path / 'a'}"], output_dir=tmp_path / "run-a"))
    # killed right after the step-15 checkpoint (mid-epoch: 12 batches an epoch; not a validation step)
    b = tmp_path / "b"
    kill_at_checkpoint(
        "rmopt.sft", [*SFT_ARGS, f"output_dir={b}", "hydra.run.dir=run-b"], tmp_path, b / "checkpoints", 15
    )
    assert not (b / "model.safetensors").exists()
    check_checkpoints_whole(b / "checkpoints")
    # resumed: resume=true is ckpt_path=last
    train(compose("sft", [*SFT_ARGS, f"output_dir={b}", "resume=true"], output_dir=tmp_path / "run-b2"))
    assert_same_weights(tmp_path / "a", b)
    history = json.loads((b / "sft_history.json").read_text())
    assert [h["step"] for h in history] == [0, 10, 20, 30, 40]  # the curve from before the kill is kept
    assert history == json.loads((tmp_path / "a" / "sft_history.json").read_text())


def test_rm_killed_mid_run_resumes_to_the_same_weights(tmp_path, pairs_dir):
    from rmopt.rm import train

    args = [*RM_ARGS, f"data.path={pairs_dir}"]
    train(compose("rm", [*args, f"output_dir={tmp_path / 'a'}"], output_dir=tmp_path / "run-a"))
    b = tmp_path / "b_seed1"
    kill_at_checkpoint(
        "rmopt.rm",
        [*args, f"output_dir={tmp_path / 'b'}", "hydra.run.dir=run-b"],
        tmp_path,
        b / "checkpoints",
        20,
    )  # epoch 1, batch 8 of 12
    check_checkpoints_whole(b / "checkpoints")
    train(
        compose(
            "rm", [*args, f"output_dir={tmp_path / 'b'}", "ckpt_path=last"], output_dir=tmp_path / "run-b2"
        )
    )
    assert_same_weights(tmp_path / "a_seed1", b)
    assert json.loads((b / "reward_stats.json").read_text()) == json.loads(
        (tmp_path / "a_seed1" / "reward_stats.json").read_text()
    )


def test_sampler_order_depends_on_seed_and_epoch_and_skips_consumed_batches():
    from rmopt.data.sampler import ResumableSampler

    step = {"n": 0}
    s = ResumableSampler(10, 3, seed=7, drop_last=True, consumed=lambda: step["n"])
    assert s.batches_per_epoch == 3
    epoch0 = list(s)
    assert sorted(epoch0) == list(range(10)) and epoch0 == s.order(0)
    step["n"] = 3  # three batches done: epoch 1 from its start
    assert list(s) == s.order(1) != epoch0
    step["n"] = 5  # epoch 1, two batches done: the rest of epoch 1
    assert list(s) == s.order(1)[6:]
    assert ResumableSampler(10, 3, seed=8, drop_last=True).order(0) != epoch0


def test_sampler_shards_each_epoch_over_processes_and_resumes_each_share():
    from torch.utils.data import DistributedSampler

    from rmopt.data.sampler import ResumableSampler

    step = {"n": 0}
    shards = [ResumableSampler(10, 2, seed=7, drop_last=True, consumed=lambda: step["n"], num_replicas=3, rank=r)
              for r in range(3)]
    assert isinstance(shards[0], DistributedSampler)  # so Lightning keeps it instead of wrapping it
    full = ResumableSampler(10, 2, seed=7, drop_last=True).order(0)
    padded = full + full[:2]  # 12 = 3 processes x 4 rows
    assert [list(s) for s in shards] == [padded[r::3] for r in range(3)]
    assert all(len(s) == 4 and s.batches_per_epoch == 2 for s in shards)
    step["n"] = 3  # epoch 1, one batch of each share done
    assert [list(s) for s in shards] == [s.order(1)[2:] for s in shards]
    assert sorted(sum((s.order(1) for s in shards), [])) == sorted(
        ResumableSampler(10, 2, seed=7, drop_last=True).order(1) + ResumableSampler(10, 2, 7, True).order(1)[:2])
    with pytest.raises(ValueError, match="rank 3 is not in 0..2"):
        ResumableSampler(10, 2, 7, True, num_replicas=3, rank=3)


# ------------------------------------------------------------------------------------ reruns, determinism


def test_same_seed_same_weights_and_rerun_is_a_no_op(tmp_path, monkeypatch, capsys):
    from rmopt.sft import main

    monkeypatch.chdir(tmp_path)
    args = [*SFT_ARGS, "trainer.max_steps=12", "sample_count=0"]
    assert run_main(main, [*args, "output_dir=a"], monkeypatch, capsys)[0] == 0
    assert run_main(main, [*args, "output_dir=b"], monkeypatch, capsys)[0] == 0
    assert_same_weights("a", "b")  # determinism: same seed and config, bit-identical model
    config = (tmp_path / "a" / "rmopt_config.yaml").read_text()
    assert "seed: 0\n" in config and "max_steps: 12" in config  # the seed and full config beside the model
    stamp = (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns
    code, out, _ = run_main(main, [*args, "output_dir=a", "ckpt_path=last"], monkeypatch, capsys)
    assert code == 0 and "already done: a (overwrite=true to redo)" in out
    assert (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns == stamp
    code, out, _ = run_main(main, [*args, "output_dir=a", "overwrite=true"], monkeypatch, capsys)
    assert code == 0 and "already done" not in out and "SFT model saved" in out
    # another seed is another run, with other weights
    assert run_main(main, [*args, "output_dir=a", "seed=1"], monkeypatch, capsys)[0] == 0
    assert not torch.equal(weights("a")["gpt_neox.embed_in.weight"], weights("b")["gpt_neox.embed_in.weight"])


# ------------------------------------------------------------------------------------ non-finite loss


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import rmopt.modules.sft as sft_module
    from rmopt.errors import RmoptError
    from rmopt.sft import train

    real = sft_module.SFTModule.loss

    def poisoned(self, batch):  # nan from the 8th training step on
        loss, n = real(self, batch)
        step = poisoned.trainer.global_step if poisoned.trainer is not None else 0
        return (loss * math.nan if loss.requires_grad and step >= 7 else loss), n

    poisoned.trainer = None
    monkeypatch.setattr(sft_module.SFTModule, "loss", poisoned)
    original_fit = sft_module.SFTModule.on_fit_start

    def on_fit_start(self):
        poisoned.trainer = self.trainer
        return original_fit(self)

    monkeypatch.setattr(sft_module.SFTModule, "on_fit_start", on_fit_start)
    out = tmp_path / "sft"
    cfg = compose("sft", [*SFT_ARGS, "sample_count=0", f"output_dir={out}"], output_dir=tmp_path / "run")
    with pytest.raises(RmoptError, match=r"loss became nan at step 7; .*last good checkpoint: .*last\.ckpt"):
        train(cfg)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (out / "model.safetensors").exists()


# ------------------------------------------------------------------------------------ sweeps


def test_sft_sweep_with_a_failing_member_finishes_the_others(tmp_path, monkeypatch, capsys):
    from rmopt.sft import main

    monkeypatch.chdir(tmp_path)
    args = [
        "-m",
        *SFT_ARGS,
        "trainer.max_steps=2",
        "sample_count=0",
        "output_dir=out",
        "hydra.sweep.dir=sweep",
    ]
    code, out, err = run_main(main, [*args, "model.name_or_path=./no-such-model,null"], monkeypatch, capsys)
    assert code == 1, out + err
    assert (tmp_path / "out" / "model.safetensors").exists()  # job 1 trained
    lines = [line for line in err.splitlines() if line.startswith("  job 0 ")]
    assert lines and "no-such-model" in lines[0] and "does not exist" in lines[0], err
    assert "1 job(s) failed" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, pairs_dir):
    """Files for the bad-input table: a pairs set without `preference`, an empty one, gold gens with 2 answers,
    a tokenizer folder without the prompt format's special tokens."""
    import datasets
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("bad")
    full = datasets.load_from_disk(str(pairs_dir))
    datasets.DatasetDict({k: v.remove_columns("preference") for k, v in full.items()}).save_to_disk(
        str(root / "nocol")
    )
    datasets.DatasetDict({k: v.select([]) for k, v in full.items()}).save_to_disk(str(root / "empty"))
    rows = [
        {
            "instruction": "List 2 animals.",
            "input": "",
            "answers": ["cat, dog", "dog"],
            "gold_scores": [1.0, 0.0],
        }
    ]
    (root / "gens.json").write_text(json.dumps(rows))
    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(root / "plain-rm1"))
    (root / "rm1").mkdir()
    return root


BAD_INPUTS = [
    # (id, stage, args, words the one-line message must contain)
    ("unknown group option", "sft", ["model=nope"], ["unknown model 'nope'", "toy-tiny"]),
    ("key the stage lacks", "bon", ["trainer.max_steps=3"], ["trainer.max_steps", "+trainer.max_steps=3"]),
    (
        "model path missing",
        "sft",
        ["model.name_or_path=./no/such/model"],
        ["./no/such/model", "does not exist"],
    ),
    ("hub name offline", "sft", ["model.name_or_path=EleutherAI/pythia-70m"], ["EleutherAI/pythia-70m"]),
    ("several seeds, no {seed}", "bon", ['proxy_rm_path="rm-one"', "seeds=[1,2]"], ["rm-one", "{seed}"]),
    ("missing column", "rm", ["data.path={bad}/nocol"], ["preference"]),
    ("empty data set", "rm", ["data.path={bad}/empty"], ["{bad}/empty", "expected"]),
    (
        "n above the answers",
        "bon",
        ['proxy_rm_path="{bad}/rm{seed}"', "seeds=[1]", "gold_gens={bad}/gens.json", "big_n=8"],
        ["big_n", "8", "2"],
    ),
    ("negative weight", "ppo", ["objective=uwo", "objective.weight=-1"], ["-1", "weight"]),
    ("nan weight", "ppo", ["objective=uwo", "objective.weight=nan"], ["nan", "weight"]),
    (
        "tokenizer lacks special tokens",
        "ppo",
        ['proxy_rm_path="{bad}/plain-rm{seed}"'],
        ["special tokens", "plain-rm1"],
    ),
]


@pytest.mark.parametrize("name,stage,args,words", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_1_and_writes_nothing(
    name, stage, args, words, bad_inputs, toy_lm_dir, tmp_path, monkeypatch, capsys
):
    import importlib

    main = {"sft": "rmopt.sft:main", "rm": "rmopt.rm:main", "bon": "rmopt.bon_pipeline:main", "ppo": "rmopt.ppo:main"}[
        stage
    ]
    module, attr = main.split(":")
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{bad}", str(bad_inputs)) for a in args]
    words = [w.replace("{bad}", str(bad_inputs)) for w in words]
    extra = ["experiment=toy", "output_dir=result", *(QUIET if stage in ("sft", "rm", "ppo") else [])]
    if stage == "ppo":
        extra += [f"model.name_or_path={toy_lm_dir}", f'proxy_rm_path="{bad_inputs}/rm{{seed}}"']
    code, out, err = run_main(
        getattr(importlib.import_module(module), attr), [*extra, *args], monkeypatch, capsys
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, out + err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not any(tmp_path.glob("result*")), sorted(p.name for p in tmp_path.iterdir())


def test_ppo_killed_mid_run_resumes_to_the_same_policy(tmp_path, toy_sft_dir, capsys):
    from rmopt.ppo import train

    save_stand_in_rms(toy_sft_dir, tmp_path, seeds=(1,))
    args = [
        "experiment=toy", f"model.name_or_path={toy_sft_dir}", f'proxy_rm_path="{tmp_path}/rm_seed{{seed}}"',
        "seeds=[1]", "objective=single", "trainer.max_steps=8", "checkpoint_every=2", "eval_every=4",
        "rollout_batch_size=8", "minibatch_size=4", "ppo_epochs=1", "max_new_tokens=12", "eval_prompts=4",
        "sample_every=0", "logger=none", "trainer.enable_progress_bar=false",
    ]
    train(compose("ppo", [*args, f"output_dir={tmp_path / 'a'}"], output_dir=tmp_path / "run-a"))
    b = tmp_path / "b"
    kill_at_checkpoint("rmopt.ppo", [*args, f"output_dir={b}", "hydra.run.dir=run-b"], tmp_path, b / "checkpoints", 4)
    assert not (b / "policy").exists()
    check_checkpoints_whole(b / "checkpoints")
    capsys.readouterr()
    train(compose("ppo", [*args, f"output_dir={b}", "ckpt_path=last"], output_dir=tmp_path / "run-b2"))
    assert f"resuming from {b / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().out  # not a fresh start
    assert_same_weights(tmp_path / "a" / "policy", b / "policy")
    same = json.loads((tmp_path / "a" / "eval" / "step_000008.json").read_text())
    assert json.loads((b / "eval" / "step_000008.json").read_text())["rows"] == same["rows"]
