"""The overoptimization lab on the graded toy world: `make demo` and `make demo-quick`.

Runs every stage as the console script a user would type, so the demo doubles as a walk-through of
the CLI, then writes `<out>/summary.json` and `<out>/report.md` with the figures:

1. SFT policy (also the reward models' base)       rmopt-sft
2. gold-labelled preference pairs (25% noise; and clean) rmopt-pairs
3. a 5-seed reward-model ensemble on each            rmopt-rm -m seed=1,2,3,4,5 hydra/launcher=joblib
4. best-of-n for every member, mean, WCO and UWO     rmopt-bon  (bon/, and bon_clean/ on the same answers)
5. PPO with single RMs and with mean/WCO/UWO         rmopt-ppo ...  (ppo/ and ppo_kl0.01/)
6. gold evaluation of the PPO runs                   rmopt-ppo-gold

Independent stages run side by side, one CPU core each; `--no-controls` skips the clean-label and
KL-penalty controls. README says how long it takes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from experiments.cores import Stopped, cores, cores_needed, default_cores, shared_cores, stop_shared  # noqa: E402
from rmopt.errors import ArgumentParser, RmoptError  # noqa: E402
from rmopt.utils import atomic_write_text  # noqa: E402

SETTINGS = {
    # quick: a tiny world to see every stage work (a few minutes)
    "quick": dict(
        model="toy-tiny", sft_steps=400, pairs=1500, rm_steps=150, bon_prompts=40, big_n=128,
        ppo_steps=40, ppo_eval_every=10, ppo_singles=[1], rollout=32, ppo_lr=1e-4, eval_prompts=100, eval_samples=2,
    ),
    # full: the demo the report describes (docs/calibration.md says why these values)
    "full": dict(
        model="toy-small", sft_steps=1500, pairs=4000, rm_steps=300, bon_prompts=100, big_n=256,
        ppo_steps=50, ppo_eval_every=10, ppo_singles=[1, 2, 3], rollout=64, ppo_lr=5e-5,
        # 3000 held-out prompts x 1 answer: gold's standard error over prompts at most 0.01 at each evaluation (1000
        # gave 0.014 on average, 0.0155 at most; half of gold's variance is between prompts, so more answers per
        # prompt would buy less than more prompts). The val split's rows are independent draws of its prompts.
        eval_prompts=3000, eval_samples=1,
    ),
}
# Held-out prompts: best-of-n and PPO evaluate on the toy world's val split, the reward models' held-out pairs
# (and so their reward_stats.json) come from rm_val; neither shares a prompt with any other split.
RM_VAL_SPLIT = "rm_val"
MEMBERS = 5


def run(*args: str, log=None, jobs: int | None = None) -> None:
    """Run one console script, echoing the command as a user would type it; ``jobs``: a sweep's concurrent
    jobs. Under ``share_cores`` (experiments/cores.py) it first waits for its cores: a sweep's jobs, else one."""
    shown = " ".join(a if " " not in a and "{" not in a else repr(a) for a in args)
    jobs = os.environ.get("RMOPT_JOBS", "2") if jobs is None else str(jobs)
    if not (BIN / args[0]).exists():
        raise RmoptError(f"console script {args[0]!r} is not in {BIN}; expected the project installed there "
                         "(make install, or pip install -e . after pulling new stages)")
    need = cores_needed(args, jobs)
    with cores(need) as held:
        if held is not None and need > 1:
            jobs = str(held)  # a sweep runs on the cores it holds
        print(f"\n$ {shown}", flush=True)
        start = time.time()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RMOPT_JOBS": jobs}
        try:
            subprocess.run([str(BIN / args[0]), *args[1:]], check=True, cwd=ROOT, env=env, stdout=log, stderr=log)
        except BaseException:
            stop_shared()  # pipelines sharing the cores start no further stage
            raise
    print(f"  done in {time.time() - start:.0f} s  ({args[0]} {args[1] if len(args) > 1 else ''} ...)", flush=True)


def lanes(*work, workers: int | None = None) -> None:
    """Run the lanes (functions of no arguments, each running its stages in order) ``workers`` at a time
    (default: $RMOPT_JOBS, else 2), one CPU core each, the next starting as soon as one ends, in the order
    given; once every lane has stopped, the first failure is raised (one that is not another's ``Stopped``)."""
    from concurrent.futures import ThreadPoolExecutor

    workers = default_cores() if workers is None else workers
    errors = []
    with ThreadPoolExecutor(min(workers, len(work))) as pool:  # each lane shares its caller's cores (share_cores)
        for future in [pool.submit(contextvars.copy_context().run, w) for w in work]:
            try:
                future.result()
            except BaseException as error:  # noqa: BLE001 - raised below, once every lane has stopped
                errors.append(error)
    if errors:
        raise next((e for e in errors if not isinstance(e, Stopped)), errors[0])


