"""Study: issue 17's best-of-n targets with ensembles of log-probability proxies instead of the demo's reward models.

experiments/logprob_proxy.py found that one proxy started from the SFT policy's own mean answer log-probability
(``logprob+head``: that score plus a zero-started head, the whole model trained with the pairwise loss) ranks
held-out pairs far better than the demo's members and rises to n >= 16 in best-of-n. This study asks whether
such proxies also show the rest of the paper's best-of-n picture: a fall caused by label noise, and WCO and UWO
mitigating it. It changes one thing from the demo: the proxies. Everything else is read from the demo folder:

- the members: the demo's member seeds, each ``logprob+head`` trained on the demo's training pairs (with the
  demo's bootstrap resample of that seed, as ``rmopt-rm`` draws it, when the demo's members were bootstrapped);
- two label sets on the same pairs: the demo's noisy preferences (``bon``) and the gold's own (``bon_clean``;
  the pairs have no gold ties), as the demo's ``bon_clean/`` control has;
- each member standardised by its scores on the held-out pairs' answers (as the demo's reward_stats.json
  standardises its members), mean / WCO / UWO (the demo's uwo_weight) over them, best-of-n on the demo's answers;
- the targets measured by experiments/targets.py's own code on these curves, beside the demo's values.

Training length and learning rate are this proxy's (``--steps``, ``--lr``: the probe's 300 and 1e-4; ``--lr 1e-3``,
the demo's members' rate, moves the proxies part of the way back toward the members: docs/calibration.md). Members train in parallel processes ($RMOPT_JOBS, default 2).

Run:  python experiments/logprob_ensembles.py --demo runs/demo [--steps 300] [--lr 1e-4] [--members 1,2,3]
Writes <demo>/studies/logprob_ensembles/{logprob_ensembles.json, logprob_ensembles.png, scores.npz}.

Over replicates (demo folders with independent seeds, e.g. ``experiments/demo.py --seed 1 --no-controls --out
runs/demo-seed1``, each with this study run on it with the same options):
      python experiments/logprob_ensembles.py --over runs/demo runs/demo-seed1 runs/demo-seed2 --out runs/logprob-replicates
(each --over folder a demo folder with the study in its default place, or a study's own --out folder) trains
nothing; writes <out>/{over_replicates.json, over_replicates.png}: each target's mean, its SE over the K
replicates and each replicate's value, judged on +-t SE (Student's t, K - 1 degrees of freedom), as
experiments/replicate.py judges the demo's targets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import parse_args, study_main, write_json  # noqa: E402

STUDY = "logprob_ensembles"
LABELS = {"bon": "the demo's noisy labels", "bon_clean": "clean labels (the gold's preference)"}


def clean_preference(gold_scores) -> list[int]:
    """Index of the answer the gold prefers in each pair; a tie is refused (the pairs drop them)."""
    out = []
    for i, (a, b) in enumerate(gold_scores):
        if a == b:
            from rmopt.errors import RmoptError

            raise RmoptError(f"pair {i} has a gold tie ({a}, {b}); expected pairs without ties, as rmopt-pairs writes them")
        out.append(int(b > a))
    return out


def member_pool(n: int, seed: int, bootstrap: bool) -> np.ndarray:
    """The training pair indices of member ``seed``: its bootstrap resample (each index repeated as often as
    ``rmopt.data.preference.bootstrap_counts`` draws it for that seed), else every pair once."""
    from rmopt.data.preference import bootstrap_counts

    counts = bootstrap_counts(n, 1, seed)[:, 0] if bootstrap else np.ones(n, dtype=np.int64)
    return np.repeat(np.arange(n), counts)


def standardise(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``scores`` in units of the reference scores' spread around their mean (population std, as reward_stats.json)."""
    return (scores - reference.mean()) / max(float(reference.std()), 1e-6)


