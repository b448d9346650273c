"""How much a reward was overoptimized: the numbers the demo's summary and report are made of.

For one curve of gold score against an optimization axis (n in best-of-n, KL in PPO): the gold score
at the start, its maximum and where it occurs, the gold score at the end, and the overoptimization
drop (maximum minus final gold score; 0 when gold never fell back), the rise (maximum minus start)
and the proxy's gain (final minus start). With the per-prompt values of
every point, each number gets its standard error over prompts (``<key>_se``; the drop's from the
per-prompt differences, so the two points' shared prompts count once), and two rewards evaluated on
the same prompts compare by paired per-prompt differences (:func:`difference`).

The peak is where the curve is highest, so the maximum, the drop and the rise are biased upward as
measures of the reward (the maximum of noisy points beats their true maximum) and their SEs ignore the
choice: a flat curve would seem to rise and fall. The ``*_cv`` numbers choose the peak on one half of
the prompts and measure it on the other (and the other way round): ``gold_peak_cv`` (gold at the
peak), ``drop_cv`` (that minus the final gold) and ``rise_cv`` (that minus the start). They can be
negative, so their intervals say whether gold really rose or fell.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rmopt.stats import standard_error

NUMBERS = ("gold_start", "gold_max", "gold_final", "drop", "rise", "proxy_start", "proxy_final", "proxy_gain",
           "gold_peak_cv", "drop_cv", "rise_cv")


def curve_summary(xs, gold, proxy=None, x_name: str = "n", gold_per_prompt=None, proxy_per_prompt=None) -> dict:
    """Summary of one gold curve; points with a NaN gold score (not yet scored) are ignored.

    ``gold_per_prompt`` / ``proxy_per_prompt``: [points, P] per-prompt values whose means are the
    curve; with them every number carries ``<key>_se`` and the per-prompt values behind it
    (``per_prompt``, for :func:`difference`; not meant for JSON).
    """
    keep = [i for i, g in enumerate(gold) if not _nan(g)]
    if not keep:
        raise ValueError("the curve has no gold-scored point")
    best = max(keep, key=lambda i: (gold[i], -i))  # first occurrence of the maximum
    start, final = keep[0], keep[-1]
    out = {
        "gold_start": float(gold[start]),
        "gold_max": float(gold[best]),
        f"{x_name}_at_max": _num(xs[best]),
        "gold_final": float(gold[final]),
        f"{x_name}_final": _num(xs[final]),
        "drop": float(gold[best] - gold[final]),
    }
    if proxy is not None:
        out["proxy_start"], out["proxy_final"] = float(proxy[start]), float(proxy[final])
    out["rise"] = float(gold[best] - gold[start])
    if proxy is not None:
        out["proxy_gain"] = float(proxy[final] - proxy[start])
    per_prompt = {}
    if gold_per_prompt is not None:
        g = np.asarray(gold_per_prompt, dtype=np.float64)
        per_prompt.update(
            gold_start=g[start], gold_max=g[best], gold_final=g[final], drop=g[best] - g[final], rise=g[best] - g[start]
        )
    if proxy_per_prompt is not None:
        p = np.asarray(proxy_per_prompt, dtype=np.float64)
        per_prompt.update(proxy_start=p[start], proxy_final=p[final], proxy_gain=p[final] - p[start])
    if gold_per_prompt is not None and g.shape[1] >= 4:
        peak = _cross_fitted_peak(g[keep])
        per_prompt.update(gold_peak_cv=peak, drop_cv=peak - g[final], rise_cv=peak - g[start])
        for k in ("gold_peak_cv", "drop_cv", "rise_cv"):
            out[k] = float(per_prompt[k].mean())
    if per_prompt:
        out.update({f"{k}_se": standard_error(v) for k, v in per_prompt.items()})
        out["prompts"] = int(len(next(iter(per_prompt.values()))))
        out["per_prompt"] = per_prompt
    return out


def _cross_fitted_peak(g: np.ndarray) -> np.ndarray:
    """Each prompt's gold at the point where the *other* half of the prompts (by index parity) peaks: [points, P] -> [P]."""
    halves = [np.arange(g.shape[1]) % 2 == h for h in (0, 1)]
    peaks = [int(np.argmax(g[:, half].mean(axis=1))) for half in halves]  # first occurrence of each half's maximum
    return np.where(halves[0], g[peaks[1]], g[peaks[0]])


