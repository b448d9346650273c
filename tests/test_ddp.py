"""Scaling configs: a two-process ddp SFT run on CPU (gloo), sharded-strategy configs, SLURM sweeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from conftest import compose

from rmopt.stage import CONFIG_PATH

REPO = Path(CONFIG_PATH).parent
SMALL_DATA = ["data.sizes.sft=256", "data.sizes.val=32", "data.sizes.preference=8", "data.sizes.unlabeled=8"]
COMMON = [
    "experiment=toy",
    "trainer.max_steps=5",
    "trainer.val_check_interval=5",
    "logger=none",
    "sample_count=0",
    "trainer.enable_progress_bar=false",
    "batch_size=8",
    *SMALL_DATA,
]


def _script(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed (pip install -e . --no-deps)")
    return str(path)


def test_ddp_on_cpu_uses_gloo(tmp_path):
    cfg = compose("sft", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], output_dir=tmp_path)
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert type(trainer.strategy).__name__ == "DDPStrategy"
    assert trainer.strategy._get_process_group_backend() == "gloo"
    assert trainer.num_devices == 2


@pytest.mark.slow  # two gloo processes: about 15 s each; make test-full runs it
def test_two_process_ddp_sft_on_cpu(tmp_path):
    """Two gloo processes train 5 steps; rank 0 alone writes the folder; synced val loss = one process's."""
    out, run = tmp_path / "out", tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            _script("rmopt-sft"),
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            f"output_dir={out}",
            f"hydra.run.dir={run}",
            *COMMON,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("SFT model saved to") == 1  # rank 1 ran the same script but did not save
    assert (run / "train_ddp_process_1.log").exists()  # Lightning relaunched the script as rank 1
    assert (out / "model.safetensors").exists() and (out / "checkpoints" / "last.ckpt").exists()
    assert not list(out.glob(".save.*"))  # no half-written folder left by a second writer
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 5
    history = json.loads((out / "sft_history.json").read_text())
    assert [h["step"] for h in history] == [0, 5]

    # The step-0 validation loss is token-weighted over both ranks' halves of the val split, so it
    # equals the loss a single process computes on the whole split from the same initial weights.
    from rmopt.sft import train

    single = tmp_path / "single"
    cfg = compose("sft", [*COMMON, f"output_dir={single}", "trainer.max_steps=1"], output_dir=single / "run")
    train(cfg)
    single_history = json.loads((single / "sft_history.json").read_text())
    assert single_history[0]["step"] == 0
    assert history[0]["val_loss"] == pytest.approx(single_history[0]["val_loss"], rel=1e-5)
    assert history[1]["val_loss"] < history[0]["val_loss"]


