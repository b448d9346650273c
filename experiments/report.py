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

from rmopt.stats import Z95, excludes_zero, interval, t95
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
COMPARED = ("drop_cv", "gold_final", "gold_peak_cv")  # each ensemble against the average single RM
STAGES = {"bon": "n", "bon_clean": "n", "ppo": "kl", "ppo_kl0.01": "kl"}  # those a demo folder has
TITLES = {"bon": "Best-of-n", "bon_clean": "Best-of-n, clean labels", "ppo": "PPO", "ppo_kl0.01": "PPO, KL coefficient 0.01"}
KL_EXTRA = 0.01  # the KL coefficient of the demo's ppo_kl0.01/ runs


def _kind(name: str) -> str:
    """'seed3' -> 'single'; 'uwo_0.5' -> 'uwo'."""
    return "single" if name.startswith("seed") else name.split("_")[0]


def ppo_runs(out: Path, stage: str = "ppo") -> dict[str, Path]:
    folder = out / stage
    return {p.name: p for p in sorted(folder.iterdir()) if (p / "results.json").exists()} if folder.is_dir() else {}


def demo_curves(out: Path) -> dict[str, dict[str, dict]]:
    """{stage: {name: curve}} of a demo folder (``bon``, ``ppo`` and, where present, ``bon_clean``,
    ``ppo_kl0.01``), plus each stage's average single RM."""
    curves = {}
    for stage, x in STAGES.items():
        found = bon_curves_from(out / stage) if x == "n" else {n: ppo_curve_from(r) for n, r in ppo_runs(out, stage).items()}
        if found:
            curves[stage] = found
    for stage in curves.values():
        singles = [c for name, c in stage.items() if _kind(name) == "single"]
        if singles:
            stage[SINGLE] = average_curve(singles)
    return curves


def summarise_demo(curves: Mapping[str, Mapping[str, dict]]) -> dict:
    """Summaries of every curve (with SEs over prompts) and each ensemble's paired differences from the average single RM."""
    summary, comparisons, singles = {}, {}, {}
    for stage, x in STAGES.items():
        if stage not in curves:
            continue
        full = {name: summarise(c, x) for name, c in curves[stage].items()}
        if x == "kl":
            for name, s in full.items():
                s["step_final"] = curves[stage][name]["step"][-1]
        if SINGLE in full:
            full[SINGLE]["singles"] = sum(1 for name in full if _kind(name) == "single" and name != SINGLE)
        summary[stage] = {name: without_per_prompt(s) for name, s in full.items()}
        if SINGLE in full:
            singles[stage] = full[SINGLE]
            comparisons[stage] = {
                name: {key: difference(s, full[SINGLE], key) for key in COMPARED}
                for name, s in full.items() if _kind(name) in ENSEMBLES
            }
    if "bon" in singles and "bon_clean" in singles:  # the same prompts and answers: a paired difference
        comparisons["noise"] = {"drop_cv": difference(singles["bon"], singles["bon_clean"], "drop_cv")}
    return {**summary, "comparisons": comparisons}


# ---------------------------------------------------------------------------------------------
# the figure


def headline_figure(curves: Mapping[str, Mapping[str, dict]], path: Path, title: str, z: float = Z95,
                    oracle: Mapping | None = None) -> Path:
    """Gold score against KL for each stage (best-of-n, PPO, and their clean-label / KL-penalty variants
    where present): single RMs in grey (their average with a band), ensembles in colour with bands
    (95%: +-z SE), the oracle (best-of-n ranked by the gold itself) dashed in the best-of-n panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rmopt.report import band, save_png

    stages = [st for st in STAGES if st in curves]
    rows = 2 if len(stages) > 2 else 1
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4.2 * rows), squeeze=False)
    order = [st for st in ("bon", "ppo", "bon_clean", "ppo_kl0.01") if st in stages]
    for ax, stage in zip(axes.T.flatten() if rows == 2 and len(order) == 4 else axes.flatten(), _panel_order(order), strict=False):
        x = "kl_bon" if STAGES[stage] == "n" else "kl"
        if oracle is not None and x == "kl_bon":
            ax.plot(oracle["kl_bon"], oracle["gold_score"], color="k", ls="--", lw=1, label="oracle (gold ranks)")
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
                band(ax, c[x], c["gold_score"], c.get("gold_score_se"), style["color"], z=z)
        handles, labels = ax.get_legend_handles_labels()
        keep = {label: h for h, label in zip(handles, labels, strict=True)}
        ax.legend(keep.values(), keep.keys(), fontsize=8)
        ax.grid(alpha=0.3)
        xlabel = "KL_bon = log n - (n-1)/n  (nats)" if x == "kl_bon" else "KL(policy || initial policy)  (nats)"
        ax.set(title=TITLES[stage], xlabel=xlabel, ylabel="gold score")
    for ax in axes.flatten()[len(order):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return save_png(fig, path)


def _panel_order(stages: list[str]) -> list[str]:
    """Best-of-n panels in the left column, PPO in the right (with all four: rows main, variant)."""
    if len(stages) == 4:
        return ["bon", "bon_clean", "ppo", "ppo_kl0.01"]  # filled column by column
    return stages


# ---------------------------------------------------------------------------------------------
# sentences from numbers


def multiplier(settings: Mapping) -> float:
    """The 95% interval's multiplier of a summary's SEs: 1.96 over prompts, Student's t over K replicates."""
    k = settings.get("replicates")
    return t95(int(k) - 1) if k else Z95


