"""Shared helpers of the studies: the demo's stored best-of-n scores, curves, tables, figures, CLI calls.

Every study reads a finished demo folder (``python experiments/demo.py [--quick]``) and writes its
numbers (JSON) and figure (PNG) to ``--out`` (default ``<demo>/studies/<study>``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rmopt.errors import ArgumentParser, RmoptError  # noqa: E402

OBJECTIVES = ("mean", "wco", "uwo")


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(doc: str, study: str, extra=None, demo_unless: str | None = None) -> argparse.Namespace:
    """``--demo`` (a finished demo folder) and ``--out`` (default ``<demo>/studies/<study>``), plus extras; the
    demo folder need not exist when the extra option named ``demo_unless`` is given (a mode that reads others)."""
    parser = ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="runs/demo", help="the demo output folder to reuse (default runs/demo)")
    parser.add_argument("--out", default=None, help=f"output folder (default <demo>/studies/{study})")
    if extra:
        extra(parser)
    args = parser.parse_args()
    args.demo = resolve(args.demo)
    if not args.demo.is_dir() and not (demo_unless and getattr(args, demo_unless, None) is not None):
        parser.error(f"--demo {str(args.demo)!r} is not a folder; run experiments/demo.py first (or pass --demo)")
    args.out = resolve(args.out) if args.out else args.demo / "studies" / study
    return args


def resolve(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else (Path.cwd() / path).resolve()


def demo_settings(demo: Path) -> dict:
    """The settings the demo ran with (its summary.json)."""
    path = Path(demo) / "summary.json"
    if not path.exists():
        raise RmoptError(f"{str(path)!r} is missing; expected a finished demo folder (experiments/demo.py writes it)")
    return json.loads(path.read_text())["settings"]


def run_cli(*args: str, log=None) -> None:
    """Run one console script as the demo does (echoed, timed, output to ``log``)."""
    from experiments.demo import run

    run(*args, log=log)


RUN_CONFIG = "rmopt_config.yaml"


def run_config(folder: str | Path):
    """The resolved config a stage saved beside its output (``rmopt_config.yaml``)."""
    from omegaconf import OmegaConf

    path = Path(folder) / RUN_CONFIG
    if not path.exists():
        raise RmoptError(f"{str(path)!r} is missing; expected a folder written by an rmopt stage")
    return OmegaConf.load(path)


def rerun(stage: str, folder: str | Path, output_dir: Path, *changes: str, multirun: bool = False, log=None) -> None:
    """Run ``stage`` with the config the demo's run in ``folder`` was made with, changing only ``changes``
    (plus where it writes): ``rmopt-ppo --config-dir <folder> --config-name rmopt_config kl_coef=0.01 ...``."""
    cfg = run_config(folder)
    logs = Path(output_dir).parent / "logs" / Path(output_dir).name
    where = [f"output_dir={output_dir}", f"hydra.{'sweep' if multirun else 'run'}.dir={logs}"]
    where += [f"logger.{name}.save_dir={logs}" for name in (cfg.get("logger") or {}) if "save_dir" in cfg.logger[name]]
    if multirun:  # the saved config has no hydra node: keep conf/hydra/default.yaml's failed-member summary (exit 1)
        where.append("+hydra.callbacks.sweep_summary._target_=rmopt.sweep.SweepSummary")
    run_cli(stage, *(["-m"] if multirun else []), "--config-dir", str(folder), "--config-name", RUN_CONFIG.removesuffix(".yaml"),
            *changes, *where, log=log)


# ---------------------------------------------------------------------------------------------
# the stored best-of-n scores


@dataclass
class BonStore:
    """Proxy scores [k, P, N] of every member (normalised if asked), their names and folders, gold [P, N], ns."""

    scores: np.ndarray
    names: list[str]
    paths: list[str]
    gold: np.ndarray
    ns: list[int]


def load_bon_store(bon_dir: str | Path, normalise: bool | None = None, gold_gens: str | None = None) -> BonStore:
    """Read a ``rmopt-bon`` output folder's stored proxy scores and gold scores (no model is loaded).

    ``normalise`` standardises each member with its folder's reward_stats.json, as ``rmopt-bon
    normalise=true`` does; None (the default) does what the run did (its rmopt_config.yaml). ns are
    those of the run (bon_run.json). The answers' gold scores come from ``gold_gens``, else the
    folder's own ``gold_gens/``, else the ``gold_gens`` the run was given (its rmopt_config.yaml).
    """
    import pyarrow.parquet as pq

    from rmopt.bon_pipeline import GENS_DIR, RUN_FILE, SCORES_FILE, SCORES_META, _normalise, resolve_ns
    from rmopt.data.gold_gens import load_gold_gens

    bon_dir = Path(bon_dir)
    meta_file, scores_file = bon_dir / SCORES_META, bon_dir / SCORES_FILE
    if not (meta_file.exists() and scores_file.exists()):
        raise RmoptError(f"{str(bon_dir)!r} has no {SCORES_FILE} + {SCORES_META}; expected an rmopt-bon output folder")
    meta = json.loads(meta_file.read_text())
    P, N = int(meta["P"]), int(meta["N"])
    table = pq.read_table(scores_file)
    names, paths, arrays = [], [], []
    for name, columns in meta["columns"].items():
        for column in columns:
            names.append(column)
            paths.append(meta["members"][name]["path"])
            arrays.append(table.column(column).to_numpy().reshape(P, N))
    scores = np.stack(arrays).astype(np.float32)
    if normalise is None:
        normalise = bool(run_config(bon_dir).get("normalise", False))
    if normalise:
        scores = _normalise(scores, [p for p in dict.fromkeys(paths)])
    gold = load_gold_gens(gold_gens or _gold_gens_of(bon_dir, GENS_DIR), N, P).gold
    run_file = bon_dir / RUN_FILE
    ns = json.loads(run_file.read_text())["key"]["ns"] if run_file.exists() else resolve_ns(None, N)
    return BonStore(scores=scores, names=names, paths=paths, gold=gold, ns=[int(n) for n in ns])


def _gold_gens_of(bon_dir: Path, gens_dir: str) -> str:
    if (bon_dir / gens_dir).is_dir():
        return str(bon_dir / gens_dir)
    config = bon_dir / "rmopt_config.yaml"
    if config.exists():
        from omegaconf import OmegaConf

        given = OmegaConf.load(config).get("gold_gens")
        if given:
            return str(given)
    raise RmoptError(f"{str(bon_dir)!r} has no {gens_dir}/ and its rmopt_config.yaml names no gold_gens; pass gold_gens")


def objective_curve(scores: np.ndarray, gold: np.ndarray, ns: Sequence[int], objective: str, weight: float | None = None) -> dict:
    """Best-of-n curve of an objective over members [k, P, N] (or one member [P, N] with "single"), as
    ``rmopt-bon`` computes it: {"n", "kl_bon", "proxy_score", "gold_score"}, their SEs and per-prompt values."""
    from rmopt.bon_pipeline import bon_curve
    from rmopt.objectives import combine

    proxy = combine(objective, np.asarray(scores), weight) if objective != "single" else np.asarray(scores)
    return bon_curve(proxy, gold, ns)


def mean_curve(curves: Sequence[Mapping[str, Sequence]]) -> dict:
    """Pointwise average of curves over the same points (e.g. the single members averaged), per prompt too."""
    from rmopt.summary import average_curve

    return average_curve(curves)


def gold_stats(curve: Mapping[str, Sequence], x_key: str = "n") -> dict:
    """Gold at the start, the peak (and where), the end, and the drop from peak to end, each with its SE over prompts."""
    from rmopt.summary import summarise, without_per_prompt

    return without_per_prompt(summarise(curve, x_key))


def stats_row(stats: Mapping, *keys: str, **extra) -> dict:
    """A table row: ``extra`` first, then each key of ``stats`` with its standard error where it has one."""
    row = dict(extra)
    for key in keys:
        row[key] = stats[key]
        if f"{key}_se" in stats:
            row[f"{key}_se"] = stats[f"{key}_se"]
    return row


# ---------------------------------------------------------------------------------------------
# output


def write_json(path: Path, obj) -> Path:
    """``obj`` as JSON, without the curves' per-prompt arrays (their SEs stay)."""
    from rmopt.utils import atomic_write_json

    def strip(x):
        if isinstance(x, Mapping):
            return {k: strip(v) for k, v in x.items() if k != "per_prompt"}
        if isinstance(x, (list, tuple)):
            return [strip(v) for v in x]
        return x

    atomic_write_json(path, strip(obj))
    return path


