"""Every option of every config group composes and instantiates; the CLI rejects bad overrides in one line."""

import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from conftest import compose
from omegaconf import OmegaConf

from rmopt.errors import RmoptError, check_overrides, group_options
from rmopt.stage import CONFIG_PATH

CONF = Path(CONFIG_PATH)
ENTRY_CONFIGS = sorted(p.stem for p in CONF.glob("*.yaml"))
GROUPS = ["model", "data", "objective", "trainer", "logger", "experiment", "gold", "ensemble"]


def _all_options():
    for group in GROUPS:
        for option in group_options(group):
            yield group, option


@pytest.mark.parametrize("entry", ENTRY_CONFIGS)
@pytest.mark.parametrize("experiment", ["toy", "paper"])
def test_entry_configs_compose_with_each_experiment(entry, experiment, tmp_path):
    cfg = compose(entry, [f"experiment={experiment}"], output_dir=tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.seed is not None and "output_dir" in cfg


@pytest.fixture(scope="module")
def gold_rm_dir(tmp_path_factory, tiny_source, toy_tokenizer):
    """A tiny one-output sequence classifier standing in for a neural gold RM."""
    from rmopt.utils import save_hf_folder

    path = tmp_path_factory.mktemp("gold-rm")
    save_hf_folder(path, tiny_source.load_reward_model(toy_tokenizer), toy_tokenizer)
    return path


@pytest.mark.parametrize("group, option", list(_all_options()))
def test_every_group_option_composes_and_instantiates(group, option, tmp_path, monkeypatch, gold_rm_dir):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    # a neural gold RM needs a model folder: a tiny local one stands in for the hub's
    extra = [f"+gold.name_or_path={gold_rm_dir}", "+gold.device=cpu"] if group == "gold" and option != "toy" else []
    try:
        cfg = compose("sft", [f"{group}={option}", *extra], output_dir=tmp_path)
    except hydra.errors.ConfigCompositionException:  # a group the SFT stage does not use (objective, ...)
        cfg = compose("sft", [f"+{group}={option}", *[e.replace("+gold", "++gold") for e in extra]], output_dir=tmp_path)
    OmegaConf.resolve(cfg)
    if group == "experiment":
        return
    node = cfg[group]
    if group == "logger":
        for logger_cfg in (node or {}).values():
            logger = hydra.utils.instantiate(logger_cfg)
            assert type(logger).__name__.endswith("Logger")
        return
    if group == "trainer":
        if option in ("gpu", "fsdp", "deepspeed"):
            assert node.accelerator == "gpu"  # needs a GPU: check the shape of the config only
            return
        trainer = hydra.utils.instantiate(node, logger=False, enable_checkpointing=False)
        assert trainer.max_steps == node.max_steps
        return
    if "_target_" not in node:  # a plain settings group (ensemble kind)
        assert node.kind == option
        return
    obj = hydra.utils.instantiate(node)
    assert type(obj).__name__ == node._target_.rsplit(".", 1)[-1]
    if group == "gold":
        assert len(obj.score(["List 6 colors."], [""], ["red, blue, pink, gray, tan, teal"])) == 1


def test_wandb_logger_is_offline_by_default_and_groups_a_sweep(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose("sft", ["logger=wandb"], output_dir=tmp_path)
    assert cfg.logger.wandb.mode == "offline"
    assert cfg.logger.wandb.group.startswith("sft-")


@pytest.mark.parametrize(
    "args, message",
    [
        (["model=gpt5"], "unknown model 'gpt5'; expected one of pythia-1.4b"),
        (["objective=mean,best"], "unknown objective 'best'"),
        (["output_dir=models/x_seed{seed}"], "write 'output_dir=\"models/x_seed{seed}\"'"),
    ],
)
def test_bad_overrides_are_caught_before_hydra(args, message):
    with pytest.raises(RmoptError, match=message.replace("{", r"\{").replace("(", r"\(")):
        check_overrides(args)


def test_good_overrides_pass():
    check_overrides(["model=toy-small", "objective=mean,wco", 'proxy_rm_path="a{seed}"', "+x.y=1", "seed=3"])
    check_overrides(["proxy_rm_path=\"models/x_seed{seed}\""])


@pytest.mark.parametrize(
    "args, message",
    [
        (["model=nope"], "error: unknown model 'nope'"),
        (["experiment=toy", "model.name_or_path=/does/not/exist", "logger=none"], "error: model path '/does/not/exist' does not exist"),
    ],
)
def test_cli_bad_input_exits_nonzero_with_one_line(args, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rmopt.sft", *args, f"hydra.run.dir={tmp_path}/run", f"output_dir={tmp_path}/out"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors and errors[0].startswith(message), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
