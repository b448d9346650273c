"""The trainer and ensemble groups field by field, in every stage; the SLURM launcher built by its plugin."""

from __future__ import annotations

import hydra
import pytest
import torch
from conftest import compose
from omegaconf import OmegaConf

from rmopt.errors import RmoptError
from rmopt.rm import heads_of

# --------------------------------------------------------------------------------------------- trainer

# conf/trainer/cpu.yaml, which every other option starts from (written out here, not read from the file)
CPU = {
    "_target_": "lightning.pytorch.Trainer",
    "accelerator": "cpu",
    "devices": 1,
    "precision": "32-true",
    "max_steps": 1000,
    "max_epochs": -1,
    "val_check_interval": 100,
    "check_val_every_n_epoch": None,
    "log_every_n_steps": 10,
    "num_sanity_val_steps": 0,
    "enable_model_summary": False,
    "deterministic": True,
    "enable_progress_bar": True,
    "inference_mode": False,
    "gradient_clip_val": 1.0,
}
FSDP_STRATEGY = {
    "_target_": "rmopt.models.fsdp_strategy",
    "layers": ["transformers.models.gpt_neox.modeling_gpt_neox.GPTNeoXLayer"],
    "sharding_strategy": "FULL_SHARD",
    "activation_checkpointing": False,
    "state_dict_type": "full",
}
# what each option changes from cpu: a GPU option must not keep cpu's 32-true or deterministic
OPTION_DELTA = {
    "cpu": {},
    "gpu": {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed", "deterministic": False},
    "ddp": {"accelerator": "auto", "devices": 2, "strategy": "ddp"},
    "fsdp": {"accelerator": "gpu", "devices": "auto", "precision": "bf16-mixed", "deterministic": False, "strategy": FSDP_STRATEGY},
    "deepspeed": {
        "accelerator": "gpu", "devices": "auto", "precision": "bf16-mixed", "deterministic": False, "strategy": "deepspeed_stage_2",
    },
}
# what each stage's own config sets in `trainer:` (it comes after the group, so it wins), without an experiment
STAGE_DELTA = {
    "sft": {"max_steps": 1000},
    "rm": {"max_epochs": 5, "max_steps": -1},
    "ppo": {"max_steps": 3000, "gradient_clip_val": None, "log_every_n_steps": 1, "limit_val_batches": 0, "val_check_interval": None},
}


def trainer_node(stage, option, *extra):
    return OmegaConf.to_container(compose(stage, [f"trainer={option}", *extra]).trainer, resolve=True)


@pytest.mark.parametrize("option", list(OPTION_DELTA))
@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
def test_trainer_option_composes_to_exactly_these_fields(stage, option):
    expected = {**CPU, **OPTION_DELTA[option], **STAGE_DELTA[stage]}
    assert trainer_node(stage, option) == expected


def test_experiments_set_the_steps_and_cadence_per_stage():
    toy = {"sft": 600, "rm": 600, "ppo": 300}
    for stage, steps in toy.items():
        node = trainer_node(stage, "gpu", "experiment=toy")
        assert node["max_steps"] == steps and node["val_check_interval"] == 100
        assert node["precision"] == "bf16-mixed" and node["accelerator"] == "gpu"  # the group's, untouched
    assert trainer_node("rm", "cpu", "experiment=toy")["max_epochs"] == 5


def _build(node, **kw):
    return hydra.utils.instantiate(node, logger=False, enable_checkpointing=False, **kw)


def test_cpu_trainer_is_built_with_every_field():
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import SingleDeviceStrategy

    trainer = _build(compose("sft", ["trainer=cpu"]).trainer)
    assert isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices == 1
    assert isinstance(trainer.strategy, SingleDeviceStrategy)
    assert trainer.precision == "32-true"
    assert trainer.max_steps == 1000 and trainer.fit_loop.max_epochs == -1
    assert trainer.val_check_interval == 100 and trainer.check_val_every_n_epoch is None
    assert trainer.log_every_n_steps == 10 and trainer.num_sanity_val_steps == 0
    assert trainer.gradient_clip_val == 1.0
    assert trainer.validate_loop.inference_mode is False  # metrics keep state across validate() and fit()
    assert torch.are_deterministic_algorithms_enabled()
    assert trainer.progress_bar_callback is not None
    assert not any(type(c).__name__ == "ModelSummary" for c in trainer.callbacks)


def test_gpu_trainer_precision_is_lightnings_bf16_mixed():
    """No GPU here: the same node on the CPU accelerator shows its precision and determinism take effect."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    node = compose("sft", ["trainer=gpu"]).trainer
    trainer = _build(node, accelerator="cpu")
    assert isinstance(trainer.precision_plugin, MixedPrecision) and trainer.precision == "bf16-mixed"
    assert not torch.are_deterministic_algorithms_enabled()
    _build(compose("sft", ["trainer=cpu"]).trainer)  # leave the process deterministic, as the other tests expect
    assert torch.are_deterministic_algorithms_enabled()


def test_ddp_trainer_is_two_gloo_processes_on_this_cpu_machine():
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import DDPStrategy

    if torch.cuda.is_available():
        pytest.skip("accelerator=auto picks the GPU here")
    trainer = _build(compose("sft", ["trainer=ddp"]).trainer)
    assert isinstance(trainer.accelerator, CPUAccelerator)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
    assert trainer.strategy._get_process_group_backend() == "gloo"
    assert trainer.precision == "32-true"


@pytest.mark.parametrize("checkpointing", [False, True])
def test_fsdp_strategy_is_built_with_its_fields(checkpointing):
    from torch.distributed.fsdp import ShardingStrategy
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer

    node = compose(
        "sft", ["trainer=fsdp", f"trainer.strategy.activation_checkpointing={checkpointing}", "trainer.strategy.sharding_strategy=SHARD_GRAD_OP"]
    ).trainer
    strategy = hydra.utils.instantiate(node.strategy)
    assert type(strategy).__name__ == "FSDPStrategy"
    assert strategy.sharding_strategy == ShardingStrategy.SHARD_GRAD_OP
    assert strategy._state_dict_type == "full"
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {GPTNeoXLayer}
    if checkpointing:
        assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {GPTNeoXLayer}
    else:
        assert not strategy._activation_checkpointing_kwargs
    default = hydra.utils.instantiate(compose("sft", ["trainer=fsdp"]).trainer.strategy)
    assert default.sharding_strategy == ShardingStrategy.FULL_SHARD


def test_deepspeed_strategy_name_is_lightnings_zero_stage_2():
    from lightning.pytorch.strategies import StrategyRegistry

    name = compose("sft", ["trainer=deepspeed"]).trainer.strategy
    entry = StrategyRegistry[name]
    assert entry["strategy"].__name__ == "DeepSpeedStrategy" and entry["init_params"] == {"stage": 2}


# --------------------------------------------------------------------------------------------- ensemble


@pytest.mark.parametrize(
    "overrides, fields, heads",
    [
        ([], {"kind": "independent", "bootstrap": False}, 1),
        (["ensemble=independent"], {"kind": "independent", "bootstrap": False}, 1),
        (["ensemble.bootstrap=true"], {"kind": "independent", "bootstrap": True}, 1),
        (["ensemble=multihead"], {"kind": "multihead", "k": 5, "bootstrap": True}, 5),
        (["ensemble=multihead", "ensemble.k=3", "ensemble.bootstrap=false"], {"kind": "multihead", "k": 3, "bootstrap": False}, 3),
        (["ensemble=independent", "+ensemble.k=4"], {"kind": "independent", "bootstrap": False, "k": 4}, 1),  # k counts for multihead only
    ],
)
def test_ensemble_option_fields_and_heads(overrides, fields, heads):
    cfg = compose("rm", overrides)
    assert OmegaConf.to_container(cfg.ensemble) == fields
    assert heads_of(cfg) == heads


def test_multihead_with_no_heads_is_refused():
    with pytest.raises(RmoptError, match="ensemble.k=0"):
        heads_of(compose("rm", ["ensemble=multihead", "ensemble.k=0"]))


# --------------------------------------------------------------------------------------------- SLURM launcher

SLURM_FIELDS = {
    "_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "timeout_min": 240,
    "cpus_per_task": 8,
    "gpus_per_node": 1,
    "tasks_per_node": 1,
    "mem_gb": 64,
    "nodes": 1,
    "stderr_to_stdout": False,
    "partition": None,
    "qos": None,
    "comment": None,
    "constraint": None,
    "exclude": None,
    "gres": None,
    "cpus_per_gpu": None,
    "gpus_per_task": None,
    "mem_per_gpu": None,
    "mem_per_cpu": None,
    "account": None,
    "signal_delay_s": 120,
    "max_num_timeout": 0,
    "additional_parameters": {},
    "array_parallelism": 256,
    "setup": None,
    "srun_args": None,
}


def compose_with_hydra(stage, overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from rmopt.stage import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3", job_name=f"rmopt-{stage}"):
        return hydra_compose(stage, overrides, return_hydra_config=True)


def test_slurm_launcher_composes_and_the_plugin_builds_it(tmp_path):
    # the plugin is a dev dependency (pyproject.toml): missing, this fails rather than skips
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    sweep = tmp_path / "sweep"
    cfg = compose_with_hydra("rm", ["hydra/launcher=slurm", f"hydra.sweep.dir={sweep}", "hydra.launcher.partition=gpu"])
    node = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert node == {**SLURM_FIELDS, "partition": "gpu", "submitit_folder": f"{sweep}/.submitit/%j", "name": "rmopt-rm"}
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    assert isinstance(launcher, SlurmLauncher)
    assert launcher.params == {k: v for k, v in node.items() if k != "_target_"}


def test_slurm_launcher_hands_submitit_a_valid_sbatch_script(tmp_path, monkeypatch):
    """The launcher's own launch() up to the submission: every field is one submitit accepts and lands in
    the sbatch script; the submission itself is intercepted (no job is submitted, no srun needed)."""
    import submitit
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext
    from submitit.slurm.slurm import SlurmExecutor

    sweep = tmp_path / "sweep"
    overrides = [
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={sweep}",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=proj7",
        "hydra.launcher.gpus_per_node=2",
        "hydra.launcher.array_parallelism=3",
    ]
    cfg = compose_with_hydra("rm", overrides)
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # pretend srun is there
    submitted = {}

    def intercept(self, fn, *iterables):
        submitted["jobs"] = list(zip(*iterables, strict=True))
        submitted["script"] = self._executor._make_submission_file_text("python -m job", "uid")
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", intercept)
    launcher = Plugins.instance().instantiate_launcher(
        hydra_context=HydraContext(config_loader=None, callbacks=None), task_function=lambda c: None, config=cfg
    )
    assert launcher.launch([["seed=1"], ["seed=2"]], initial_job_idx=0) == []
    assert [job[0] for job in submitted["jobs"]] == [["seed=1"], ["seed=2"]]
    script = submitted["script"]
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj7",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --time=240",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --job-name=rmopt-rm",
        "#SBATCH --signal=USR2@120",
    ):
        assert line in script.splitlines(), (line, script)
    assert sweep.is_dir()  # launch() made the sweep folder, as before a real submission