def print_table(rows: Sequence[Mapping], columns: Sequence[str], title: str = "") -> None:
    """A plain text table: floats with 4 decimals, +- 1.96 SE where the row has ``<column>_se``."""
    from rmopt.stats import Z95

    def cell(row, c):
        v, se = row.get(c, ""), row.get(f"{c}_se")
        if isinstance(v, float) and isinstance(se, float) and np.isfinite(se):
            return f"{v:.4f} +-{Z95 * se:.4f}"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [[cell(r, c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(columns)]
    if title:
        print(title)
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def save_figure(panels: Sequence[Mapping], path: Path, title: str = "", ncols: int | None = None,
                sharey: bool = False) -> Path:
    """One PNG of several panels. A panel: {"title", "xlabel", "ylabel", "log_x" (bool) or "symlog_x"
    (its linear threshold), "lines": [{"x", "y", "label",
    and optional "se" (a +-1.96 SE band) and "style" (matplotlib kwargs)}]}; ``sharey``: one y scale for
    all panels. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rmopt.report import band, save_png

    ncols = ncols or min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False, sharey=sharey)
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        for line in panel["lines"]:
            (drawn,) = ax.plot(line["x"], line["y"], label=line.get("label"), **{"marker": ".", **line.get("style", {})})
            band(ax, line["x"], line["y"], line.get("se"), drawn.get_color())
        if panel.get("log_x"):
            ax.set_xscale("log")
        elif panel.get("symlog_x"):
            ax.set_xscale("symlog", linthresh=panel["symlog_x"])
        ax.set_title(panel.get("title", ""), fontsize="medium")
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.grid(alpha=0.3)
        if any(line.get("label") for line in panel["lines"]):
            ax.legend(fontsize="x-small", loc="best")
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return save_png(fig, path, dpi=100)


def study_main(main) -> None:
    """Run a study's main with one-line errors (exit 1) for bad input and failed stages; RMOPT_TRACEBACK=1 for the traceback."""
    import os
    import subprocess

    try:
        main()
    except (RmoptError, subprocess.CalledProcessError) as e:
        if os.environ.get("RMOPT_TRACEBACK"):
            raise
        if isinstance(e, subprocess.CalledProcessError):
            print(f"error: stage {Path(e.cmd[0]).name} failed (exit {e.returncode}); see the study's study.log "
                  "or rerun with --verbose", file=sys.stderr)
        else:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
