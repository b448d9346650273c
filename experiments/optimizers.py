"""Study: PPO, GRPO and RLOO against a single RM, WCO, UWO and WARM, gold against KL.

Question: do the ensembles' and weight averaging's protections against overoptimization carry over
from PPO to the critic-free optimizers researchers use today (GRPO, RLOO)? For each algorithm this
trains the demo's PPO runs of the first single RM, WCO and UWO again with only the algorithm changed
(its settings read from conf/algorithm/<name>.yaml, every other setting the demo's saved config),
plus a run against WARM (the demo's members weight-averaged by rmopt-warm); the demo's own PPO runs
serve as PPO's, gold-scores everything (rmopt-ppo-gold) and draws gold against KL with 95% bands.
Expensive: 9 RL runs (about 2.5 minutes each with the demo's sizes, two at a time on 2 CPU cores).

Run:  python experiments/optimizers.py --demo runs/demo [--algorithms ppo,grpo,rloo] [--verbose]
Writes <out>/warm_rm/ (the WARM model), <out>/<algorithm>/{single,wco,uwo,warm}/ (RL runs),
optimizers.json and optimizers.png. A rerun skips finished runs (the CLI's own check) and only redraws.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import (  # noqa: E402
    ROOT,
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
from experiments.kl_penalty import load_run  # noqa: E402
from rmopt.errors import RmoptError  # noqa: E402

STUDY = "optimizers"
ALGORITHMS = ("ppo", "grpo", "rloo")
REWARDS = ("single", "wco", "uwo", "warm")
STYLES = {"ppo": "-", "grpo": "--", "rloo": ":"}
COLORS = {"single": "0.4", "wco": "tab:red", "uwo": "tab:green", "warm": "tab:purple"}


def algorithm_overrides(name: str) -> list[str]:
    """The algorithm group's settings as overrides of a saved (flat) run config, read from conf/algorithm/."""
    from omegaconf import OmegaConf

    path = ROOT / "conf" / "algorithm" / f"{name}.yaml"
    if not path.exists():
        raise RmoptError(f"algorithm {name!r} is unknown; expected one of {', '.join(ALGORITHMS)}")
    return [f"++algorithm.{k}={v}" for k, v in OmegaConf.to_container(OmegaConf.load(path)).items()]


def demo_runs(demo: Path) -> dict[str, Path]:
    """The demo's PPO runs this study starts from: its first single RM, WCO and UWO."""
    ppo = demo / "ppo"
    singles = sorted((p for p in ppo.glob("seed*") if (p / "rmopt_config.yaml").exists()), key=lambda p: int(p.name[4:]))
    runs = {"single": singles[0] if singles else None, "wco": ppo / "wco", "uwo": ppo / "uwo"}
    missing = [n for n, p in runs.items() if p is None or not (p / "rmopt_config.yaml").exists()]
    if missing:
        raise RmoptError(f"{str(ppo)!r} has no finished {', '.join(missing)} PPO run; expected a finished demo folder")
    return runs


def warm_model(demo: Path, out: Path, log=None) -> Path:
    """The demo's members weight-averaged (rmopt-warm) into <out>/warm_rm."""
    cfg = run_config(demo_runs(demo)["wco"])
    seeds = "[" + ",".join(str(s) for s in cfg.seeds) + "]"
    run_cli("rmopt-warm", f'proxy_rm_path="{cfg.proxy_rm_path}"', f"seeds={seeds}", f"output_dir={out / 'warm_rm'}",
            f"hydra.run.dir={out}/logs/warm", log=log)
    return out / "warm_rm"


def train_all(demo: Path, out: Path, algorithms, log=None) -> dict[str, dict[str, Path]]:
    """Every (algorithm, reward) run, ``RMOPT_JOBS`` (default 2) at a time, one CPU core each; PPO's single / WCO /
    UWO are the demo's own."""
    from experiments.demo import lanes

    base, warm = demo_runs(demo), warm_model(demo, out, log)
    runs: dict[str, dict[str, Path]] = {}
    tasks = []
    for algorithm in algorithms:
        runs[algorithm] = {}
        for reward in REWARDS:
            if algorithm == "ppo" and reward != "warm":
                runs[algorithm][reward] = base[reward]
                continue
            folder = out / algorithm / reward
            changes = algorithm_overrides(algorithm)
            source = base["single"] if reward == "warm" else base[reward]
            if reward == "warm":  # the single-RM run with the averaged model as its one RM
                changes += [f'proxy_rm_path="{warm}"', "seeds=[0]"]
            tasks.append(lambda source=source, folder=folder, changes=changes: rerun("rmopt-rl", source, folder, *changes, log=log))
            runs[algorithm][reward] = folder
    lanes(*tasks)
    for algorithm in algorithms:
        trained = [str(p) for r, p in runs[algorithm].items() if not (algorithm == "ppo" and r != "warm")]
        if trained:
            run_cli("rmopt-ppo-gold", f"run_dirs=[{','.join(trained)}]", f"output_dir={out / algorithm}",
                    f"hydra.run.dir={out}/logs/{algorithm}-gold", log=log)
    return runs


def figure(curves: dict, path: Path, title: str) -> Path:
    panels = []
    for algorithm in curves:
        lines = [{"x": c["kl"], "y": c["gold_score"], "se": c.get("gold_score_se"), "label": reward,
                  "style": {"linestyle": STYLES.get(algorithm, "-"), "color": COLORS[reward]}}
                 for reward, c in curves[algorithm].items()]
        panels.append({"title": algorithm.upper(), "xlabel": "KL(policy || initial)", "ylabel": "gold score", "lines": lines})
    return save_figure(panels, path, title, ncols=len(panels), sharey=True)  # the optimizers side by side on one gold scale


def main() -> None:
    def extra(parser):
        parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated, of ppo, grpo, rloo")
        parser.add_argument("--verbose", action="store_true", help="show each stage's output (else <out>/study.log)")

    args = parse_args(__doc__, STUDY, extra)
    algorithms = [a for a in args.algorithms.split(",") if a]
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or not algorithms:
        raise SystemExit(f"error: --algorithms {args.algorithms!r}; expected a comma-separated list of {', '.join(ALGORITHMS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    log = None if args.verbose else open(args.out / "study.log", "a")
    start = time.time()
    runs = train_all(args.demo, args.out, algorithms, log)
    print(f"trained and gold-scored in {(time.time() - start) / 60:.1f} min", flush=True)
    curves, rows = {}, []
    for algorithm, by_reward in runs.items():
        curves[algorithm] = {}
        for reward, run in by_reward.items():
            curves[algorithm][reward] = load_run(run)
            st = gold_stats(curves[algorithm][reward], "kl")
            rows.append(stats_row(st, "kl_final", "gold_start", "gold_max", "kl_at_max", "gold_final", "rise_cv", "drop_cv",
                                  "proxy_final", algorithm=algorithm, reward=reward))
    png = figure(curves, args.out / f"{STUDY}.png", "Gold score against KL by optimizer and reward (bands: 95% over prompts)")
    js = write_json(args.out / f"{STUDY}.json", {
        "demo": str(args.demo), "runs": {a: {r: str(p) for r, p in v.items()} for a, v in runs.items()},
        "summary": rows, "curves": curves,
    })
    print_table(rows, ["algorithm", "reward", "kl_final", "gold_start", "gold_max", "kl_at_max", "gold_final", "rise_cv", "drop_cv",
                       "proxy_final"],
                "Gold by optimizer and reward (final = last eval step; rise_cv / drop_cv: to and from the cross-fitted peak):")
    print(f"wrote {js}\n      {png}")


if __name__ == "__main__":
    study_main(main)