def _pm(s: Mapping, key: str, z: float) -> str:
    se = s.get(f"{key}_se", float("nan"))
    return f"{s[key]:.3f}" + ("" if np.isnan(se) else f" +- {z * se:.3f}")


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):  # a location in each replicate
        return "/".join(_fmt(x) for x in v)
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def _finding(d: Mapping, more: str, less: str, z: float) -> str:
    """'X more/less (interval)' when the 95% interval excludes zero, else 'no clear difference (interval)'."""
    v, se = d["value"], d["se"]
    if np.isnan(se):
        return f"{v:+.3f} (no standard error)"
    lo, hi = interval(v, se, z)
    span = f"95% interval {lo:+.3f} to {hi:+.3f}"
    return f"{abs(v):.3f} {more if v > 0 else less} ({span})" if excludes_zero(v, se, z) else f"no clear difference ({v:+.3f}, {span})"


def _clear(s: Mapping, key: str, z: float) -> bool:
    """Whether ``s[key]`` is clearly above zero (its 95% interval excludes zero)."""
    return key in s and s[key] > 0 and excludes_zero(s[key], s.get(f"{key}_se", float("nan")), z)


def verdict(stage: str, summary: Mapping, comparisons: Mapping, z: float = Z95) -> list[str]:
    """Plain sentences about one stage, each computed from the numbers and their intervals.

    Whether gold rose and fell is judged on the cross-fitted peak (located on one half of the prompts,
    measured on the other), which a flat noisy curve does not pass; the plain maximum is shown beside it.
    """
    x = STAGES[stage]
    single = summary.get(SINGLE)
    if single is None:
        return []
    fell, rose, proxy_up = (_clear(single, key, z) for key in ("drop_cv", "rise_cv", "proxy_gain"))
    lines = [
        f"Single reward models (average of {_fmt(single.get('singles', 0))}): gold {_pm(single, 'gold_start', z)} at the start, "
        f"highest at {x} = {_fmt(single[f'{x}_at_max'])} ({_pm(single, 'gold_max', z)}; at the peak located on the other half "
        f"of the prompts {_pm(single, 'gold_peak_cv', z)}, {'a clear rise' if rose else 'no clear rise'} of "
        f"{_pm(single, 'rise_cv', z)}), final {_pm(single, 'gold_final', z)} at {x} = {_fmt(single[f'{x}_final'])}: "
        f"{'a clear fall' if fell else 'no clear fall'} of {_pm(single, 'drop_cv', z)} from that peak. The proxy score "
        f"{'rose clearly' if proxy_up else 'did not rise clearly'} ({_pm(single, 'proxy_gain', z)})."
        + (" That is overoptimization: the proxy rose while gold fell." if fell and proxy_up else "")
    ]
    for name, c in comparisons.items():
        s = summary[name]
        lines.append(
            f"{name.upper()}: highest at {x} = {_fmt(s[f'{x}_at_max'])} ({_pm(s, 'gold_max', z)}), final {_pm(s, 'gold_final', z)} "
            f"at {x} = {_fmt(s[f'{x}_final'])}, fall from the cross-fitted peak {_pm(s, 'drop_cv', z)}. Against the average "
            f"single RM: fall {_finding(c['drop_cv'], 'larger', 'smaller', z)}; final gold "
            f"{_finding(c['gold_final'], 'higher', 'lower', z)}; peak gold {_finding(c['gold_peak_cv'], 'higher', 'lower', z)}."
        )
    return lines


def _table(summary: Mapping, x: str, z: float) -> str:
    head = (f"| reward | gold start | gold max | {x} at max | cross-fitted peak | gold final | final {x} | fall from peak |\n"
            "|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {name} | {_pm(s, 'gold_start', z)} | {_pm(s, 'gold_max', z)} | {_fmt(s[f'{x}_at_max'])} | {_pm(s, 'gold_peak_cv', z)} | "
        f"{_pm(s, 'gold_final', z)} | {_fmt(s[f'{x}_final'])} | {_pm(s, 'drop_cv', z)} |"
        for name, s in summary.items() if "gold_peak_cv" in s
    )


def _members(s: Mapping) -> str:
    members = s["members"]
    if members and isinstance(members[0], (list, tuple)):  # one list per replicate
        return f"{len(members[0])} reward models per replicate (seeds {'; '.join(map(str, members))})"
    return f"{len(members)} reward models (seeds {members})"


def _section(stage: str, summary: Mapping, z: float) -> str:
    lines = verdict(stage, summary[stage], summary["comparisons"].get(stage, {}), z)
    return f"## {TITLES[stage]}\n\n" + "\n".join("- " + line for line in lines) + f"\n\n{_table(summary[stage], STAGES[stage], z)}\n"


