"""Study: does a small KL penalty stop PPO from overoptimizing, for a single RM and for WCO?

Question: the paper finds that WCO/UWO with a small fixed KL coefficient (0.01) prevent
overoptimization in PPO without losing gold score. This runs rmopt-ppo for the KL coefficient the
demo did not use (0.01 if the demo used 0, else 0), for a single RM (seed 1) and for the WCO
ensemble, with the demo's other settings, gold-scores them (rmopt-ppo-gold), and overlays the four
runs: gold and proxy score against KL(policy || initial) and against steps. Expensive: a few
minutes on 2 CPU cores with the quick demo's sizes.

Run:  python experiments/kl_penalty.py --demo runs/demo-quick [--kl-coef 0.01] [--verbose]
Each run is the demo's own (its saved rmopt_config.yaml) with only kl_coef changed.
Writes <out>/kl<coef>/{seed<first member>,wco}/ (PPO runs), kl_penalty.json and kl_penalty.png.
A rerun skips PPO runs that are already finished (the CLI's own check) and only redraws.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import (  # noqa: E402
    gold_stats,
    parse_args,
    print_table,
    rerun,
    run_cli,
    run_config,
    save_figure,
    stats_row,
    study_main,
    write_json,
)
from rmopt.errors import RmoptError  # noqa: E402

STUDY = "kl_penalty"


def runs_of(demo: Path) -> tuple[str, str]:
    """The demo's first single-RM PPO run and its WCO run (folder names under <demo>/ppo)."""
    singles = sorted((p.name for p in (demo / "ppo").glob("seed*")), key=lambda n: int(n[4:]))
    if not singles or not (demo / "ppo" / "wco").is_dir():
        raise RmoptError(f"{str(demo / 'ppo')!r} has no seed*/ and wco/ PPO runs; expected a finished demo folder")
    return singles[0], "wco"


def run_ppo(demo: Path, folder: Path, kl_coef: float, log=None) -> dict[str, Path]:
    """The demo's PPO runs of a single RM and of WCO again, with only ``kl_coef`` changed; then gold scores."""
    runs = runs_of(demo)
    for name in runs:
        rerun("rmopt-ppo", demo / "ppo" / name, folder / name, f"kl_coef={kl_coef}", log=log)
    run_cli("rmopt-ppo-gold", f"run_dirs=[{','.join(str(folder / n) for n in runs)}]", f"output_dir={folder}",
            f"hydra.run.dir={folder}/logs/ppo-gold", log=log)
    return {name: folder / name for name in runs}


def load_run(run: Path) -> dict:
    path = Path(run) / "results.json"
    if not path.exists():
        raise RmoptError(f"{str(path)!r} is missing; expected a gold-scored PPO run (rmopt-ppo-gold run_dir={run})")
    from rmopt.summary import ppo_curve_from

    return ppo_curve_from(run)


def figure(curves: dict, path: Path, title: str) -> Path:
    def line(name, c, x, y):
        return {"x": c[x], "y": c[y], "se": c.get(f"{y}_se"), "label": name,
                "style": {"linestyle": "-" if "kl0 " in name or name.endswith("kl0") else "--"}}

    panels = [
        {"title": "gold vs KL", "xlabel": "KL(policy || initial)", "ylabel": "gold score",
         "lines": [line(n, c, "kl", "gold_score") for n, c in curves.items()]},
        {"title": "proxy vs KL", "xlabel": "KL(policy || initial)", "ylabel": "proxy score (normalised)",
         "lines": [line(n, c, "kl", "proxy_score") for n, c in curves.items()]},
        {"title": "gold vs step", "xlabel": "step", "ylabel": "gold score",
         "lines": [line(n, c, "step", "gold_score") for n, c in curves.items()]},
    ]
    return save_figure(panels, path, title, ncols=3)


def main() -> None:
    def extra(parser):
        parser.add_argument("--kl-coef", type=float, default=None,
                            help="the other fixed KL coefficient (default: 0.01 if the demo used 0, else 0)")
        parser.add_argument("--verbose", action="store_true", help="show each stage's output (else <out>/study.log)")

    args = parse_args(__doc__, STUDY, extra)
    RUNS = runs_of(args.demo)
    demo_coef = float(run_config(args.demo / "ppo" / RUNS[1]).kl_coef)
    coef = args.kl_coef if args.kl_coef is not None else (0.01 if demo_coef == 0 else 0.0)
    if not coef >= 0:
        raise SystemExit(f"error: --kl-coef {coef}; expected a number >= 0")
    runs = {demo_coef: {name: args.demo / "ppo" / name for name in RUNS}}
    if coef != demo_coef:
        folder = args.out / f"kl{coef:g}"
        folder.mkdir(parents=True, exist_ok=True)
        log = None if args.verbose else open(folder / "study.log", "a")
        print(f"PPO with kl_coef={coef:g} (demo: {demo_coef:g}) for {', '.join(RUNS)} in {folder}"
              + ("" if args.verbose else f"; stage output in {folder / 'study.log'}"), flush=True)
        start = time.time()
        runs[coef] = run_ppo(args.demo, folder, coef, log)
        print(f"trained and gold-scored in {(time.time() - start) / 60:.1f} min", flush=True)
    curves, rows = {}, []
    for c in sorted(runs):
        for name, run in runs[c].items():
            label = f"{name} kl{c:g}"
            curves[label] = load_run(run)
            st = gold_stats(curves[label], "kl")
            rows.append(stats_row(st, "kl_final", "gold_start", "gold_max", "kl_at_max", "gold_final", "drop", "proxy_final",
                                  kl_coef=c, run=name))
    png = figure(curves, args.out / f"{STUDY}.png", f"PPO, KL coefficient {' vs '.join(f'{c:g}' for c in sorted(runs))}")
    js = write_json(args.out / f"{STUDY}.json", {
        "demo": str(args.demo), "runs": {f"{c:g}": {n: str(r) for n, r in v.items()} for c, v in runs.items()},
        "summary": rows, "curves": curves,
    })
    print_table(rows, ["kl_coef", "run", "kl_final", "gold_start", "gold_max", "kl_at_max", "gold_final", "drop", "proxy_final"],
                "PPO gold by KL coefficient (final = last eval step):")
    print(f"wrote {js}\n      {png}")


if __name__ == "__main__":
    study_main(main)
