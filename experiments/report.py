"""The demo's summary (`summary.json`), headline figure and report (`report.md`), from the stages' outputs.

Every number carries its standard error: over prompts for one demo run, over replicates for
`experiments/replicate.py`. Every sentence of the report is computed from those numbers: a
comparison is called a difference only when its 95% interval (+-1.96 SE) excludes zero.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rmopt.stats import Z95, excludes_zero, interval
from rmopt.summary import (
    average_curve,
    bon_curves_from,
    difference,
    ppo_curve_from,
    summarise,
    without_per_prompt,
)
from rmopt.utils import atomic_write_json, atomic_write_text

ENSEMBLES = ("mean", "wco", "uwo")
COLORS = {"mean": "tab:blue", "wco": "tab:red", "uwo": "tab:green"}
SINGLE = "single"  # the pointwise average of the single reward models' curves
COMPARED = ("drop", "gold_final", "gold_max")  # each ensemble against the average single RM
STAGES = {"bon": "n", "ppo": "kl"}


def _kind(name: str) -> str:
    """'seed3' -> 'single'; 'uwo_0.5' -> 'uwo'."""
    return "single" if name.startswith("seed") else name.split("_")[0]


def ppo_runs(out: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((out / "ppo").iterdir()) if (p / "results.json").exists()}


def demo_curves(out: Path) -> dict[str, dict[str, dict]]:
    """{"bon": {name: curve}, "ppo": {name: curve}} of a demo folder, plus each stage's average single RM."""
    curves = {"bon": bon_curves_from(out / "bon"), "ppo": {name: ppo_curve_from(run) for name, run in ppo_runs(out).items()}}
    for stage in curves.values():
        singles = [c for name, c in stage.items() if _kind(name) == "single"]
        if singles:
            stage[SINGLE] = average_curve(singles)
    return curves


def summarise_demo(curves: Mapping[str, Mapping[str, dict]]) -> dict:
    """Summaries of every curve (with SEs over prompts) and each ensemble's paired differences from the average single RM."""
    summary, comparisons = {}, {}
    for stage, x in STAGES.items():
        full = {name: summarise(c, x) for name, c in curves[stage].items()}
        if stage == "ppo":
            for name, s in full.items():
                s["step_final"] = curves[stage][name]["step"][-1]
        summary[stage] = {name: without_per_prompt(s) for name, s in full.items()}
        if SINGLE in full:
            comparisons[stage] = {
                name: {key: difference(s, full[SINGLE], key) for key in COMPARED}
                for name, s in full.items() if _kind(name) in ENSEMBLES
            }
    return {**summary, "comparisons": comparisons}


# ---------------------------------------------------------------------------------------------
# the figure


def headline_figure(curves: Mapping[str, Mapping[str, dict]], path: Path, title: str) -> Path:
    """Gold score against KL for best-of-n and PPO: single RMs in grey (their average with a band),
    ensembles in colour with bands (+-1.96 SE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rmopt.report import band, save_png

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (stage, x) in zip(axes, (("bon", "kl_bon"), ("ppo", "kl")), strict=True):
        for name, c in curves[stage].items():
            kind = _kind(name)
            if name == SINGLE:
                style = {"color": "0.35", "lw": 2, "marker": "s", "ms": 3, "label": "single RM (average)"}
            elif kind == "single":
                style = {"color": "0.7", "lw": 0.8, "marker": ".", "ms": 2, "label": "single RM"}
            else:
                style = {"color": COLORS.get(kind, "k"), "lw": 2, "marker": "o", "ms": 3, "label": name}
            ax.plot(c[x], c["gold_score"], **style)
            if kind != "single" or name == SINGLE:
                band(ax, c[x], c["gold_score"], c.get("gold_score_se"), style["color"])
        handles, labels = ax.get_legend_handles_labels()
        keep = {label: h for h, label in zip(handles, labels, strict=True)}
        ax.legend(keep.values(), keep.keys(), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set(title="Best-of-n", xlabel="KL_bon = log n - (n-1)/n  (nats)", ylabel="gold score")
    axes[1].set(title="PPO", xlabel="KL(policy || initial policy)  (nats)", ylabel="gold score")
    fig.suptitle(title)
    return save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# sentences from numbers


def _pm(s: Mapping, key: str) -> str:
    se = s.get(f"{key}_se", float("nan"))
    return f"{s[key]:.3f}" + ("" if np.isnan(se) else f" +- {Z95 * se:.3f}")


def _fmt(v) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def _finding(d: Mapping, more: str, less: str, unit: str = "") -> str:
    """'X more/less ... (interval)' when the interval excludes zero, else 'no clear difference'."""
    v, se = d["value"], d["se"]
    lo, hi = interval(v, se)
    span = f"95% interval {lo:+.3f} to {hi:+.3f}"
    if excludes_zero(v, se):
        return f"{abs(v):.3f}{unit} {more if v > 0 else less} ({span})"
    return f"no clear difference ({v:+.3f}, {span})" if not np.isnan(se) else f"{v:+.3f} (no standard error)"


def verdict(stage: str, summary: Mapping, comparisons: Mapping) -> list[str]:
    """Plain sentences about one stage, each computed from this run's numbers and their intervals."""
    x = STAGES[stage]
    single = summary.get(SINGLE)
    if single is None:
        return []
    k = sum(1 for n in summary if _kind(n) == "single" and n != SINGLE)
    fell = excludes_zero(single["drop"], single.get("drop_se", float("nan"))) and single["drop"] > 0
    rose = excludes_zero(single["rise"], single.get("rise_se", float("nan"))) and single["rise"] > 0
    proxy_up = excludes_zero(single.get("proxy_gain", 0.0), single.get("proxy_gain_se", float("nan"))) and single.get("proxy_gain", 0) > 0
    lines = [
        f"Single reward models (average of {k}): gold {_pm(single, 'gold_start')} at the start, "
        f"{'rising' if rose else 'with no clear rise'} to {_pm(single, 'gold_max')} at {x} = {_fmt(single[f'{x}_at_max'])}, "
        f"then {'falling clearly' if fell else 'with no clear fall'} to {_pm(single, 'gold_final')} at {x} = {_fmt(single[f'{x}_final'])} "
        f"(drop {_pm(single, 'drop')}); the proxy score {'rose clearly' if proxy_up else 'did not rise clearly'} "
        f"({_pm(single, 'proxy_gain')})."
        + (" That is overoptimization: the proxy rose while gold fell." if fell and proxy_up else "")
    ]
    for name, c in comparisons.items():
        s = summary[name]
        lines.append(
            f"{name.upper()}: peak {_pm(s, 'gold_max')} at {x} = {_fmt(s[f'{x}_at_max'])}, final {_pm(s, 'gold_final')} "
            f"at {x} = {_fmt(s[f'{x}_final'])}, drop {_pm(s, 'drop')}. Against the average single RM: drop "
            f"{_finding(c['drop'], 'larger', 'smaller')}; final gold {_finding(c['gold_final'], 'higher', 'lower')}; "
            f"peak {_finding(c['gold_max'], 'higher', 'lower')}."
        )
    return lines


