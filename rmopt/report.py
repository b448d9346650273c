"""Figures and dashboards of gold and proxy score curves (best-of-n against n and KL, PPO against KL and steps).

A *curve* is a dict of equal-length lists: an x key (``n``, ``kl_bon``, ``kl``, ``step``, ...) and
``gold_score`` and ``proxy_score``. Several named curves (one per reward model or ensemble) go on
one figure: a row per x key, gold on the left, proxy on the right.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from rmopt.errors import RmoptError

SCORE_KEYS = ("gold_score", "proxy_score")
_X_LABELS = {
    "n": "n (best-of-n)",
    "kl_bon": "KL (best-of-n bound)",
    "kl": "KL(policy || initial)",
    "step": "step",
}


def _check_curves(curves: Mapping[str, Mapping[str, Sequence]], x_keys: list[str]) -> None:
    if not curves:
        raise RmoptError("no curves to plot")
    for name, curve in curves.items():
        for key in (*x_keys, *SCORE_KEYS):
            if key not in curve:
                raise RmoptError(f"curve {name!r} has no {key!r}; it has {sorted(curve)}")
        lengths = {key: len(curve[key]) for key in (*x_keys, *SCORE_KEYS)}
        if len(set(lengths.values())) != 1:
            raise RmoptError(f"curve {name!r} has lists of different lengths: {lengths}")


def plot_curves(
    curves: Mapping[str, Mapping[str, Sequence]],
    x_key: str | Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    log_x: bool | Sequence[bool] = False,
) -> Path:
    """Plot gold and proxy score of every named curve against ``x_key`` and save a PNG at ``path``.

    A curve with ``gold_score_se`` / ``proxy_score_se`` gets a +-1.96 SE band (95%) around its line.

    ``x_key`` may be a list (one row of panels per key, e.g. ``["n", "kl_bon"]``), with ``log_x`` a
    bool for all rows or one per row. Written atomically; returns the path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_keys = [x_key] if isinstance(x_key, str) else list(x_key)
    logs = [bool(log_x)] * len(x_keys) if isinstance(log_x, bool) else [bool(v) for v in log_x]
    if len(logs) != len(x_keys):
        raise RmoptError(f"log_x has {len(logs)} entries for {len(x_keys)} x keys {x_keys}")
    _check_curves(curves, x_keys)
    fig, axes = plt.subplots(len(x_keys), 2, figsize=(11, 4 * len(x_keys)), squeeze=False)
    for row, (key, log) in enumerate(zip(x_keys, logs, strict=True)):
        for col, score in enumerate(SCORE_KEYS):
            ax = axes[row][col]
            for name, curve in curves.items():
                (line,) = ax.plot(curve[key], curve[score], marker=".", label=name, **_style(name))
                band(ax, curve[key], curve[score], curve.get(f"{score}_se"), line.get_color())
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(_X_LABELS.get(key, key))
            ax.set_ylabel(score.replace("_", " "))
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    return save_png(fig, path, dpi=110)


def band(ax, xs, ys, se, color, alpha: float = 0.18, z: float | None = None) -> None:
    """Shade mean +- z SE (a 95% interval: z = 1.96 by default) around a line; nothing where the SE is missing or NaN."""
    import numpy as np

    from rmopt.stats import Z95

    z = Z95 if z is None else z
    if se is None:
        return
    y, e = np.asarray(ys, dtype=float), np.asarray(se, dtype=float)
    if not np.isfinite(e).any():
        return
    ax.fill_between(np.asarray(xs, dtype=float), y - z * e, y + z * e, color=color, alpha=alpha, lw=0)


def save_png(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    from rmopt.utils import atomic_write_bytes

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _style(name: str) -> dict:
    """Single reward models (seed names) thin and dashed, ensembles solid, so the two read apart."""
    if name.startswith("seed") or name.startswith("member"):
        return {"linestyle": "--", "linewidth": 1.0, "alpha": 0.8}
    return {"linestyle": "-", "linewidth": 2.0}


def log_curves_to_wandb(
    curves: Mapping[str, Mapping[str, Sequence]],
    x_keys: Sequence[str],
    wandb_cfg: Mapping,
    run_name: str,
    image: str | os.PathLike | None = None,
) -> None:
    """Log every curve as a W&B table and line plots (gold and proxy against each x key), plus the figure.

    ``wandb_cfg`` is the ``logger.wandb`` node (project, save_dir, mode, group); offline by default.
    """
    import wandb

    _check_curves(curves, list(x_keys))
    save_dir = str(wandb_cfg.get("save_dir") or ".")
    os.makedirs(save_dir, exist_ok=True)
    run = wandb.init(
        project=wandb_cfg.get("project", "rmopt"),
        name=run_name,
        group=wandb_cfg.get("group"),
        dir=save_dir,
        mode=wandb_cfg.get("mode", "offline"),
        reinit=True,
    )
    try:
        columns = ["curve", *x_keys, *SCORE_KEYS]
        rows = []
        for name, curve in curves.items():
            for j in range(len(curve[SCORE_KEYS[0]])):
                rows.append([name, *(float(curve[k][j]) for k in (*x_keys, *SCORE_KEYS))])
        table = wandb.Table(columns=columns, data=rows)
        logged = {"curves": table}
        for key in x_keys:
            for score in SCORE_KEYS:
                logged[f"{score}_vs_{key}"] = wandb.plot.line_series(
                    xs=[list(map(float, c[key])) for c in curves.values()],
                    ys=[list(map(float, c[score])) for c in curves.values()],
                    keys=list(curves),
                    title=f"{score} vs {key}",
                    xname=key,
                )
        if image is not None:
            logged["figure"] = wandb.Image(str(image))
        run.log(logged)
    finally:
        run.finish()
