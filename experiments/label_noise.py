"""Study: does label noise in the preference data change how much ensembles help?

Question: the demo's reward models learn from gold-labelled pairs with some label noise (paper:
25%; a noisy label is a coin flip). With the other noise level (0 if the demo used noise, else
0.25), are single RMs overoptimized more or less, and how do mean, WCO and UWO compare, in
best-of-n? Re-runs rmopt-pairs, rmopt-rm -m (seeds 1..5, joblib) and rmopt-bon for that noise level
with the demo's settings, reusing the demo's SFT policy and gold-scored answers (gold_gens), then
plots both noise levels. Expensive: several minutes on 2 CPU cores (the quick demo's sizes).

Run:  python experiments/label_noise.py --demo runs/demo-quick [--noise 0.0] [--verbose]
Writes <out>/noise<level>/{data/pairs, models/rm_seed*, bon/}, label_noise.json and label_noise.png.
Stages already done are skipped by the CLIs themselves, so a rerun only redraws.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import (  # noqa: E402
    gold_stats,
    load_bon_store,
    mean_curve,
    objective_curve,
    parse_args,
    print_table,
    rerun,
    run_config,
    save_figure,
    stats_row,
    study_main,
    write_json,
)

STUDY = "label_noise"


def train_and_bon(demo: Path, out: Path, noise: float, log=None) -> Path:
    """The demo's pairs, reward-model sweep and best-of-n again, with only the label noise changed (each
    stage from the config the demo ran it with); the same SFT policy and answers. Returns the bon folder."""
    members = [int(m) for m in run_config(demo / "bon").seeds]
    pairs, rm = out / "data" / "pairs", out / "models" / "rm"
    rerun("rmopt-pairs", demo / "data" / "pairs", pairs, f"label_noise={noise}", log=log)
    rerun("rmopt-rm", demo / "models" / f"rm_seed{members[0]}", rm, f"data.path={pairs}",
          "seed=" + ",".join(map(str, members)), "hydra/launcher=joblib", multirun=True, log=log)
    rerun("rmopt-bon", demo / "bon", out / "bon", f'proxy_rm_path="{rm}_seed{{seed}}"', f"gold_gens={demo / 'bon' / 'gold_gens'}",
          log=log)
    return out / "bon"


def compare_curves(scores, gold, ns, uwo_weight: float) -> dict:
    """The four curves compared: single RMs (averaged), mean, WCO and UWO."""
    return {
        "single": mean_curve([objective_curve(m, gold, ns, "single") for m in scores]),
        "mean": objective_curve(scores, gold, ns, "mean"),
        "wco": objective_curve(scores, gold, ns, "wco"),
        "uwo": objective_curve(scores, gold, ns, "uwo", uwo_weight),
    }


def figure(by_noise: dict, path: Path, title: str) -> Path:
    panels = []
    for kind in ("single", "mean", "wco", "uwo"):
        panels.append({
            "title": f"{kind}{' (members averaged)' if kind == 'single' else ''}", "xlabel": "n", "ylabel": "gold score",
            "log_x": True,
            "lines": [{"x": c[kind]["n"], "y": c[kind]["gold_score"], "se": c[kind].get("gold_score_se"), "label": f"noise {noise:g}"}
                      for noise, c in by_noise.items()],
        })
    for noise, c in by_noise.items():
        panels.append({
            "title": f"noise {noise:g}: all", "xlabel": "n", "ylabel": "gold score", "log_x": True,
            "lines": [{"x": curve["n"], "y": curve["gold_score"], "label": kind} for kind, curve in c.items()],
        })
    return save_figure(panels, path, title, ncols=3)


def main() -> None:
    def extra(parser):
        parser.add_argument("--noise", type=float, default=None,
                            help="the other noise level (default: 0 if the demo used noise, else 0.25)")
        parser.add_argument("--verbose", action="store_true", help="show each stage's output (else <out>/study.log)")

    args = parse_args(__doc__, STUDY, extra)
    demo_noise = float(run_config(args.demo / "data" / "pairs").label_noise)
    noise = args.noise if args.noise is not None else (0.0 if demo_noise > 0 else 0.25)
    if not 0 <= noise <= 1:
        raise SystemExit(f"error: --noise {noise}; expected a fraction in [0, 1]")
    weight = float(run_config(args.demo / "bon").uwo_weights[0])
    bon_dirs = {demo_noise: args.demo / "bon"}
    if noise != demo_noise:
        folder = args.out / f"noise{noise:g}"
        folder.mkdir(parents=True, exist_ok=True)
        log = None if args.verbose else open(folder / "study.log", "a")
        print(f"label noise {noise:g} (demo: {demo_noise:g}): pairs -> 5 reward models -> best-of-n in {folder}"
              + ("" if args.verbose else f"; stage output in {folder / 'study.log'}"), flush=True)
        start = time.time()
        bon_dirs[noise] = train_and_bon(args.demo, folder, noise, log)
        print(f"trained and scored in {(time.time() - start) / 60:.1f} min", flush=True)
    by_noise, rows = {}, []
    for level in sorted(bon_dirs):
        store = load_bon_store(bon_dirs[level])
        by_noise[level] = compare_curves(store.scores, store.gold, store.ns, weight)
        for kind, curve in by_noise[level].items():
            st = gold_stats(curve)
            rows.append(stats_row(st, "gold_start", "gold_max", "n_at_max", "gold_final", "drop", "n_final", noise=level, curve=kind))
    png = figure(by_noise, args.out / f"{STUDY}.png", f"label noise {' vs '.join(f'{x:g}' for x in by_noise)} (BoN)")
    js = write_json(args.out / f"{STUDY}.json", {
        "demo": str(args.demo), "bon_dirs": {f"{k:g}": str(v) for k, v in bon_dirs.items()}, "uwo_weight": weight,
        "summary": rows, "curves": {f"{k:g}": v for k, v in by_noise.items()},
    })
    print_table(rows, ["noise", "curve", "gold_start", "gold_max", "n_at_max", "gold_final", "drop"],
                f"best-of-n gold by label noise (final: n={rows[0]['n_final']}):")
    print(f"wrote {js}\n      {png}")


if __name__ == "__main__":
    study_main(main)
