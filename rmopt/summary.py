"""How much a reward was overoptimized: the numbers the demo's summary and report are made of.

For one curve of gold score against an optimization axis (n in best-of-n, KL in PPO): the gold score
at the start, its maximum and where it occurs, the gold score at the end, and the overoptimization
drop (maximum minus final gold score; 0 when gold never fell back).
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def curve_summary(xs, gold, proxy=None, x_name: str = "n") -> dict:
    """Summary of one gold curve; points with a NaN gold score (not yet scored) are ignored."""
    points = [(x, g, p) for x, g, p in zip(xs, gold, proxy if proxy is not None else [None] * len(gold), strict=True) if not _nan(g)]
    if not points:
        raise ValueError("the curve has no gold-scored point")
    best = max(range(len(points)), key=lambda i: (points[i][1], -i))  # first occurrence of the maximum
    start, final = points[0], points[-1]
    out = {
        "gold_start": float(start[1]),
        "gold_max": float(points[best][1]),
        f"{x_name}_at_max": _num(points[best][0]),
        "gold_final": float(final[1]),
        f"{x_name}_final": _num(final[0]),
        "drop": float(points[best][1] - final[1]),
    }
    if proxy is not None:
        out["proxy_start"], out["proxy_final"] = float(start[2]), float(final[2])
    return out


def bon_summary(bon_dir: str | Path) -> dict[str, dict]:
    """Every ``<name>/bon_sampled_results.json`` under a best-of-n output folder, summarised by name."""
    out = {}
    for path in sorted(Path(bon_dir).glob("*/bon_sampled_results.json")):
        rows = json.loads(path.read_text())
        out[path.parent.name] = curve_summary(
            [r["n"] for r in rows], [r["gold_score"] for r in rows], [r["proxy_score"] for r in rows], x_name="n"
        )
    return out


def ppo_summary(run_dirs: dict[str, str | Path]) -> dict[str, dict]:
    """PPO runs (name -> run folder with results.json) summarised against KL, plus the last step."""
    out = {}
    for name, run in run_dirs.items():
        points = json.loads((Path(run) / "results.json").read_text())["points"]
        s = curve_summary([p["kl"] for p in points], [p["gold_score"] for p in points], [p["proxy_score"] for p in points], x_name="kl")
        s["step_final"] = points[-1]["step"]
        out[name] = s
    return out


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _num(x):
    return int(x) if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) > 1) else float(x)