def test_sharded_strategy_configs_build():
    cfg = compose("sft", ["trainer=fsdp"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    strategy = hydra.utils.instantiate(cfg.trainer.strategy)
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer

    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {GPTNeoXLayer}
    cfg = compose("sft", ["trainer=deepspeed"])
    assert cfg.trainer.strategy == "deepspeed_stage_2" and cfg.trainer.precision == "bf16-mixed"


def test_fsdp_bad_layer_name_is_one_line():
    from rmopt.errors import RmoptError
    from rmopt.models import fsdp_strategy

    with pytest.raises(RmoptError, match="fsdp layer class"):
        fsdp_strategy(layers=["transformers.NoSuchLayer"])


def test_gathered_state_rebuilds_a_plain_model(toy_lm_dir):
    """What rank 0 saves under fsdp: a fresh model holding the gathered full state dict."""
    from transformers import AutoModelForCausalLM

    from rmopt.models import is_sharded, model_for_saving, plain_model_from_state

    model = AutoModelForCausalLM.from_pretrained(toy_lm_dir)
    module = torch.nn.Module()
    module.model = model  # the LightningModule's attribute: keys "model.*"
    plain = plain_model_from_state(model, module.state_dict())
    assert plain is not model
    for (k, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items(), strict=True):
        assert torch.equal(a, b), k

    class DDP:  # not sharded: the model itself is saved
        pass

    class Trainer:
        strategy = DDP()

    assert not is_sharded(DDP()) and model_for_saving(Trainer(), model) is model


def test_slurm_multirun_composes(tmp_path):
    if not (REPO / "conf" / "hydra" / "launcher" / "slurm.yaml").exists():
        pytest.skip("conf/hydra/launcher/slurm.yaml is not there yet")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = hydra_compose(
            "sft",
            [
                "hydra/launcher=slurm",
                "trainer=ddp",
                "hydra.launcher.gpus_per_node=2",
                f"paths.output_dir={tmp_path}",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == 2 and cfg.trainer.strategy == "ddp"


@pytest.mark.slow  # two gloo processes: about 15 s each; make test-full runs it
def test_two_process_ddp_reward_model_on_cpu(tmp_path):
    """rmopt-rm under ddp on CPU: pairs in the published schema, two gloo processes, one saved model."""
    import datasets

    rows = {
        "train": 64,
        "validation": 16,
    }
    datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {
                    "instruction": [f"List {i % 5 + 1} animals." for i in range(n)],
                    "input": [""] * n,
                    "answers": [["cat, dog", "snow snow"] for _ in range(n)],
                    "preference": [0] * n,
                }
            )
            for split, n in rows.items()
        }
    ).save_to_disk(tmp_path / "pairs")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            _script("rmopt-rm"),
            "experiment=toy",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
            f"data.path={tmp_path / 'pairs'}",
            f"output_dir={tmp_path / 'rm'}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "batch_size=8",
            "warmup_steps=0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = tmp_path / "rm_seed1"
    assert (tmp_path / "run" / "train_ddp_process_1.log").exists()
    assert (out / "model.safetensors").exists() and (out / "reward_stats.json").exists()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    # the chosen answer is always the first: 4 steps at lr 1e-3 already rank every held-out pair
    assert "held-out accuracy 1.000" in proc.stdout
    assert proc.stdout.count("reward model saved to") == 1  # rank 0 alone writes the folder


PPO_DDP_SCRIPT = '''
import hashlib, json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
from conftest import compose
from rmopt.ppo import build_module
from rmopt.stage import build_trainer

out = Path({out!r})
cfg = compose("ppo", {overrides!r}, output_dir=out / "hydra")
trainer = build_trainer(cfg, out / "checkpoints")
module = build_module(cfg)
seen = []
batch = module.prompt_batch
module.prompt_batch = lambda step, rank=0, world=1: seen.append((step, rank, world, batch(step, rank, world))) or seen[-1][3]
trainer.fit(module)
weights = b"".join(p.detach().cpu().numpy().tobytes() for p in module.policy.trainable_parameters())
rank = trainer.global_rank
(out / f"rank{{rank}}.json").write_text(json.dumps({{
    "sha": hashlib.sha256(weights).hexdigest(), "prompts": [s[3] for s in seen], "calls": [s[:3] for s in seen],
    "kl_coef": module.kl_ctl.value,
}}))
'''


def test_two_process_ddp_ppo_splits_prompts_and_noise_and_ends_in_step(tmp_path, toy_sft_dir):
    """PPO under ddp (gloo, 2 processes): different prompts and noise per rank, averaged gradients, the
    same weights on both ranks at the end, and one adaptive KL coefficient for both."""
    from conftest import save_stand_in_rms

    rms = save_stand_in_rms(toy_sft_dir, tmp_path / "rms")
    overrides = [
        "experiment=toy", f"model.name_or_path={toy_sft_dir}", f'proxy_rm_path="{rms}/rm_seed{{seed}}"',
        f"output_dir={tmp_path / 'ppo'}", "logger=none", "trainer.enable_progress_bar=false", "trainer=ddp",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=3", "rollout_batch_size=4",
        "minibatch_size=2", "ppo_epochs=2", "max_new_tokens=8", "eval_prompts=0", "sample_every=0",
        "kl_controller=adaptive", "kl_horizon=10", "optimizer.lr=1e-3", *SMALL_DATA,
    ]
    script = tmp_path / "run_ppo_ddp.py"
    script.write_text(PPO_DDP_SCRIPT.format(tests=str(REPO / "tests"), out=str(tmp_path / "ppo"), overrides=overrides))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ppo" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [c[1:] for c in ranks[0]["calls"]] == [[0, 2]] * 3 and [c[1:] for c in ranks[1]["calls"]] == [[1, 2]] * 3
    for step in range(3):  # the ranks' prompts for a step are consecutive slices of one shuffled order
        p0, p1 = ranks[0]["prompts"][step], ranks[1]["prompts"][step]
        assert p0 != p1
    assert ranks[0]["sha"] == ranks[1]["sha"]  # gradients averaged: the same policy on both ranks
    assert ranks[0]["kl_coef"] == ranks[1]["kl_coef"] != 0.1  # one coefficient, moved by the step's KL