def train_members(demo: str, labels: str, seeds: list[int], steps: int, lr: float, bootstrap: bool) -> dict:
    """One process's work: ``logprob+head`` members trained on the demo's pairs with ``labels``, scored on the
    best-of-n answers and the held-out answers. {seed: {"bon": [P, N], "held_out": [2V], "accuracy", "accuracy_se"}}."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from experiments.common import load_bon_store
    from experiments.logprob_proxy import Proxy, _accuracy, _encode, train
    from rmopt.data.gold_gens import gold_gens_dataset

    torch.set_num_threads(1)
    demo = Path(demo)
    tok = AutoTokenizer.from_pretrained(demo / "models/sft")
    store = load_bon_store(demo / "bon")
    gens = gold_gens_dataset(str(demo / "bon/gold_gens")).select(range(store.gold.shape[0]))
    g_prompts, g_answers = _encode(tok, gens["instruction"], gens["input"], [a[: store.gold.shape[1]] for a in gens["answers"]])
    pairs = datasets.load_from_disk(str(demo / "data/pairs"))
    tr, va = pairs["train"], pairs["validation"]
    t_prompts, t_answers = _encode(tok, tr["instruction"], tr["input"], tr["answers"])
    v_prompts, v_answers = _encode(tok, va["instruction"], va["input"], va["answers"])
    h_prompts = [p for p in v_prompts for _ in range(2)]  # both answers of each held-out pair
    h_answers = [x for pair in v_answers for x in pair]
    preference = tr["preference"] if labels == "bon" else clean_preference(tr["gold_scores"])
    out = {}
    for seed in seeds:
        torch.manual_seed(seed)
        proxy = Proxy(AutoModelForCausalLM.from_pretrained(demo / "models/sft").eval(), "logprob+head", tok.pad_token_id, seed)
        train(proxy, t_prompts, t_answers, preference, steps, lr, seed, pool=member_pool(len(t_prompts), seed, bootstrap))
        acc, acc_se = _accuracy(proxy, v_prompts, v_answers, va["gold_scores"])
        with torch.no_grad():
            bon = np.stack([proxy([p] * len(a), a).numpy() for p, a in zip(g_prompts, g_answers, strict=True)])
            held = np.concatenate([proxy(h_prompts[i : i + 256], h_answers[i : i + 256]).numpy()
                                   for i in range(0, len(h_prompts), 256)])
        out[seed] = {"bon": bon, "held_out": held, "accuracy": acc, "accuracy_se": acc_se}
        print(f"{labels} member {seed}: held-out accuracy {acc:.3f}", flush=True)
    return out


def curves_of(scores: np.ndarray, gold: np.ndarray, ns, seeds, uwo_weight: float) -> dict:
    """A best-of-n folder's curves from standardised member scores [k, P, N]: seed<s>, their average ``single``,
    mean, wco and uwo_<weight>, as experiments/report.py's demo_curves reads them from ``rmopt-bon``."""
    from experiments.common import mean_curve, objective_curve
    from experiments.report import SINGLE

    curves = {f"seed{s}": objective_curve(m, gold, ns, "single") for s, m in zip(seeds, scores, strict=True)}
    curves[SINGLE] = mean_curve(list(curves.values()))
    curves["mean"] = objective_curve(scores, gold, ns, "mean")
    curves["wco"] = objective_curve(scores, gold, ns, "wco")
    curves[f"uwo_{uwo_weight:g}"] = objective_curve(scores, gold, ns, "uwo", uwo_weight)
    return curves


STUDY_KEYS = ("steps", "lr", "bootstrap", "uwo_weight")  # what the pooled runs must share (their member seeds are the demos', independent)


def pool_replicates(studies: list[dict]) -> tuple[dict, dict]:
    """The targets over replicates (experiments/targets.py's over_replicates, judged at Student's t for K - 1
    degrees of freedom) and the curves averaged over them, with their SEs over replicates, from each replicate's
    logprob_ensembles.json; replicates whose study settings differ are refused."""
    from experiments.targets import over_replicates, with_verdicts
    from rmopt.errors import RmoptError
    from rmopt.stats import standard_error, t95

    first = {k: studies[0]["settings"][k] for k in STUDY_KEYS}
    for study in studies[1:]:
        other = {k: study["settings"].get(k) for k in STUDY_KEYS}
        if other != first:
            raise RmoptError(f"{study['settings']['demo']!r} ran the study with {other}; expected the first's {first}")
    targets = with_verdicts(over_replicates([s["targets"] for s in studies]), t95(len(studies) - 1))
    curves = {}
    for stage, by_name in studies[0]["curves"].items():
        curves[stage] = {}
        for name, c in by_name.items():
            if not all(name in s["curves"][stage] for s in studies):  # a member of one replicate only (its own seeds)
                continue
            gold = np.array([s["curves"][stage][name]["gold_score"] for s in studies])
            curves[stage][name] = {"n": c["n"], "kl_bon": c["kl_bon"], "gold_score": gold.mean(0).tolist(),
                                   "gold_score_se": standard_error(gold).tolist()}
    return targets, curves


def main_over(paths: list[str], out: Path) -> None:
    import json

    from experiments.common import resolve
    from experiments.report import headline_figure
    from experiments.targets import table
    from rmopt.errors import RmoptError
    from rmopt.stats import t95

    def study_file(path: str) -> Path:  # a study's output folder (another --out), else a demo folder's default one
        own = resolve(path) / f"{STUDY}.json"
        return own if own.exists() else resolve(path) / "studies" / STUDY / f"{STUDY}.json"

    files = [study_file(p) for p in paths]
    for f in files:
        if not f.exists():
            raise RmoptError(f"{str(f)!r} is missing; expected each --over folder to be this study's output folder "
                             "or a demo folder with the study run on it")
    if len(files) < 2:
        raise RmoptError(f"--over {' '.join(paths)}: expected two or more demo folders (replicates)")
    studies = [json.loads(f.read_text()) for f in files]
    targets, curves = pool_replicates(studies)
    oracle = np.array([s["summary"]["world"]["oracle"]["gold_score"] for s in studies]).mean(0)
    z = t95(len(studies) - 1)
    print(f"over K = {len(studies)} replicates (+- {z:.2f} SE over replicates):")
    print(table(targets, z))
    write_json(out / "over_replicates.json", {"settings": {k: studies[0]["settings"][k] for k in STUDY_KEYS},
                                              "replicates": [s["settings"]["demo"] for s in studies],
                                              "targets": targets, "curves": curves})
    headline_figure(curves, out / "over_replicates.png", f"log-probability proxies, mean of {len(studies)} replicates "
                    f"(95% bands over replicates)", z=z, oracle={"kl_bon": studies[0]["curves"]["bon"]["single"]["kl_bon"],
                                                               "gold_score": oracle.tolist()})
    print(f"wrote {out / 'over_replicates.json'} and {out / 'over_replicates.png'}")