def average_curve(curves: Sequence[Mapping]) -> dict:
    """The pointwise average of curves over the same points (e.g. the single RMs): means, per-prompt
    values (averaged per prompt) and x (averaged: PPO runs reach different KL at the same step)."""
    out = {}
    for key in curves[0]:
        if key == "per_prompt":
            out[key] = {k: np.mean([np.asarray(c[key][k]) for c in curves], axis=0) for k in curves[0][key]}
        elif not key.endswith("_se"):
            out[key] = np.mean([np.asarray(c[key], dtype=np.float64) for c in curves], axis=0).tolist()
    if "per_prompt" in out:
        for k, v in out["per_prompt"].items():
            out[f"{k}_se"] = standard_error(v, axis=1).tolist()
    return out


def summarise(curve: Mapping, x_name: str) -> dict:
    """:func:`curve_summary` of a curve dict (x, gold_score, proxy_score and optional per_prompt)."""
    per_prompt = curve.get("per_prompt") or {}
    return curve_summary(
        curve[x_name], curve["gold_score"], curve.get("proxy_score"), x_name=x_name,
        gold_per_prompt=per_prompt.get("gold_score"), proxy_per_prompt=per_prompt.get("proxy_score"),
    )


def difference(a: Mapping, b: Mapping, key: str) -> dict:
    """``a[key] - b[key]`` with its standard error from paired per-prompt differences (both evaluated on
    the same prompts); without per-prompt values, NaN SE."""
    value = float(a[key] - b[key])
    pa, pb = a.get("per_prompt", {}).get(key), b.get("per_prompt", {}).get(key)
    se = standard_error(np.asarray(pa) - np.asarray(pb)) if pa is not None and pb is not None and len(pa) == len(pb) else math.nan
    return {"value": value, "se": se}


def without_per_prompt(summary: Mapping) -> dict:
    """A summary as written to JSON: the per-prompt arrays dropped."""
    return {k: v for k, v in summary.items() if k != "per_prompt"}


# ---------------------------------------------------------------------------------------------
# the stages' output files


def bon_curves_from(bon_dir: str | Path) -> dict[str, dict]:
    """Every ``<name>/bon_sampled_results.json`` of a best-of-n folder as a curve, with its
    ``bon_per_prompt.json`` when present."""
    from rmopt.bon_pipeline import RESULTS_FILE, read_curve

    return {p.parent.name: read_curve(p) for p in sorted(Path(bon_dir).glob(f"*/{RESULTS_FILE}"))}


def ppo_curve_from(run: str | Path) -> dict:
    """A PPO run's curve (step, KL, proxy, gold, their SEs) with per-prompt values from its eval files."""
    from rmopt.ppo import per_prompt_values

    points = json.loads((Path(run) / "results.json").read_text())["points"]
    keys = ("step", "kl", "kl_se", "proxy_score", "proxy_score_se", "gold_score", "gold_score_se")
    curve = {k: [p.get(k, math.nan) for p in points] for k in keys}
    per_prompt = per_prompt_values(run) if (Path(run) / "eval").is_dir() else None
    if per_prompt is not None:
        curve["per_prompt"] = per_prompt
    return curve


def bon_summary(bon_dir: str | Path) -> dict[str, dict]:
    """Every reward of a best-of-n output folder summarised by name (with SEs where per-prompt values exist)."""
    return {name: summarise(c, "n") for name, c in bon_curves_from(bon_dir).items()}


def ppo_summary(run_dirs: dict[str, str | Path]) -> dict[str, dict]:
    """PPO runs (name -> run folder with results.json) summarised against KL, plus the last step."""
    out = {}
    for name, run in run_dirs.items():
        curve = ppo_curve_from(run)
        s = summarise(curve, "kl")
        s["step_final"] = curve["step"][-1]
        out[name] = s
    return out


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x):
    return int(x) if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) > 1) else float(x)
