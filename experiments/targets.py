"""The toy lab's targets (what the paper shows, as numbers) measured on a demo folder or over replicates.

Each target is one number with its standard error (over prompts for one demo run, over replicates for
`experiments/replicate.py`) and a rule: a threshold on the number (``at_least``/``at_most``) or an
interval that must lie above zero (``above_zero``). A target is met only when its rule holds; a
threshold is judged on the estimate, an "above zero" on the 95% interval.

- ``sft_at_max``: share of the SFT policy's sampled answers at the gold's maximum (1.0);
- ``oracle_late_gain``: best-of-n with the gold as ranking (the oracle): gain after n = 16 as a share
  of its whole gain from n = 1 to the largest n;
- ``bon_single_peak_n``: where the average single RM's best-of-n gold curve peaks;
- ``bon_single_rise_share``: the average single RM's gain at its peak as a share of the oracle's gain
  by the same n;
- ``ppo_single_rise_over_sft_std``: PPO with single RMs, gold rise to the cross-fitted peak in units of
  the SFT answers' gold standard deviation;
- ``noise_drop_excess``: best-of-n single-RM drop with label noise minus the drop with clean labels
  (``bon_clean/``);
- ``bon_<obj>_drop_ratio`` / ``bon_<obj>_final_gain``: WCO's and UWO's best-of-n drop as a share of
  the average single RM's, and their final gold minus the single RMs' average final gold;
- ``ppo_kl_single_drop`` / ``ppo_kl_<obj>_drop_ratio``: the same with PPO at KL coefficient 0.01
  (``ppo_kl0.01/``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rmopt.stats import excludes_zero, standard_error

GOLD_MAX = 1.0  # the toy golds' maximum score
LATE_N = 16
MITIGATORS = ("wco", "uwo")
RULES = {  # name -> (rule, threshold, what it says)
    "sft_at_max": ("at_most", 0.10, "SFT answers at the gold's maximum"),
    "oracle_late_gain": ("at_least", 0.25, "oracle best-of-n: gain after n = 16 / gain from n = 1 to the largest n"),
    "bon_single_peak_n": ("at_least", 16, "average single RM: best-of-n peak at n"),
    "bon_single_rise_share": ("at_least", 0.30, "average single RM: best-of-n gain at its peak / the oracle's gain by that n"),
    "ppo_single_rise_over_sft_std": ("at_least", 0.5, "PPO, single RMs: gold rise to the cross-fitted peak / SFT gold std"),
    "noise_drop_excess": ("above_zero", 0.0, "best-of-n single-RM drop with label noise minus with clean labels"),
    **{f"bon_{o}_drop_ratio": ("at_most", 1 / 3, f"best-of-n with label noise: {o.upper()} drop / single RMs' drop") for o in MITIGATORS},
    **{f"bon_{o}_final_gain": ("above_zero", 0.0, f"best-of-n with label noise: {o.upper()} final gold minus single RMs'") for o in MITIGATORS},
    "ppo_kl_single_drop": ("above_zero", 0.0, "PPO at KL 0.01, single RMs: drop from the cross-fitted peak"),
    **{f"ppo_kl_{o}_drop_ratio": ("at_most", 1 / 3, f"PPO at KL 0.01: {o.upper()} drop / single RMs' drop") for o in MITIGATORS},
}
# A ratio to the single RMs' PPO drop at KL 0.01 says "at most a third of it" only once that drop is there
# (its interval above zero, as the target states): until then the ratio's target is not met.
REQUIRES = {f"ppo_kl_{o}_drop_ratio": "ppo_kl_single_drop" for o in MITIGATORS}


def world_stats(bon_dir: str | Path, ns: Sequence[int]) -> dict:
    """What the SFT policy's own answers (the best-of-n gens of ``bon_dir``) say about the world: the
    share at the gold's maximum, the gold's spread, and the oracle's best-of-n curve over ``ns``."""
    from rmopt.bon_pipeline import GENS_DIR, bon_curve
    from rmopt.data.gold_gens import load_gold_gens

    gens = load_gold_gens(str(Path(bon_dir) / GENS_DIR), max(ns))
    gold = np.asarray(gens.gold, dtype=np.float64)
    at_max = (gold >= GOLD_MAX - 1e-6).mean(axis=1)  # per prompt
    return {
        "sft_max_share": float(at_max.mean()),
        "sft_max_share_se": standard_error(at_max),
        "sft_gold_mean": float(gold.mean()),
        "sft_gold_std": float(gold.std(ddof=1)),
        "oracle": bon_curve(gold, gold, list(ns)),
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _ratio_target(a: float, b: float, a_per_prompt=None, b_per_prompt=None) -> dict:
    """``a / b`` (NaN unless b > 0) as a target; with both per-prompt arrays (whose means are a and b), its
    delta-method SE over prompts (:func:`rmopt.stats.ratio_and_se`), else a NaN SE."""
    from rmopt.stats import ratio_and_se

    value = _ratio(a, b)
    if a_per_prompt is None or b_per_prompt is None or not np.isfinite(value) or np.shape(a_per_prompt) != np.shape(b_per_prompt):
        return {"value": value, "se": math.nan}  # no per-prompt values, or not over the same prompts
    return {"value": value, "se": ratio_and_se(a_per_prompt, b_per_prompt)[1]}


def _per_prompt(curve: Mapping | None, key: str = "gold_score"):
    """A curve's [points, P] per-prompt values of ``key``, or None."""
    values = ((curve or {}).get("per_prompt") or {}).get(key)
    return None if values is None else np.asarray(values, dtype=np.float64)


def _drops(curves: Mapping | None, stage: str, x: str) -> dict[str, np.ndarray]:
    """Each curve's per-prompt cross-fitted drop (``drop_cv``) in a stage of ``curves``, where it has one."""
    from rmopt.summary import summarise

    out = {}
    for name, c in ((curves or {}).get(stage) or {}).items():
        if _per_prompt(c) is not None:
            per_prompt = summarise(c, x).get("per_prompt", {})
            if "drop_cv" in per_prompt:
                out[name] = per_prompt["drop_cv"]
    return out


def _at(curve: Mapping, n) -> int:
    return list(curve["n"]).index(n)


def measure(summary: Mapping, curves: Mapping | None = None) -> dict[str, dict]:
    """Each target's value (and SE over prompts where it has one) from one demo folder's summary.

    ``summary``: the demo's summary (``world``, ``bon``, ``bon_clean``, ``ppo``, ``ppo_kl0.01``,
    ``comparisons``); ``curves``: its curves (for the single RMs' gain at their peak). Targets whose
    inputs the folder lacks are left out. Ratios get a delta-method SE over prompts where the per-prompt
    values are there: the curves' and, for the oracle, ``world["oracle"]["per_prompt"]`` (as
    :func:`world_stats` returns it); a peak's location has none. The rise share's SE takes its peak's n as
    given (the average curve's highest point, not a cross-fitted one), so it understates the spread of a flat curve.
    """
    out: dict[str, dict] = {}
    world, bon, comparisons = summary.get("world"), summary.get("bon", {}), summary.get("comparisons", {})
    if world:
        out["sft_at_max"] = {"value": world["sft_max_share"], "se": world.get("sft_max_share_se", math.nan)}
        o, po = world["oracle"], _per_prompt(world["oracle"])
        g, late = o["gold_score"], _at(o, LATE_N) if LATE_N in o["n"] else None
        if late is not None:
            out["oracle_late_gain"] = _ratio_target(g[-1] - g[late], g[-1] - g[0], *(
                (None, None) if po is None else (po[-1] - po[late], po[-1] - po[0])))
    single = bon.get("single")
    if single:
        out["bon_single_peak_n"] = {"value": float(single["n_at_max"]), "se": math.nan}
        if world and curves and "single" in curves.get("bon", {}):
            c, o = curves["bon"]["single"], world["oracle"]
            i, j = _at(c, single["n_at_max"]), _at(o, single["n_at_max"])
            rise = c["gold_score"][i] - c["gold_score"][0]
            pc, po = _per_prompt(c), _per_prompt(o)
            out["bon_single_rise_share"] = _ratio_target(rise, o["gold_score"][j] - o["gold_score"][0], *(
                (None, None) if pc is None or po is None else (pc[i] - pc[0], po[j] - po[0])))
    ppo_single = summary.get("ppo", {}).get("single")
    if world and ppo_single and "rise_cv" in ppo_single:
        std = world["sft_gold_std"]
        out["ppo_single_rise_over_sft_std"] = {"value": ppo_single["rise_cv"] / std, "se": ppo_single.get("rise_cv_se", math.nan) / std}
    if single and "single" in summary.get("bon_clean", {}):
        d = comparisons.get("noise", {}).get("drop_cv")
        if d is None:  # no paired difference stored: the two drops' SEs combined as independent
            clean = summary["bon_clean"]["single"]
            d = {"value": single["drop_cv"] - clean["drop_cv"], "se": math.hypot(single.get("drop_cv_se", math.nan), clean.get("drop_cv_se", math.nan))}
        out["noise_drop_excess"] = dict(d)
    for stage, prefix in (("bon", "bon"), ("ppo_kl0.01", "ppo_kl")):
        rewards = summary.get(stage, {})
        base = rewards.get("single")
        if not base:
            continue
        drops = _drops(curves, stage, "n" if stage == "bon" else "kl")
        if stage == "ppo_kl0.01":
            out["ppo_kl_single_drop"] = {"value": base["drop_cv"], "se": base.get("drop_cv_se", math.nan)}
        for name, s in rewards.items():
            kind = name.split("_")[0]
            if kind in MITIGATORS:
                out[f"{prefix}_{kind}_drop_ratio"] = _ratio_target(s["drop_cv"], base["drop_cv"], drops.get(name), drops.get("single"))
                if stage == "bon" and name in comparisons.get("bon", {}):
                    out[f"bon_{kind}_final_gain"] = dict(comparisons["bon"][name]["gold_final"])
    return {k: out[k] for k in RULES if k in out}


def judge(name: str, value: float, se: float, z: float) -> bool:
    """Whether a target's value meets its rule (an "above zero" on its 95% interval: +-z SE)."""
    rule, threshold, _ = RULES[name]
    if not np.isfinite(value):
        return False
    if rule == "at_least":
        return value >= threshold
    if rule == "at_most":
        return value <= threshold
    return value > 0 and excludes_zero(value, se, z)


def over_replicates(measured: Sequence[Mapping[str, Mapping]]) -> dict[str, dict]:
    """Each target's mean and SE over replicates (with the replicates' values); only targets every replicate has."""
    names = [k for k in RULES if all(k in m for m in measured)]
    out = {}
    for k in names:
        xs = [float(m[k]["value"]) for m in measured]
        out[k] = {"value": float(np.mean(xs)), "se": standard_error(xs), "replicates": xs}
    return out


def with_verdicts(targets: Mapping[str, Mapping], z: float) -> dict[str, dict]:
    """The targets with their rule and whether each is met."""
    out = {}
    for k, t in targets.items():
        rule, threshold, what = RULES[k]
        met = judge(k, t["value"], t["se"], z)
        if k == "bon_single_peak_n" and "replicates" in t:  # a location: every replicate's peak must be late
            met = all(v >= threshold for v in t["replicates"])
        needs = REQUIRES.get(k)
        if needs in targets and not judge(needs, targets[needs]["value"], targets[needs]["se"], z):
            met, what = False, f"{what} (needs: {RULES[needs][2]}, interval above 0)"
        out[k] = {**t, "rule": rule, "threshold": threshold, "what": what, "met": bool(met)}
    return out


def table(targets: Mapping[str, Mapping], z: float) -> str:
    """A Markdown table of the targets: what, value +- z SE, the rule, met or not."""
    rule_text = {"at_least": ">= {:.3g}", "at_most": "<= {:.3g}", "above_zero": "interval above 0"}
    rows = []
    for t in targets.values():
        se = t.get("se", math.nan)
        value = f"{t['value']:.3f}" + ("" if not np.isfinite(se) else f" +- {z * se:.3f}")
        if "replicates" in t:
            value += " (" + ", ".join(f"{v:.3g}" for v in t["replicates"]) + ")"
        rows.append(f"| {t['what']} | {value} | {rule_text[t['rule']].format(t['threshold'])} | {'met' if t['met'] else 'not met'} |")
    return "| target | measured | rule | |\n|---|---|---|---|\n" + "\n".join(rows)