def main() -> None:
    import json
    from concurrent.futures import ProcessPoolExecutor

    from experiments.common import demo_settings, load_bon_store, resolve
    from experiments.cores import default_cores
    from experiments.report import headline_figure, summarise_demo
    from experiments.targets import measure, table, with_verdicts, world_stats
    from rmopt.errors import RmoptError
    from rmopt.stats import Z95

    def extra(parser):
        parser.add_argument("--steps", type=int, default=300, help="training steps of each member (default 300)")
        parser.add_argument("--lr", type=float, default=1e-4, help="their learning rate (default 1e-4)")
        parser.add_argument("--members", default=None, help="member seeds, comma-separated (default: the demo's)")
        parser.add_argument("--over", nargs="+", default=None, metavar="DEMO",
                            help="pool this study's results over these demo (or study output) folders, replicates; trains nothing")

    args = parse_args(__doc__, STUDY, extra, demo_unless="over")
    if args.over is not None:
        return main_over(args.over, args.out)
    if args.steps < 1 or not args.lr > 0:
        raise RmoptError(f"--steps {args.steps} --lr {args.lr}: expected at least one step and a positive learning rate")
    demo = resolve(args.demo)
    for need in (demo / "models/sft", demo / "data/pairs", demo / "bon/gold_gens"):
        if not need.exists():
            raise RmoptError(f"{str(need)!r} is missing; expected a finished demo folder (experiments/demo.py writes it)")
    settings = demo_settings(demo)
    seeds = [int(s) for s in settings["members"]]
    if args.members is not None:
        try:
            seeds = [int(s) for s in args.members.split(",")]
        except ValueError:
            seeds = []
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise RmoptError(f"--members {args.members!r}: expected two or more distinct integer seeds, e.g. 1,2,3")
    bootstrap, uwo_weight = bool(settings["bootstrap"]), float(settings["uwo_weight"])
    store = load_bon_store(demo / "bon")

    jobs = [(labels, seeds[i::2]) for labels in LABELS for i in range(2)]  # two lanes a label set
    with ProcessPoolExecutor(max(1, min(default_cores(), len(jobs)))) as pool:
        done = [pool.submit(train_members, str(demo), labels, part, args.steps, args.lr, bootstrap) for labels, part in jobs]
        results = {labels: {} for labels in LABELS}
        for (labels, _), future in zip(jobs, done, strict=True):
            results[labels].update(future.result())

    curves, members, raw = {}, {}, {}
    for labels, by_seed in results.items():
        raw[labels] = np.stack([by_seed[s]["bon"] for s in seeds])
        z = np.stack([standardise(by_seed[s]["bon"], by_seed[s]["held_out"]) for s in seeds])
        curves[labels] = curves_of(z, store.gold, store.ns, seeds, uwo_weight)
        members[labels] = {f"seed{s}": {"accuracy": by_seed[s]["accuracy"], "accuracy_se": by_seed[s]["accuracy_se"]} for s in seeds}
    summary = summarise_demo(curves)
    summary["world"] = world_stats(demo / "bon", store.ns)
    targets = with_verdicts(measure(summary, curves), Z95)
    demo_targets = json.loads((demo / "summary.json").read_text()).get("targets", {})

    out = args.out
    print(f"\nbest-of-n over {store.gold.shape[0]} prompts x {store.gold.shape[1]} answers; members {seeds}; "
          f"held-out accuracy (noisy / clean labels): "
          + ", ".join(f"{members['bon'][k]['accuracy']:.3f} / {members['bon_clean'][k]['accuracy']:.3f}" for k in members["bon"]))
    print(table(targets, Z95))
    for k, t in targets.items():
        if k in demo_targets:
            print(f"  {k}: the demo's reward models {demo_targets[k]['value']:.3f}, these proxies {t['value']:.3f}")
    study = {"steps": args.steps, "lr": args.lr, "members": seeds, "bootstrap": bootstrap, "uwo_weight": uwo_weight,
             "demo": str(demo)}
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "scores.npz", **{labels: raw[labels] for labels in raw})
    write_json(out / f"{STUDY}.json", {"settings": study, "members": members, "targets": targets,
                                       "demo_targets": {k: demo_targets[k] for k in targets if k in demo_targets},
                                       "summary": summary, "curves": curves})
    headline_figure(curves, out / f"{STUDY}.png", f"log-probability proxies on {demo.name}'s answers ({len(seeds)} members, "
                    f"95% bands over prompts)", oracle=summary["world"]["oracle"])
    print(f"wrote {out / (STUDY + '.json')}, {out / (STUDY + '.png')} and {out / 'scores.npz'}")


if __name__ == "__main__":
    study_main(main)
