"""Replicates of the whole demo: `make replicates` (K = 3).

Reruns the demo pipeline K times with independent seeds for everything that is random (SFT, pairs,
reward models, best-of-n sampling, PPO; replicate r runs `experiments/demo.py --seed r-1`, with the controls, so rep1 is
`make demo` plus the controls), each into its own demo folder `<out>/rep1 ... repK`. The replicates run at once, sharing the cores
(`experiments/cores.py`): replicate 1's stages first, the later ones on the cores it leaves idle; each stage
runs as it would alone, so the outputs are those of running the replicates one after another. Then it writes:

- `<out>/summary.json`: every summary number of the demo (each ensemble and the average single RM, for
  best-of-n and PPO) and every comparison with the average single RM, as the mean over replicates
  with its standard error over replicates (`<key>_se`) and the replicates' own values;
- `<out>/overoptimization.png`: the curves as mean over replicates +- 1.96 SE bands;
- `<out>/report.md`: the report, its statements computed from these numbers.

Run:  python experiments/replicate.py --replicates 3 --out runs/replicates [--quick]
A rerun skips every stage already done (same config) and redraws; `--report-only` runs nothing and only
redraws from the finished replicate folders (e.g. after replicates were run one by one with
`experiments/demo.py --seed r-1 --out <out>/rep<r>`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.cores import share_cores  # noqa: E402
from experiments.demo import ROOT, add_tasks_option, differing_option, recorded_options, run_demo  # noqa: E402
from experiments.report import (  # noqa: E402
    SINGLE,
    STAGES,
    demo_curves,
    headline_figure,
    multiplier,
    report_text,
)
from experiments.targets import over_replicates, with_verdicts  # noqa: E402
from rmopt.errors import ArgumentParser  # noqa: E402
from rmopt.stats import standard_error  # noqa: E402
from rmopt.utils import atomic_write_json, atomic_write_text  # noqa: E402


def _common_names(summaries: Sequence[Mapping], stage: str) -> list[str]:
    """Rewards present in every replicate (ensembles and the average single RM; members differ by seed)."""
    names = [n for n in summaries[0][stage] if not n.startswith("seed")]
    return [n for n in names if all(n in s[stage] for s in summaries)]


def _aggregate(values: Sequence[Mapping], keys: Sequence[str]) -> dict:
    """Mean, SE and the replicates' values of each number; a location (``n_at_max``, ...) as each replicate's."""
    out = {}
    for key in keys:
        xs = [float(v[key]) for v in values]
        if key.endswith("_at_max"):
            out[key] = xs
        else:
            out[key], out[f"{key}_se"], out[f"{key}_replicates"] = float(np.mean(xs)), standard_error(xs), xs
    return out


def replicate_summary(summaries: Sequence[Mapping]) -> dict:
    """Mean and SE over replicates of every number of the replicates' demo summaries."""
    out: dict = {}
    stages = [st for st in STAGES if all(st in s for s in summaries)]
    for stage in stages:
        out[stage] = {}
        for name in _common_names(summaries, stage):
            first = summaries[0][stage][name]
            keys = [k for k, v in first.items() if not k.endswith("_se") and isinstance(v, (int, float))]
            out[stage][name] = _aggregate([s[stage][name] for s in summaries], keys)
    out["comparisons"] = {}
    for stage in [*stages, "noise"]:
        first = summaries[0]["comparisons"].get(stage, {})
        if not all(stage in s["comparisons"] for s in summaries):
            continue
        groups = {"": first} if stage == "noise" else first  # noise: {key: difference}; a stage: {name: {key: difference}}
        out["comparisons"][stage] = {}
        for name, keys in groups.items():
            agg = {}
            for key in keys:
                xs = [float((s["comparisons"][stage] if stage == "noise" else s["comparisons"][stage][name])[key]["value"]) for s in summaries]
                agg[key] = {"value": float(np.mean(xs)), "se": standard_error(xs), "replicates": xs}
            if stage == "noise":
                out["comparisons"][stage] = agg
            else:
                out["comparisons"][stage][name] = agg
    if all("world" in s for s in summaries):
        worlds = [s["world"] for s in summaries]
        out["world"] = _aggregate(worlds, ["sft_max_share", "sft_gold_mean", "sft_gold_std"])
        oracle = np.array([w["oracle"]["gold_score"] for w in worlds])
        out["world"]["oracle"] = {"n": worlds[0]["oracle"]["n"], "kl_bon": worlds[0]["oracle"]["kl_bon"],
                                  "gold_score": oracle.mean(axis=0).tolist(),
                                  "gold_score_se": np.atleast_1d(standard_error(oracle, axis=0)).tolist()}
    if all("targets" in s for s in summaries):
        out["targets"] = over_replicates([s["targets"] for s in summaries])
    return out


def replicate_curves(curve_sets: Sequence[Mapping[str, Mapping[str, dict]]]) -> dict:
    """Each reward's curve as the mean over replicates, with ``gold_score_se`` / ``proxy_score_se`` over replicates."""
    out = {}
    for stage in [st for st in STAGES if all(st in c for c in curve_sets)]:
        names = [n for n in curve_sets[0][stage] if not n.startswith("seed") and all(n in c[stage] for c in curve_sets)]
        out[stage] = {}
        for name in names:
            curves = [c[stage][name] for c in curve_sets]
            agg = {}
            for key in ("n", "kl_bon", "step", "kl", "gold_score", "proxy_score"):
                if key in curves[0]:
                    values = np.array([np.asarray(c[key], dtype=np.float64) for c in curves])
                    agg[key] = values.mean(axis=0).tolist()
                    if key in ("gold_score", "proxy_score"):
                        agg[f"{key}_se"] = np.atleast_1d(standard_error(values, axis=0)).tolist()
            out[stage][name] = agg
    return out