def _tasks(s: dict) -> str:
    return f"tasks {', '.join(s['tasks'])} only" if s.get("tasks") else "its default tasks"


def _extras(s: Mapping) -> str:
    parts = []
    if s.get("bon_clean"):
        parts.append("`bon_clean/`: the same prompts' pairs with label noise 0, members with the same seeds, best-of-n on the same answers")
    if s.get("ppo_kl"):
        parts.append(f"`ppo_kl{s['ppo_kl']}/`: the same PPO runs with KL coefficient {s['ppo_kl']}")
    return (" Beside them: " + "; ".join(parts) + ".") if parts else ""


def _targets_section(summary: Mapping, z: float) -> str:
    from experiments.targets import table

    targets = summary.get("targets")
    if not targets:
        return ""
    met = sum(t["met"] for t in targets.values())
    return (f"## The lab's targets\n\n{met} of {len(targets)} targets met (thresholds judged on the estimate, "
            f"\"interval above 0\" on the 95% interval; `experiments/targets.py` defines each).\n\n{table(targets, z)}\n")


def report_text(summary: Mapping, settings: Mapping, figure: str, uncertainty: str, intro: str) -> str:
    s, z = settings, multiplier(settings)
    world = summary.get("world")
    world_line = ("" if not world else
                  f" The SFT policy's own answers (the best-of-n samples): {world['sft_max_share']:.3f} at the gold's maximum, gold mean "
                  f"{world['sft_gold_mean']:.3f} and standard deviation {world['sft_gold_std']:.3f}; the oracle (best-of-n ranked by the "
                  f"gold itself) goes from {world['oracle']['gold_score'][0]:.3f} at n = 1 to {world['oracle']['gold_score'][-1]:.3f} at "
                  f"n = {world['oracle']['n'][-1]}.")
    sections = "\n".join(_section(stage, summary, z) for stage in STAGES if stage in summary)
    return f"""# Overoptimization in the toy world

{intro} Toy world `{s.get('world', 'graded')}`, {_tasks(s)}. Policy and reward-model base `{s['model']}` (SFT {s['sft_steps']} steps), {s['pairs']} preference
prompts labelled by the gold reward with label noise {s['label_noise']}, {_members(s)},
{'each on its own bootstrap resample' if s['bootstrap'] else 'sharing their data'}, {s['rm_steps']} steps;
members {'standardised by their held-out statistics before combining' if s.get('normalise', True) else 'combined as they score'},
UWO weight {s['uwo_weight']}. Best-of-n over {s['bon_prompts']} held-out prompts x {s['big_n']} answers; PPO
{s['ppo_steps']} steps (learning rate {s.get('ppo_lr')}, KL coefficient {s['kl_coef']}), evaluated on
{s.get('eval_prompts')} held-out prompts x {s.get('eval_samples')} answers at the training temperature.{_extras(s)}{world_line}

Numbers are mean +- {z:.2f} SE (a 95% interval); {uncertainty} A difference is called one only when its
interval excludes zero. The highest point of a noisy curve overstates its peak, so rises and falls are
measured from the cross-fitted peak: located on one half of the prompts, its gold measured on the other.

![gold score against KL]({figure})

{_targets_section(summary, z)}
{sections}
PPO runs end at different KL: read the figure at equal KL, since a run that moves the policy less far loses less gold
whatever its reward.

`summary.json` holds these numbers and their standard errors; `experiments/` has a study per question (ensemble
size, label noise, KL penalty, UWO weight, scaling-law fits), each writing its own numbers.
"""


def write_report(out: Path, settings: dict) -> dict:
    """summary.json, overoptimization.png and report.md of one demo folder (SEs over prompts)."""
    out = Path(out)
    from experiments.targets import measure, with_verdicts, world_stats

    curves = demo_curves(out)
    summary = {"settings": settings, **summarise_demo(curves)}
    world = world_stats(out / "bon", curves["bon"][SINGLE]["n"]) if SINGLE in curves.get("bon", {}) else None
    if world is not None:
        summary["world"] = {**world, "oracle": without_per_prompt(world["oracle"])}
    summary["targets"] = with_verdicts(measure({**summary, "world": world} if world else summary, curves), Z95)
    atomic_write_json(out / "summary.json", summary)
    headline_figure(curves, out / "overoptimization.png", "Gold score as the proxy is optimized harder (bands: 95% over prompts)",
                    oracle=summary.get("world", {}).get("oracle"))
    uncertainty = ("the standard errors are over prompts (one run: they do not include the spread between reruns with other "
                   "seeds; `make replicates` measures that).")
    text = report_text(summary, settings, "overoptimization.png", uncertainty,
                       f"Made by `experiments/demo.py` (its last invocation took {settings['minutes']} minutes"
                       f"{', sharing the cores with other replicates' if settings.get('shared_cores') else ''}; "
                       "stages already done are skipped).")
    atomic_write_text(out / "report.md", text)
    return json.loads(json.dumps(summary))