_REPORT_LOCK = threading.Lock()  # one report at a time in this process (pyplot's figures are not thread-safe)


def toy_args(s: dict) -> list[str]:
    """The overrides every stage gets: the toy experiment, the demo's model size and, if chosen, its tasks."""
    tasks = [f"data.tasks=[{','.join(s['tasks'])}]"] if s.get("tasks") else []
    return ["experiment=toy", f"model={s['model']}", *tasks]


OPTIONS_FILE = "demo_options.json"


def recorded_options(out: Path) -> dict | None:
    """The options a demo folder was run with: its demo_options.json, else (a folder from before that file)
    what its summary.json's settings say; None for a folder no demo has finished or started."""
    path = out / OPTIONS_FILE
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise RmoptError(f"{path} is not valid JSON ({e}); expected the options a demo recorded there") from None
    summary = out / "summary.json"
    if not summary.exists():
        return None
    st = json.loads(summary.read_text()).get("settings", {})
    return {"quick": st.get("model") == SETTINGS["quick"]["model"], "seed": st.get("seed"), "label_noise": st.get("label_noise"),
            "bootstrap": st.get("bootstrap"), "kl_coef": st.get("kl_coef"), "uwo_weight": st.get("uwo_weight"),
            "controls": st.get("bon_clean"), "tasks": st.get("tasks")}


def differing_option(before: dict, now: dict, ignore=(), controls_either_way: bool = True) -> tuple | None:
    """The first option on which two demo runs differ, as (key, before's value, now's value); None if they agree.
    ``controls_either_way``: a rerun with or without the controls is no difference: adding them runs only the
    controls, and leaving them out of a run that has them runs nothing (the folder keeps them)."""
    for key, value in now.items():
        was = before.get(key)
        if key in ignore or was == value or (controls_either_way and key == "controls" and {was, value} == {False, True}):
            continue
        return key, was, value
    return None


def check_options(out: Path, options: dict) -> dict:
    """A rerun into ``out`` skips the stages already done, so it must ask for what the first run did:
    refuse other options (one line naming the first that differs), else record them in out/demo_options.json
    and return them (with the controls if either run has them)."""
    before = recorded_options(out)
    diff = None if before is None else differing_option(before, options)
    if diff:
        key, was, value = diff
        raise RmoptError(f"{out} was run with {key}={was!r}, now {key}={value!r}: its finished stages would mix the two; "
                         "expected the same options, or another --out")
    options = {**options, "controls": bool(options["controls"] or (before or {}).get("controls"))}
    atomic_write_text(out / OPTIONS_FILE, json.dumps(options, indent=1) + "\n")
    return options


def default_tasks() -> list[str]:
    """The toy world's default task kinds (conf/data/toy.yaml)."""
    from omegaconf import OmegaConf

    return list(OmegaConf.load(ROOT / "conf/data/toy.yaml").tasks)


def member_seeds(seed: int) -> list[int]:
    """The reward models' seeds of a demo run with ``seed``: 1..5 for seed 0, 6..10 for seed 1, ..."""
    return [MEMBERS * seed + i for i in range(1, MEMBERS + 1)]


def reward_models(s: dict, out: Path, sft: Path, noise: float, bootstrap: bool, members, log=None, seed: int = 0,
                  suffix: str = "", jobs: int | None = None) -> Path:
    """Gold-labelled pairs at label noise ``noise`` (out/data/pairs<suffix>) and a reward-model sweep over
    ``members``: out/models/rm<suffix>_seed*."""
    toy = toy_args(s)
    pairs, rm = out / f"data/pairs{suffix}", out / f"models/rm{suffix}"
    run(
        "rmopt-pairs", *toy, f"model.name_or_path={sft}", f"output_dir={pairs}", f"label_noise={noise}",
        "train_split=preference", f"data.sizes.preference={s['pairs']}", f"val_split={RM_VAL_SPLIT}",
        f"seed={seed}", f"hydra.run.dir={out}/logs/pairs{suffix}", log=log,
    )
    run(
        "rmopt-rm", "-m", *toy, f"model.name_or_path={sft}", f"data.path={pairs}", f"output_dir={rm}",
        "seed=" + ",".join(map(str, members)), f"ensemble.bootstrap={str(bootstrap).lower()}",
        f"trainer.max_steps={s['rm_steps']}", "trainer.val_check_interval=50", "hydra/launcher=joblib",
        f"hydra.sweep.dir={out}/logs/rm{suffix}", log=log, jobs=jobs,
    )
    return rm