def write_replicate_report(out: Path, reps: Sequence[Path], minutes: float | None = None) -> dict:
    """The summary, figure and report over the finished replicate folders ``reps``; ``minutes``: the whole run's
    (each replicate's own, in its settings, overlaps the others': they share the cores)."""
    summaries = [json.loads((rep / "summary.json").read_text()) for rep in reps]
    settings = {**summaries[0]["settings"], "replicates": len(reps), "seeds": [s["settings"].get("seed") for s in summaries],
                "members": [s["settings"]["members"] for s in summaries], "minutes": [s["settings"].get("minutes") for s in summaries]}
    if minutes is None:  # a redraw: the whole run's time stands while its replicates are the ones it timed
        try:
            before = json.loads((out / "summary.json").read_text()).get("settings", {})
        except (OSError, json.JSONDecodeError):  # none yet, or not readable: no whole-run time to keep
            before = {}
        minutes = before.get("total_minutes") if before.get("minutes") == settings["minutes"] else None
    if minutes is not None:
        settings["total_minutes"] = minutes
    settings.pop("seed", None)
    summary = {"settings": settings, **replicate_summary(summaries)}
    if "targets" in summary:
        summary["targets"] = with_verdicts(summary["targets"], multiplier(settings))
    atomic_write_json(out / "summary.json", summary)
    k = len(reps)
    headline_figure(replicate_curves([demo_curves(rep) for rep in reps]), out / "overoptimization.png",
                    f"Gold score as the proxy is optimized harder: mean of {k} replicates, bands 95% over replicates",
                    z=multiplier(settings), oracle=summary.get("world", {}).get("oracle"))
    uncertainty = (f"the standard errors are over the {k} replicates (independent seeds for SFT, pairs, reward models, "
                   f"sampling and PPO; each replicate's own numbers, with SEs over prompts, are in rep1/ ... rep{k}/). "
                   f"Over {k} replicates the 95% interval is +-t SE with Student's t for {k - 1} degrees of freedom. The "
                   "table's numbers are means over replicates of each replicate's own numbers (its peak location is "
                   "listed per replicate), while the figure draws the replicate-averaged curves.")
    shared = any(s["settings"].get("shared_cores") for s in summaries)
    took = (f"minutes per replicate {settings['minutes']}"
            + (", from each one's start to its end, overlapping as they shared the cores" if shared else "")
            + (f"; {settings['total_minutes']} minutes in all" if "total_minutes" in settings else ""))
    intro = (f"Made by `experiments/replicate.py --replicates {k}`: {k} runs of `experiments/demo.py` "
             f"(seeds {settings['seeds']}, {took}). The '{SINGLE}' rows are the "
             "average of each replicate's single reward models.")
    atomic_write_text(out / "report.md", report_text(summary, settings, "overoptimization.png", uncertainty, intro))
    return summary


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicates", type=int, default=3, help="K, the number of independent replicates (default 3)")
    parser.add_argument("--out", default="runs/replicates", help="output folder (default runs/replicates)")
    parser.add_argument("--quick", action="store_true", help="the quick demo's sizes")
    add_tasks_option(parser)
    parser.add_argument("--verbose", action="store_true", help="show each stage's own output")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the summary, figure and report from the finished rep1..repK in --out")
    args = parser.parse_args()
    if args.replicates < 2:
        parser.error(f"--replicates {args.replicates}: expected at least 2 (a standard error needs two replicates)")
    out = Path(args.out)
    out = out if out.is_absolute() else ROOT / out
    start = time.time()
    if args.report_only:
        reps = [out / f"rep{r}" for r in range(1, args.replicates + 1)]
        missing = [str(rep / "summary.json") for rep in reps if not (rep / "summary.json").is_file()]
        if missing:
            parser.error(f"--report-only: no finished replicate at {missing[0]}; expected rep1 ... rep{args.replicates} "
                         "each holding a demo's summary.json (run without --report-only first)")
        first = recorded_options(reps[0])
        for rep in reps[1:]:
            diff = differing_option(first, recorded_options(rep), ignore=("seed",), controls_either_way=False)
            if diff:
                key, was, value = diff
                parser.error(f"--report-only: {reps[0].name} was run with {key}={was!r}, {rep.name} with {key}={value!r}; "
                             f"expected replicates in {out} that differ only in their seed")
        write_replicate_report(out, reps)
        print(f"summary: {out / 'summary.json'}\nreport:  {out / 'report.md'}")
        return
    reps = [out / f"rep{r}" for r in range(1, args.replicates + 1)]

    def replicate(r: int):
        def pipeline():
            print(f"\n=== replicate {r} of {args.replicates} (seed {r - 1}) starts ===", flush=True)
            run_demo(reps[r - 1], quick=args.quick, seed=r - 1, verbose=args.verbose, tasks=args.tasks)
            print(f"\n=== replicate {r} of {args.replicates} done ({(time.time() - start) / 60:.1f} min) ===", flush=True)
        return pipeline

    # the replicates run at once on the cores, replicate 1's stages first: a core that one leaves idle
    # (its SFT runs alone, its last runs end unevenly) runs the next one's stages; the same runs, the same outputs
    share_cores(*[replicate(r) for r in range(1, args.replicates + 1)],
                names=[f"replicate {r} ({out.name}/rep{r}/demo.log)" for r in range(1, args.replicates + 1)])
    write_replicate_report(out, reps, minutes=round((time.time() - start) / 60, 1))
    print(f"\nsummary: {out / 'summary.json'}\nreport:  {out / 'report.md'}  ({(time.time() - start) / 60:.1f} min)")


if __name__ == "__main__":
    from experiments.common import study_main

    study_main(main)
