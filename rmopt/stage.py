"""What every stage's Hydra main does around its own work: seeding, threads, trainer, saving."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from rmopt.utils import atomic_write_text, quiet_third_party, set_threads

CONFIG_PATH = str(Path(__file__).resolve().parent.parent / "conf")


def prepare(cfg: DictConfig) -> None:
    """Quiet logs, pin threads and seed everything, so a run is reproducible on CPU."""
    import lightning as L

    quiet_third_party()
    set_threads(cfg.get("threads"))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    torch.use_deterministic_algorithms(bool(cfg.get("deterministic", True)), warn_only=True)


def build_loggers(cfg: DictConfig) -> list:
    if not cfg.get("logger"):
        return []
    return [hydra.utils.instantiate(c) for c in cfg.logger.values() if c is not None and "_target_" in c]


def build_trainer(cfg: DictConfig, ckpt_dir: str | os.PathLike | None, extra_callbacks=()):
    """The Lightning Trainer of ``cfg.trainer``, with step checkpoints (and ``last.ckpt``) in ``ckpt_dir``."""
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    callbacks = list(extra_callbacks)
    if ckpt_dir is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="step{step}",
                auto_insert_metric_name=False,
                every_n_train_steps=int(cfg.get("checkpoint_every", 100)),
                save_top_k=1,
                save_last=True,
            )
        )
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(TQDMProgressBar(refresh_rate=int(cfg.get("progress_every", 10))))
    loggers = build_loggers(cfg)
    return hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)


def resolve_ckpt_path(ckpt_path: str | None, ckpt_dir: str | os.PathLike) -> str | None:
    """``ckpt_path=last`` resumes from ``ckpt_dir/last.ckpt`` if a run left one, else starts fresh."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = Path(ckpt_dir) / "last.ckpt"
        if last.exists():
            print(f"resuming from {last}")
            return str(last)
        print(f"ckpt_path=last: no checkpoint in {ckpt_dir} yet, starting fresh")
        return None
    if not Path(ckpt_path).exists():
        from rmopt.errors import RmoptError

        raise RmoptError(f"ckpt_path {ckpt_path!r} does not exist")
    return ckpt_path


def save_run_config(cfg: DictConfig, folder: str | os.PathLike, name: str = "rmopt_config.yaml") -> None:
    """The full resolved config (seed included) beside a stage's outputs."""
    text = OmegaConf.to_yaml(_plain(cfg), resolve=True)
    atomic_write_text(Path(folder) / name, text)


def _plain(cfg: DictConfig) -> DictConfig:
    """The config without Hydra's own node, which cannot be resolved outside a Hydra run."""
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    return cfg


def loss_curve_text(history: list[dict[str, float]], key: str = "val_loss", width: int = 40) -> str:
    """A small text plot of a loss curve, for the terminal."""
    if not history:
        return "(no validation points)"
    values = [h[key] for h in history]
    lo, hi = min(values), max(values)
    lines = []
    for h, v in zip(history, values):
        bar = "#" * (1 + int((width - 1) * (v - lo) / (hi - lo))) if hi > lo else "#"
        lines.append(f"  step {int(h['step']):>6}  {key} {v:8.4f}  {bar}")
    return "\n".join(lines)
