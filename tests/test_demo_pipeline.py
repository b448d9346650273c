"""A miniature of the demo: every stage in-process on tiny sizes, then the summary and report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import compose

QUIET = ["logger=none", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def demo_dir(toy_sft_dir, tmp_path_factory):
    from rmopt.bon_pipeline import run_bon
    from rmopt.pairs import make_pairs
    from rmopt.ppo import gold as ppo_gold
    from rmopt.ppo import train as train_ppo
    from rmopt.rm import train as train_rm

    out = tmp_path_factory.mktemp("demo")
    sft = str(toy_sft_dir)
    run = lambda name: out / "logs" / name  # noqa: E731
    toy = ["experiment=toy", f"model.name_or_path={sft}"]
    make_pairs(
        compose(
            "pairs",
            [
                *toy,
                f"output_dir={out}/pairs",
                "train_size=256",
                "val_size=64",
                "label_noise=0.25",
                "max_new_tokens=16",
                "progress=false",
            ],
            output_dir=run("pairs"),
        )
    )
    for seed in (1, 2):
        train_rm(
            compose(
                "rm",
                [
                    *toy,
                    f"data.path={out}/pairs",
                    f"output_dir={out}/rm",
                    f"seed={seed}",
                    "trainer.max_steps=16",
                    "trainer.val_check_interval=16",
                    "warmup_steps=2",
                    "ensemble.bootstrap=true",
                    *QUIET,
                ],
                output_dir=run(f"rm{seed}"),
            )
        )
    rms = f'proxy_rm_path="{out}/rm_seed{{seed}}"'
    run_bon(
        compose(
            "bon",
            [
                *toy,
                rms,
                "seeds=[1,2]",
                "big_n=8",
                "num_prompts=6",
                "normalise=true",
                "generation_batch_size=16",
                "max_new_tokens=16",
                "progress=false",
                f"output_dir={out}/bon",
            ],
            output_dir=run("bon"),
        )
    )
    ppo = [
        *toy,
        rms,
        "normalise=true",
        "kl_coef=0",
        "trainer.max_steps=4",
        "eval_every=2",
        "rollout_batch_size=8",
        "minibatch_size=4",
        "ppo_epochs=1",
        "max_new_tokens=12",
        "eval_prompts=6",
        "sample_every=0",
        *QUIET,
    ]
    train_ppo(
        compose(
            "ppo",
            [*ppo, "seeds=[1]", "objective=single", f"output_dir={out}/ppo/seed1"],
            output_dir=run("p1"),
        )
    )
    for objective in ("mean", "wco", "uwo"):
        train_ppo(
            compose(
                "ppo",
                [*ppo, "seeds=[1,2]", f"objective={objective}", f"output_dir={out}/ppo/{objective}"],
                output_dir=run(f"p-{objective}"),
            )
        )
    ppo_gold(compose("ppo_gold", [f"run_dir={out}/ppo/*", f"output_dir={out}/ppo"], output_dir=run("gold")))
    # the controls: best-of-n on the same answers (here with the same members), PPO with KL coefficient 0.01
    run_bon(compose("bon", [*toy, rms, "seeds=[1,2]", "big_n=8", "num_prompts=6", "normalise=true", "progress=false",
                            f"gold_gens={out}/bon/gold_gens", f"output_dir={out}/bon_clean"], output_dir=run("bon_clean")))
    for name, seeds, objective in (("seed1", "[1]", "single"), ("wco", "[1,2]", "wco")):
        train_ppo(compose("ppo", [*ppo, f"seeds={seeds}", f"objective={objective}", "kl_coef=0.01",
                                  f"output_dir={out}/ppo_kl0.01/{name}"], output_dir=run(f"pk-{name}")))
    ppo_gold(compose("ppo_gold", [f"run_dir={out}/ppo_kl0.01/*", f"output_dir={out}/ppo_kl0.01"], output_dir=run("gold-kl")))
    return out


def test_miniature_demo_writes_a_summary_with_every_field(demo_dir):
    from experiments.report import write_report

    settings = dict(
        model="toy-tiny",
        sft_steps=150,
        pairs=256,
        rm_steps=16,
        bon_prompts=6,
        big_n=8,
        ppo_steps=4,
        label_noise=0.25,
        bootstrap=True,
        kl_coef=0.0,
        uwo_weight=0.5,
        members=[1, 2],
        minutes=0.0,
    )
    summary = write_report(demo_dir, settings)
    assert summary == json.loads((demo_dir / "summary.json").read_text())
    assert set(summary["bon"]) == {"seed1", "seed2", "mean", "wco", "uwo_0.5", "single"}
    assert set(summary["ppo"]) == {"seed1", "mean", "wco", "uwo", "single"}
    fields = {"gold_start", "gold_max", "gold_final", "drop", "proxy_start", "proxy_final"}
    for stage, x, final in (("bon", "n", 8), ("ppo", "kl", None)):
        for name, s in summary[stage].items():
            assert fields | {f"{k}_se" for k in fields} | {f"{x}_at_max", f"{x}_final"} <= set(s), name
            assert s["drop"] == pytest.approx(s["gold_max"] - s["gold_final"])
            assert all(s[f"{k}_se"] >= 0 for k in fields) and s["prompts"] == 6
            if final:
                assert s[f"{x}_final"] == final
    # the average single RM of best-of-n is the mean of the members' curves
    members = [json.loads((demo_dir / "bon" / m / "bon_sampled_results.json").read_text()) for m in ("seed1", "seed2")]
    assert summary["bon"]["single"]["gold_final"] == pytest.approx(np.mean([m[-1]["gold_score"] for m in members]))
    # each comparison is the ensemble's number minus the average single RM's
    for stage in ("bon", "ppo"):
        for name, c in summary["comparisons"][stage].items():
            for key, d in c.items():
                assert d["value"] == pytest.approx(summary[stage][name][key] - summary[stage]["single"][key])
                assert d["se"] >= 0
    # every reward starts from the same answers at n = 1 and at step 0
    assert len({round(s["gold_start"], 6) for s in summary["bon"].values()}) == 1
    assert len({round(s["gold_start"], 6) for s in summary["ppo"].values()}) == 1
    # the controls and the targets
    assert set(summary["bon_clean"]) == {"seed1", "seed2", "mean", "wco", "uwo_0.5", "single"}
    assert set(summary["ppo_kl0.01"]) == {"seed1", "wco", "single"}
    noise = summary["comparisons"]["noise"]["drop_cv"]  # the same answers and members: a paired difference of zero
    assert noise["value"] == pytest.approx(0.0) and noise["se"] == pytest.approx(0.0)
    world = summary["world"]
    assert world["oracle"]["n"] == [1, 2, 4, 8] and world["oracle"]["gold_score"][-1] >= max(
        s["gold_final"] for s in summary["bon"].values())  # nothing ranks the 8 answers better than gold itself
    targets = summary["targets"]
    assert {"sft_at_max", "bon_single_peak_n", "noise_drop_excess", "bon_wco_drop_ratio", "ppo_kl_single_drop",
            "ppo_kl_wco_drop_ratio"} <= set(targets)
    assert not targets["noise_drop_excess"]["met"]  # zero excess is not above zero
    assert targets["bon_single_peak_n"]["value"] == summary["bon"]["single"]["n_at_max"]
    report = (demo_dir / "report.md").read_text()
    assert "## The lab's targets" in report and "## Best-of-n, clean labels" in report and "## PPO, KL coefficient 0.01" in report
    assert "## Best-of-n" in report and "## PPO" in report and "WCO:" in report
    assert "95% interval" in report and "Which knobs matter" not in report and "mean +- 1.96 SE" in report
    assert "Single reward models (average of 2)" in report and "Single reward models (average of 1)" in report
    assert (demo_dir / "overoptimization.png").stat().st_size > 10_000


def test_replicate_summary_is_mean_and_se_over_replicates():
    from experiments.replicate import replicate_summary

    def rep(drop, diff):
        s = {"gold_start": 0.5, "gold_max": 0.5 + drop, "drop": drop, "drop_se": 0.01, "n_at_max": 4}
        return {"bon": {"single": s, "wco": s, "seed1": s}, "ppo": {"single": s, "wco": s},
                "comparisons": {"bon": {"wco": {k: {"value": diff, "se": 0.1} for k in ("drop_cv", "gold_final", "gold_peak_cv")}},
                                "ppo": {}}}

    out = replicate_summary([rep(0.1, -0.2), rep(0.3, -0.1), rep(0.2, 0.0)])
    assert set(out["bon"]) == {"single", "wco"}  # members differ between replicates; not aggregated
    single = out["bon"]["single"]
    assert single["drop"] == pytest.approx(0.2) and single["drop_se"] == pytest.approx(0.1 / 3**0.5)
    assert single["drop_replicates"] == [0.1, 0.3, 0.2] and "drop_se_se" not in single
    assert single["n_at_max"] == [4.0, 4.0, 4.0]  # a location is listed per replicate, not averaged
    c = out["comparisons"]["bon"]["wco"]["drop_cv"]
    assert c["value"] == pytest.approx(-0.1) and c["se"] == pytest.approx(0.1 / 3**0.5)  # SE over replicates, not prompts


def test_replicate_report_over_two_copies_of_a_demo(demo_dir, tmp_path):
    import shutil

    from experiments.replicate import write_replicate_report
    from experiments.report import write_report

    settings = dict(model="toy-tiny", sft_steps=150, pairs=256, rm_steps=16, bon_prompts=6, big_n=8, ppo_steps=4,
                    label_noise=0.25, bootstrap=True, kl_coef=0.0, uwo_weight=0.5, members=[1, 2], minutes=0.0, seed=0)
    write_report(demo_dir, settings)
    reps = [tmp_path / "rep1", tmp_path / "rep2"]
    for rep in reps:
        shutil.copytree(demo_dir, rep)
    summary = write_replicate_report(tmp_path, reps)
    one = json.loads((demo_dir / "summary.json").read_text())
    for stage in ("bon", "ppo"):
        for name, s in summary[stage].items():
            assert s["gold_final"] == pytest.approx(one[stage][name]["gold_final"]) and s["gold_final_se"] == 0.0
    assert summary["settings"]["replicates"] == 2
    report = (tmp_path / "report.md").read_text()
    assert "over the 2 replicates" in report and (tmp_path / "overoptimization.png").exists()
    assert "mean +- 12.71 SE" in report  # Student's t for 1 degree of freedom, not 1.96
    assert "average of 2" in report and "(seeds [1, 2]; [1, 2])" in report


@pytest.mark.slow  # six RL runs as console scripts: about 3 minutes (make test-full)
def test_optimizers_study_reruns_the_demos_runs_with_only_the_algorithm_changed(demo_dir, tmp_path):
    from omegaconf import OmegaConf

    from experiments.kl_penalty import load_run
    from experiments.optimizers import algorithm_overrides, train_all

    assert algorithm_overrides("rloo") == ["++algorithm.name=rloo", "++algorithm.group_size=4"]
    runs = train_all(demo_dir, tmp_path, ["ppo", "grpo"])
    assert runs["ppo"]["wco"] == demo_dir / "ppo" / "wco"  # PPO's own runs are the demo's
    assert set(runs["grpo"]) == {"single", "wco", "uwo", "warm"}
    demo_cfg = OmegaConf.load(demo_dir / "ppo" / "wco" / "rmopt_config.yaml")
    cfg = OmegaConf.load(runs["grpo"]["wco"] / "rmopt_config.yaml")
    assert cfg.algorithm.name == "grpo" and cfg.algorithm.group_size == 4
    for key in ("seeds", "objective", "kl_coef", "max_new_tokens", "rollout_batch_size", "normalise", "eval_prompts"):
        assert cfg[key] == demo_cfg[key], key  # everything else as the demo ran
    warm = OmegaConf.load(runs["grpo"]["warm"] / "rmopt_config.yaml")
    assert warm.proxy_rm_path == str(tmp_path / "warm_rm") and list(warm.seeds) == [0]
    for algorithm in ("ppo", "grpo"):
        curve = load_run(runs[algorithm]["warm"])
        assert curve["step"][0] == 0 and curve["kl"][0] == 0.0 and all(g == g for g in curve["gold_score"])  # gold-scored


def test_lanes_run_at_most_workers_at_once_in_order_and_raise_the_first_failure():
    import threading
    import time as clock

    from experiments.demo import lanes

    lock, running, peak, started = threading.Lock(), [0], [0], []

    def task(name, fail=False):
        def work():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
                started.append(name)
            clock.sleep(0.05)
            with lock:
                running[0] -= 1
            if fail:
                raise RuntimeError(name)
        return work

    lanes(*[task(i) for i in range(5)], workers=2)
    assert peak[0] == 2 and started[:2] in ([0, 1], [1, 0]) and sorted(started) == list(range(5))
    started.clear()
    with pytest.raises(RuntimeError, match="b"):
        lanes(task("a"), task("b", fail=True), task("c"), workers=2)
    assert sorted(started) == ["a", "b", "c"]  # every lane ran although one failed


def test_replicate_report_only_redraws_from_finished_folders_and_refuses_a_missing_one(demo_dir, tmp_path):
    import shutil
    import subprocess
    import sys

    from experiments.report import write_report

    settings = dict(model="toy-tiny", sft_steps=150, pairs=256, rm_steps=16, bon_prompts=6, big_n=8, ppo_steps=4,
                    label_noise=0.25, bootstrap=True, kl_coef=0.0, uwo_weight=0.5, members=[1, 2], minutes=0.0, seed=0)
    write_report(demo_dir, settings)
    for r in (1, 2):
        shutil.copytree(demo_dir, tmp_path / f"rep{r}")
    script = [sys.executable, "experiments/replicate.py", "--out", str(tmp_path), "--report-only"]
    bad = subprocess.run([*script, "--replicates", "3"], capture_output=True, text=True)
    assert bad.returncode == 1 and "rep3/summary.json" in bad.stderr and not (tmp_path / "summary.json").exists()
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    # replicates that differ in anything but their seed are refused (rep2 recorded other tasks)
    (tmp_path / "rep2" / "demo_options.json").write_text(json.dumps(
        {"quick": True, "seed": 1, "label_noise": 0.25, "bootstrap": True, "kl_coef": 0.0, "uwo_weight": 0.5,
         "controls": None, "tasks": ["list"]}))
    mixed = subprocess.run([*script, "--replicates", "2"], capture_output=True, text=True)
    assert mixed.returncode == 1 and "rep1 was run with tasks=None, rep2 with tasks=['list']" in mixed.stderr, mixed.stderr
    assert not (tmp_path / "summary.json").exists()
    (tmp_path / "rep2" / "demo_options.json").unlink()
    ok = subprocess.run([*script, "--replicates", "2"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["settings"]["replicates"] == 2
    # the whole run's minutes: written by a run, kept by a redraw of the same replicates, dropped once one is rerun
    from experiments.replicate import write_replicate_report

    reps = [tmp_path / "rep1", tmp_path / "rep2"]
    assert write_replicate_report(tmp_path, reps, minutes=12.5)["settings"]["total_minutes"] == 12.5
    assert write_replicate_report(tmp_path, reps)["settings"]["total_minutes"] == 12.5
    assert "12.5 minutes in all" in (tmp_path / "report.md").read_text()
    rerun = json.loads((reps[1] / "summary.json").read_text())
    rerun["settings"]["minutes"] = 3.0
    (reps[1] / "summary.json").write_text(json.dumps(rerun))
    assert "total_minutes" not in write_replicate_report(tmp_path, reps)["settings"]
    assert "in all" not in (tmp_path / "report.md").read_text()


def test_a_stage_that_is_not_installed_is_named_in_a_user_error():
    from experiments.demo import run
    from rmopt.errors import RmoptError

    with pytest.raises(RmoptError, match="'rmopt-no-such-stage' is not in .*make install"):
        run("rmopt-no-such-stage", "seed=1")


def test_demo_tasks_reach_every_stage_and_a_rerun_must_ask_for_the_same_options(tmp_path, monkeypatch):
    import experiments.demo as demo
    import experiments.report as report
    from rmopt.errors import RmoptError

    commands = []
    monkeypatch.setattr(demo, "run", lambda *args, **kw: commands.append(args))
    monkeypatch.setattr(report, "write_report", lambda out, settings: {"settings": settings})
    summary = demo.run_demo(tmp_path / "d", tasks=["list"])
    stages = {c[0] for c in commands}
    assert stages == {"rmopt-sft", "rmopt-pairs", "rmopt-rm", "rmopt-bon", "rmopt-ppo", "rmopt-ppo-gold"}
    for c in commands:  # gold scoring builds the toy gold, which does not depend on the tasks
        assert ("data.tasks=[list]" in c) == (c[0] != "rmopt-ppo-gold"), c
    assert summary["settings"]["tasks"] == ["list"]
    assert json.loads((tmp_path / "d" / demo.OPTIONS_FILE).read_text())["tasks"] == ["list"]

    commands.clear()
    demo.run_demo(tmp_path / "plain")  # the default world: no tasks override anywhere
    assert commands and not any(a.startswith("data.tasks") for c in commands for a in c)
    with pytest.raises(RmoptError, match=r"was run with tasks=\['list'\], now tasks=None"):
        demo.run_demo(tmp_path / "d")
    with pytest.raises(RmoptError, match="was run with seed=0, now seed=1"):
        demo.run_demo(tmp_path / "plain", seed=1)
    with pytest.raises(RmoptError, match=r"toy tasks \['lists'\]: expected"):
        demo.run_demo(tmp_path / "bad", tasks=["lists"])
    assert not (tmp_path / "bad").exists()  # no partial output
    demo.run_demo(tmp_path / "plain", tasks=demo.default_tasks())  # naming the default tasks is the default world
    commands.clear()
    demo.run_demo(tmp_path / "few", extras=False)  # make demo: the main study, its runs one process each
    outputs = sorted(a.split("/few/")[1] for c in commands if c[0] == "rmopt-ppo" for a in c if a.startswith("output_dir="))
    assert outputs == [f"ppo/{name}" for name in ("mean", "seed1", "seed2", "seed3", "uwo", "wco")]
    assert [c[0] for c in commands].count("rmopt-bon") == 1 and not any("-m" in c for c in commands if c[0] == "rmopt-ppo")
    demo.run_demo(tmp_path / "few")  # adding the controls later redoes nothing the first run made
    commands.clear()
    demo.run_demo(tmp_path / "few", extras=False)  # leaving them out later: the folder keeps them
    assert [c[0] for c in commands].count("rmopt-bon") == 2
    assert json.loads((tmp_path / "few" / demo.OPTIONS_FILE).read_text())["controls"] is True
    # a folder from before demo_options.json: its summary's settings are what it was run with
    old = tmp_path / "old"
    old.mkdir()
    (old / "summary.json").write_text(json.dumps({"settings": {"model": "toy-small", "seed": 2, "label_noise": 0.25,
                                                               "bootstrap": True, "kl_coef": 0.0, "uwo_weight": 0.5,
                                                               "bon_clean": True}}))
    with pytest.raises(RmoptError, match="was run with seed=2, now seed=0"):
        demo.run_demo(old)
    demo.run_demo(old, seed=2)
    (old / demo.OPTIONS_FILE).write_text('{"seed": 2')  # cut short
    with pytest.raises(RmoptError, match="is not valid JSON"):
        demo.run_demo(old, seed=2)