def best_of_n(s: dict, out: Path, sft: Path, rm: Path, members, uwo_weight: float, gold_gens: Path | None = None,
              log=None, seed: int = 0, normalise: bool = True, folder: str = "bon") -> Path:
    """Best-of-n for every member and ensemble into out/<folder>; answers sampled from ``sft`` unless ``gold_gens`` is given."""
    answers = [f"gold_gens={gold_gens}"] if gold_gens else [f"model.name_or_path={sft}"]
    run(
        "rmopt-bon", *toy_args(s), *answers, f'proxy_rm_path="{rm}_seed{{seed}}"',
        "seeds=[" + ",".join(map(str, members)) + "]", "ensembles=true", f"big_n={s['big_n']}",
        f"num_prompts={s['bon_prompts']}", f"normalise={str(normalise).lower()}", f"uwo_weights=[{uwo_weight}]",
        f"seed={seed}", f"output_dir={out}/{folder}", f"hydra.run.dir={out}/logs/{folder}", log=log,
    )
    return out / folder


def add_tasks_option(parser) -> None:
    parser.add_argument("--tasks", type=lambda v: [t for t in v.split(",") if t], default=None,
                        help="comma list of the toy world's task kinds for every stage, e.g. list "
                             "(default: the world's, list,count; docs/calibration.md)")


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models, few steps (a few minutes)")
    parser.add_argument("--out", default=None, help="output folder (default runs/demo or runs/demo-quick)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds everything random (SFT, pairs, members 5*seed+1..5*seed+5, sampling, PPO); "
                             "the toy world itself stays the same")
    parser.add_argument("--label-noise", type=float, default=0.25, help="fraction of wrong preference labels (paper: 0.25)")
    parser.add_argument("--no-bootstrap", action="store_true", help="members share their data (the paper's setup)")
    parser.add_argument("--kl-coef", type=float, default=0.0, help="PPO's fixed KL coefficient (paper: 0 or 0.01)")
    parser.add_argument("--uwo-weight", type=float, default=0.5, help="lambda of UWO (on standardised member scores)")
    parser.add_argument("--no-controls", action="store_true",
                        help="skip bon_clean/ (clean-label members) and ppo_kl0.01/ (PPO with KL coefficient 0.01)")
    add_tasks_option(parser)
    parser.add_argument("--verbose", action="store_true", help="show each stage's own output")
    args = parser.parse_args()
    if not 0.0 <= args.label_noise <= 1.0:  # checked here too, before the options are recorded
        parser.error(f"--label-noise {args.label_noise}: expected a fraction in [0, 1]")
    out = Path(args.out or ("runs/demo-quick" if args.quick else "runs/demo"))
    summary = run_demo(out if out.is_absolute() else ROOT / out, args.quick, args.seed, args.label_noise,
                       not args.no_bootstrap, args.kl_coef, args.uwo_weight, args.verbose,
                       extras=not args.no_controls, tasks=args.tasks)
    print(json.dumps({k: {n: round(v['drop'], 3) for n, v in d.items()} for k, d in summary.items() if k in ("bon", "ppo")}, indent=1))