def _table(summary: Mapping, x: str) -> str:
    head = (f"| reward | gold start | gold max | {x} at max | gold final | final {x} | drop |\n"
            "|---|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {name} | {_pm(s, 'gold_start')} | {_pm(s, 'gold_max')} | {_fmt(s[f'{x}_at_max'])} | {_pm(s, 'gold_final')} | "
        f"{_fmt(s[f'{x}_final'])} | {_pm(s, 'drop')} |"
        for name, s in summary.items()
    )


def report_text(summary: Mapping, settings: Mapping, figure: str, uncertainty: str, intro: str) -> str:
    s = settings
    bon_cmp, ppo_cmp = (summary["comparisons"].get(stage, {}) for stage in ("bon", "ppo"))
    return f"""# Overoptimization in the toy world

{intro} Policy and reward-model base `{s['model']}` (SFT {s['sft_steps']} steps), {s['pairs']} preference
prompts labelled by the gold reward with label noise {s['label_noise']}, {len(s['members'])} reward models (seeds
{s['members']}, {'each on its own bootstrap resample' if s['bootstrap'] else 'sharing their data'}, {s['rm_steps']} steps),
members {'standardised by their held-out statistics before combining' if s.get('normalise', True) else 'combined as they score'},
UWO weight {s['uwo_weight']}. Best-of-n over {s['bon_prompts']} held-out prompts x {s['big_n']} answers; PPO
{s['ppo_steps']} steps (learning rate {s.get('ppo_lr')}, KL coefficient {s['kl_coef']}), evaluated on
{s.get('eval_prompts')} held-out prompts x {s.get('eval_samples')} answers at the training temperature.

Numbers are mean +- 1.96 SE (a 95% interval); {uncertainty} A difference is called one only when its
interval excludes zero.

![gold score against KL]({figure})

## Best-of-n

{chr(10).join('- ' + line for line in verdict('bon', summary['bon'], bon_cmp))}

{_table(summary['bon'], 'n')}

## PPO

{chr(10).join('- ' + line for line in verdict('ppo', summary['ppo'], ppo_cmp))}

{_table(summary['ppo'], 'kl')}

Runs end at different KL: read the figure at equal KL, since a run that moves the policy less far loses less gold
whatever its reward.

`summary.json` holds these numbers and their standard errors; `experiments/` has a study per question (ensemble
size, label noise, KL penalty, UWO weight, scaling-law fits), each writing its own numbers.
"""


def write_report(out: Path, settings: dict) -> dict:
    """summary.json, overoptimization.png and report.md of one demo folder (SEs over prompts)."""
    out = Path(out)
    curves = demo_curves(out)
    summary = {"settings": settings, **summarise_demo(curves)}
    atomic_write_json(out / "summary.json", summary)
    headline_figure(curves, out / "overoptimization.png", "Gold score as the proxy is optimized harder (bands: 95% over prompts)")
    uncertainty = ("the standard errors are over prompts (one run: they do not include the spread between reruns with other "
                   "seeds; `make replicates` measures that).")
    text = report_text(summary, settings, "overoptimization.png", uncertainty,
                       f"Made by `experiments/demo.py` (its last invocation took {settings['minutes']} minutes; stages already done are skipped).")
    atomic_write_text(out / "report.md", text)
    return json.loads(json.dumps(summary))
