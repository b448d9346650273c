"""Pieces the training modules share: optimizer set-up and sample logging."""

from __future__ import annotations

import functools
import json
import os

import torch


def configure_optimizer(module, params, optimizer_factory, warmup_steps: int = 0):
    """Instantiate a ``_partial_`` optimizer on ``params``, with a linear warm-up if asked."""
    optimizer = optimizer_factory(params=params)
    if not warmup_steps:
        return optimizer
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def fused_on_cpu(optimizer_factory):
    """``optimizer_factory`` (a ``_partial_`` optimizer), taking ``fused=True`` for Adam/AdamW on CPU parameters
    unless the config chose ``fused`` or ``foreach`` itself: one kernel per step instead of ~10 ops per tensor
    (what Hugging Face's Trainer uses by default too). Other optimizers and devices are left as they are."""
    if not (
        isinstance(optimizer_factory, functools.partial)
        and optimizer_factory.func in (torch.optim.Adam, torch.optim.AdamW)
        and not {"fused", "foreach"} & set(optimizer_factory.keywords)
    ):
        return optimizer_factory

    def factory(params, **kwargs):
        params = list(params)
        tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
        on_cpu = bool(tensors) and all(t.device.type == "cpu" and t.is_floating_point() for t in tensors)
        return optimizer_factory(params=params, **({"fused": True} if on_cpu else {}), **kwargs)

    return factory


def clip_gradients(module, optimizer, max_norm: float | None, algorithm: str | None = "norm") -> None:
    """Lightning's gradient clipping, except under FSDP, whose precision plugin refuses clipping by norm
    (the plain ``clip_grad_norm_`` would see one shard's norm): there the FSDP root module clips by the
    norm over all shards."""
    if not max_norm:
        return
    root = _fsdp_root(module) if algorithm in (None, "norm") else None
    if root is not None:
        root.clip_grad_norm_(float(max_norm))
    else:
        module.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm=algorithm)


class ModelTrainingHooks:
    """Hooks the SFT and reward-model LightningModules share (they hold ``model``, ``optimizer_factory``,
    ``warmup_steps`` and a validation ``history``): AdamW fused on CPU, ``trainer.gradient_clip_val`` by the
    global norm under FSDP too (:func:`clip_gradients`), and the history kept in checkpoints so a resumed
    run reports the whole curve."""

    def configure_optimizers(self):
        return configure_optimizer(self, self.model.parameters(), fused_on_cpu(self.optimizer_factory), self.warmup_steps)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["rmopt_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint):
        self.history = list(checkpoint.get("rmopt_history", []))


def _fsdp_root(module):
    """The FSDP module wrapping ``module`` during training (Lightning's FSDP strategy wraps the whole
    LightningModule), or None."""
    strategy = getattr(getattr(module, "_trainer", None), "strategy", None)
    if strategy is None or "FSDP" not in type(strategy).__name__:
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = getattr(strategy, "model", None)
    return model if isinstance(model, FullyShardedDataParallel) else None


def logs_this_step(module) -> bool:
    """Whether Lightning writes this training step's logged values (every ``log_every_n_steps``): on other steps
    the values of ``self.log`` are overwritten unseen, and skipping the call saves its bookkeeping (a few
    percent of a small model's step). Lightning's own test; True if it cannot be asked."""
    trainer = getattr(module, "_trainer", None)
    connector = getattr(trainer, "_logger_connector", None)
    try:
        return bool(connector.should_update_logs) if connector is not None else True
    except Exception:  # private Lightning API: if it changes, log every step
        return True


def log_samples(module, rows: list[dict], key: str = "samples") -> None:
    """Log sample answers: a table on W&B, a JSON-lines file beside the CSV logs otherwise."""
    if not rows or module.trainer is None or not module.trainer.is_global_zero:
        return
    step = module.global_step
    for logger in module.loggers:
        if hasattr(logger, "log_table"):
            columns = list(rows[0])
            logger.log_table(key=key, columns=["step", *columns], data=[[step, *r.values()] for r in rows])
        elif getattr(logger, "log_dir", None):
            os.makedirs(logger.log_dir, exist_ok=True)
            with open(os.path.join(logger.log_dir, f"{key}.jsonl"), "a") as f:
                for r in rows:
                    f.write(json.dumps({"step": step, **r}) + "\n")