def run_demo(out: Path, quick: bool = False, seed: int = 0, label_noise: float = 0.25, bootstrap: bool = True,
             kl_coef: float = 0.0, uwo_weight: float = 0.5, verbose: bool = False, extras: bool = True,
             tasks: list[str] | None = None) -> dict:
    """The whole pipeline into ``out``; returns the summary (also ``out/summary.json``, ``out/report.md``).

    ``extras``: also ``bon_clean/`` (members trained on the same prompts with label noise 0, best-of-n on
    the same answers) and ``ppo_kl0.01/`` (the PPO runs with KL coefficient 0.01), the controls that
    say whether label noise causes the fall and whether a small KL penalty with an ensemble prevents it.
    ``tasks``: the toy world's task kinds for every stage (``data.tasks``; default: the world's default).
    Independent stages run side by side, one CPU core each.
    """
    from experiments.report import KL_EXTRA
    from rmopt.bon_pipeline import GENS_DIR

    s = SETTINGS["quick" if quick else "full"]
    if tasks and list(tasks) != default_tasks():  # naming the default tasks is the default world
        from rmopt.toy.graded import check_tasks

        s = {**s, "tasks": list(check_tasks(tasks))}
    out.mkdir(parents=True, exist_ok=True)
    options = check_options(out, {"quick": quick, "seed": seed, "label_noise": label_noise, "bootstrap": bootstrap,
                                  "kl_coef": kl_coef, "uwo_weight": uwo_weight, "controls": extras, "tasks": s.get("tasks")})
    extras = options["controls"]  # a folder that has the controls keeps them in its report
    log = None if verbose else open(out / "demo.log", "a")
    if log:
        print(f"stage output goes to {out / 'demo.log'}")
    sft, rm, rm_clean = out / "models/sft", out / "models/rm", out / "models/rm_clean"
    members = member_seeds(seed)
    seeds = "[" + ",".join(map(str, members)) + "]"
    toy = toy_args(s)
    start = time.time()

    run("rmopt-sft", *toy, f"output_dir={sft}", f"trainer.max_steps={s['sft_steps']}", f"seed={seed}",
        f"hydra.run.dir={out}/logs/sft", log=log)
    if extras:
        lanes(lambda: reward_models(s, out, sft, label_noise, bootstrap, members, log=log, seed=seed, jobs=1),
              lambda: reward_models(s, out, sft, 0.0, bootstrap, members, log=log, seed=seed, suffix="_clean", jobs=1))
    else:
        reward_models(s, out, sft, label_noise, bootstrap, members, log=log, seed=seed)

    def ppo_common(kl: float) -> list[str]:
        return [
            *toy, f"model.name_or_path={sft}", f'proxy_rm_path="{rm}_seed{{seed}}"', f"kl_coef={kl}", "normalise=true",
            f"seed={seed}", f"trainer.max_steps={s['ppo_steps']}", f"eval_every={s['ppo_eval_every']}",
            f"rollout_batch_size={s['rollout']}", f"optimizer.lr={s['ppo_lr']}", f"eval_prompts={s['eval_prompts']}",
            f"eval_samples={s['eval_samples']}", "logger=csv",
        ]

    def ppo_runs(folder: str, kl: float, which: str) -> list:
        """A folder's single-RM or ensemble PPO runs, one process each, so that they can fill free cores."""
        if which == "single":
            runs = [(f"seed{members[i - 1]}", [f"seeds=[{members[i - 1]}]", "objective=single"]) for i in s["ppo_singles"]]
        else:
            runs = [(name, [f"seeds={seeds}", f"objective={name}", f"++objective.weight={uwo_weight}"])
                    for name in ("mean", "wco", "uwo")]
        return [
            lambda name=name, args=args: run("rmopt-ppo", *ppo_common(kl), *args, f"output_dir={out}/{folder}/{name}",
                                             f"hydra.run.dir={out}/logs/{folder}-{name}", log=log)
            for name, args in runs
        ]

    def gold(folder: str) -> None:
        run("rmopt-ppo-gold", f"run_dir={out}/{folder}/*", f"output_dir={out}/{folder}", f"hydra.run.dir={out}/logs/{folder}-gold", log=log)

    kl_folder = f"ppo_kl{KL_EXTRA}"
    if extras:
        def bon_lane():
            best_of_n(s, out, sft, rm, members, uwo_weight, log=log, seed=seed)
            best_of_n(s, out, sft, rm_clean, members, uwo_weight, gold_gens=out / "bon" / GENS_DIR, log=log, seed=seed,
                      folder="bon_clean")

        # longest first, so that the two lanes end together: best-of-n (about 6 min), the ensembles' runs
        # (5 members score every answer: about 3 min each), then the single RMs' (about 2 min each)
        lanes(bon_lane, *ppo_runs("ppo", kl_coef, "ensemble"), *ppo_runs(kl_folder, KL_EXTRA, "ensemble"),
              *ppo_runs("ppo", kl_coef, "single"), *ppo_runs(kl_folder, KL_EXTRA, "single"))
        lanes(lambda: gold("ppo"), lambda: gold(kl_folder))
    else:
        lanes(lambda: best_of_n(s, out, sft, rm, members, uwo_weight, log=log, seed=seed),
              *ppo_runs("ppo", kl_coef, "ensemble"), *ppo_runs("ppo", kl_coef, "single"))
        gold("ppo")

    from experiments.report import write_report

    settings = {**s, "seed": seed, "label_noise": label_noise, "bootstrap": bootstrap, "kl_coef": kl_coef,
                "uwo_weight": uwo_weight, "normalise": True, "members": members, "rm_val_split": RM_VAL_SPLIT,
                "bon_clean": extras, "ppo_kl": KL_EXTRA if extras else None,
                "minutes": round((time.time() - start) / 60, 1), "shared_cores": shared_cores()}
    with _REPORT_LOCK:
        summary = write_report(out, settings)
    print(f"\nsummary: {out / 'summary.json'}\nreport:  {out / 'report.md'}  ({settings['minutes']} min)")
    return summary


if __name__ == "__main__":
    from experiments.common import study_main

    study_main(main)
