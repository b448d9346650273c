"""What every stage's Hydra main does around its own work: seeding, threads, trainer, saving."""

from __future__ import annotations

import os
import warnings
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
    # the train loaders resume mid-epoch through rmopt.data.sampler, which Lightning cannot see
    warnings.filterwarnings(
        "ignore", message=r".*resuming from a checkpoint that ended before the epoch ended"
    )


def build_loggers(cfg: DictConfig) -> list:
    if not cfg.get("logger"):
        return []
    return [hydra.utils.instantiate(c) for c in cfg.logger.values() if c is not None and "_target_" in c]


def build_trainer(cfg: DictConfig, ckpt_dir: str | os.PathLike | None, extra_callbacks=(), **overrides):
    """The Lightning Trainer of ``cfg.trainer`` (``overrides``: Trainer arguments set by the stage), with step
    checkpoints (and ``last.ckpt``) in ``ckpt_dir``.

    Checkpoints are written whole (temporary name, then rename), carry the global RNG states, and a
    non-finite loss stops training before it reaches the weights or a checkpoint.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    callbacks = [*extra_callbacks, RngState(), FiniteLoss()]
    plugins = []
    if ckpt_dir is not None:
        if _plain_strategy(cfg.trainer.get("strategy")):
            plugins.append(_atomic_checkpoint_io())
        callbacks.append(
            _checkpoint_class(ModelCheckpoint)(
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
    extra = {"plugins": plugins} if plugins else {}
    return hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **extra, **overrides)


def _checkpoint_class(base):
    class StepCheckpoint(base):
        """ModelCheckpoint that, when a validation runs right after the checkpoint's step, saves after it.

        Lightning treats a resumed step's validation as done, so a checkpoint saved before it would
        make the resumed run skip a validation (and its sampling) that the uninterrupted run did.
        """

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            every = self._every_n_train_steps
            if every >= 1 and trainer.global_step % every == 0 and _validates_after_this_batch(trainer):
                self._defer_save_until_validation = True  # ModelCheckpoint saves in on_validation_end
                return
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    return StepCheckpoint


def _validates_after_this_batch(trainer) -> bool:
    loop = trainer.fit_loop
    try:
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
    except Exception:  # private Lightning API: if it changes, fall back to saving before validation
        return False


def _plain_strategy(strategy) -> bool:
    """Strategies that save through the Trainer's CheckpointIO (DeepSpeed and sharded FSDP have their own)."""
    return strategy is None or (isinstance(strategy, str) and strategy.startswith(("auto", "ddp", "single")))


def _atomic_checkpoint_io():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """``torch.save`` to a temporary file beside the checkpoint, then ``os.replace``: a kill leaves the old
        checkpoint or the new one, never half of one (Lightning's own save goes through a temp file in
        /tmp and a move, which is a copy across file systems)."""

        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    return AtomicCheckpointIO()


def _callback_base():
    from lightning.pytorch.callbacks import Callback

    return Callback


class RngState(_callback_base()):
    """Saves the global RNG states (torch, numpy, python) in each checkpoint and restores them on resume,
    so dropout and sampling after a resume continue as in an uninterrupted run (Lightning saves none)."""

    def state_dict(self) -> dict:
        import random

        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            # plain lists and numbers: checkpoints load with torch.load(weights_only=True)
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return {"rng": state}

    def __init__(self):
        self._to_restore = None

    def load_state_dict(self, state_dict: dict) -> None:
        # applied when training starts, after the rest of the restore
        self._to_restore = state_dict.get("rng")

    def on_train_start(self, trainer, pl_module) -> None:
        import random

        import numpy as np

        state, self._to_restore = self._to_restore, None
        if not state:
            return
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class FiniteLoss(_callback_base()):
    """Stops training at the first nan or infinite loss, before the backward pass: the weights and the
    checkpoints keep the last good state."""

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if not torch.isfinite(loss.detach()).all():
            from rmopt.errors import RmoptError

            ckpt = trainer.checkpoint_callback
            last = (ckpt.last_model_path or ckpt.best_model_path) if ckpt is not None else ""
            where = f"last good checkpoint: {last}" if last else "no checkpoint was saved yet"
            value = "nan" if torch.isnan(loss.detach()).any() else "infinite"
            raise RmoptError(
                f"loss became {value} at step {trainer.global_step}; training stopped ({where}; "
                f"resume with ckpt_path=last after lowering optimizer.lr)"
            )


def resolve_ckpt_path(ckpt_path: str | None, ckpt_dir: str | os.PathLike, resume: bool = False) -> str | None:
    """``ckpt_path=last`` (or ``resume=true``) resumes from ``ckpt_dir/last.ckpt`` if a run left one, else starts fresh."""
    if resume and ckpt_path in (None, "", "null"):
        ckpt_path = "last"
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


# Keys that say where or how a run is shown or resumed, not what it computes: a rerun that differs
# only in these is the same run.
VOLATILE_KEYS = (
    "paths",
    "hydra",
    "ckpt_path",
    "resume",
    "overwrite",
    "progress",
    "progress_every",
    "trainer.enable_progress_bar",
)


def already_done(
    cfg: DictConfig, folder: str | os.PathLike, marker: str | None = None, name: str = "rmopt_config.yaml"
) -> bool:
    """True (and says so) when ``folder`` holds a finished run of this same config, unless ``overwrite=true``.

    A run is finished when its saved config (``name``, written last by the stage, or ``marker`` when
    the stage writes its config first) is there; the same config is equal up to :data:`VOLATILE_KEYS`.
    """
    folder = Path(folder)
    saved = folder / name
    if cfg.get("overwrite", False) or not saved.exists() or (marker and not (folder / marker).exists()):
        return False
    new = _comparable(OmegaConf.to_container(_plain(cfg), resolve=True))
    old = _comparable(OmegaConf.to_container(OmegaConf.load(saved), resolve=False))
    if new != old:
        return False
    print(f"already done: {folder} (overwrite=true to redo)")
    return True


def _comparable(container: dict) -> dict:
    for key in VOLATILE_KEYS:
        node, *rest = key.split(".")
        if not rest:
            container.pop(node, None)
        elif isinstance(container.get(node), dict):
            container[node].pop(rest[0], None)
    return container


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
    for h, v in zip(history, values, strict=True):
        bar = "#" * (1 + int((width - 1) * (v - lo) / (hi - lo))) if hi > lo else "#"
        lines.append(f"  step {int(h['step']):>6}  {key} {v:8.4f}  {bar}")
    return "\n".join(lines)
