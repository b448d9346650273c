"""The cheap studies (experiments/) on synthetic scores: hand-computed best-of-n picks, a fake store, fits."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import load_bon_store, mean_curve, objective_curve  # noqa: E402
from experiments.ensemble_size import ensemble_size_curves, summarise  # noqa: E402
from experiments.label_noise import compare_curves  # noqa: E402
from experiments.scaling_laws import fit_all  # noqa: E402
from experiments.uwo_weight import uwo_weight_curves  # noqa: E402
from rmopt.bon import kl_bon  # noqa: E402
from rmopt.scaling import bon_form, kl_to_d, rl_form  # noqa: E402

# One prompt, two answers with gold 0 and 1. Member a prefers answer 0 strongly, member b answer 1 mildly:
#   mean [0.5, 0.4] -> answer 0;  min [-1, 0.3] -> answer 1;
#   uwo(lambda) = mean - lambda * var, var = [2.25, 0.01] -> answer 1 for lambda >= 0.05, answer 0 at lambda 0.
GOLD = np.array([[0.0, 1.0]])
MEMBERS = np.array([[[2.0, 0.3]], [[-1.0, 0.5]]])  # [k=2, P=1, N=2]
NS = [1, 2]


def gold_at(curve, n):
    return curve["gold_score"][curve["n"].index(n)]


def test_objective_curves_by_hand():
    assert gold_at(objective_curve(MEMBERS, GOLD, NS, "mean"), 2) == 0.0
    assert gold_at(objective_curve(MEMBERS, GOLD, NS, "wco"), 2) == 1.0
    assert gold_at(objective_curve(MEMBERS, GOLD, NS, "uwo", 0.5), 2) == 1.0
    for name in ("mean", "wco"):
        assert gold_at(objective_curve(MEMBERS, GOLD, NS, name), 1) == 0.5  # n = 1: a random answer


def test_ensemble_size_by_hand():
    curves = ensemble_size_curves(MEMBERS, GOLD, NS, uwo_weight=0.5)
    assert {o: gold_at(c[1], 2) for o, c in curves.items()} == {"mean": 0.0, "wco": 0.0, "uwo": 0.0}  # member a alone
    assert {o: gold_at(c[2], 2) for o, c in curves.items()} == {"mean": 0.0, "wco": 1.0, "uwo": 1.0}
    rows = summarise(curves)
    assert len(rows) == 6 and {r["k"] for r in rows} == {1, 2}


def test_ensemble_of_identical_members_is_the_single_member():
    rng = np.random.default_rng(0)
    member = rng.normal(size=(6, 32)).astype(np.float32)
    gold = rng.normal(size=(6, 32)).astype(np.float32)
    ns = [1, 2, 4, 8, 32]
    single = objective_curve(member, gold, ns, "single")
    curves = ensemble_size_curves(np.stack([member] * 4), gold, ns, uwo_weight=2.0)
    for by_k in curves.values():
        for curve in by_k.values():
            np.testing.assert_allclose(curve["gold_score"], single["gold_score"], rtol=0, atol=1e-12)
            np.testing.assert_allclose(curve["proxy_score"], single["proxy_score"], rtol=0, atol=1e-6)


def test_uwo_weight_sweep_by_hand():
    curves = uwo_weight_curves(MEMBERS, GOLD, NS, weights=[0.0, 0.01, 1.0])
    assert gold_at(curves[0.0], 2) == 0.0  # lambda 0 is the mean
    assert gold_at(curves[0.01], 2) == 0.0  # 0.5 - 0.0225 > 0.4 - 0.0001: still answer 0
    assert gold_at(curves[1.0], 2) == 1.0
    assert gold_at(curves["wco"], 2) == 1.0
    assert gold_at(curves["single"], 2) == 0.5  # a picks gold 0, b picks gold 1
    np.testing.assert_equal(curves[0.0], objective_curve(MEMBERS, GOLD, NS, "mean"))  # NaN SEs (one prompt) equal


def test_label_noise_compare_curves_by_hand():
    c = compare_curves(MEMBERS, GOLD, NS, uwo_weight=0.5)
    assert {k: gold_at(v, 2) for k, v in c.items()} == {"single": 0.5, "mean": 0.0, "wco": 1.0, "uwo": 1.0}
    assert c["single"]["kl_bon"] == pytest.approx([0.0, np.log(2) - 0.5])


def test_mean_curve():
    a = {"n": [1, 2], "kl_bon": [0, 1], "proxy_score": [0.0, 1.0], "gold_score": [1.0, 3.0]}
    b = {"n": [1, 2], "kl_bon": [0, 1], "proxy_score": [2.0, 3.0], "gold_score": [0.0, 1.0]}
    assert mean_curve([a, b]) == {"n": [1, 2], "kl_bon": [0, 1], "proxy_score": [1.0, 2.0], "gold_score": [0.5, 2.0]}
    a["per_prompt"] = {"gold_score": [[1.0, 1.0], [3.0, 3.0]]}
    b["per_prompt"] = {"gold_score": [[0.0, 1.0], [1.0, 1.0]]}
    m = mean_curve([a, b])
    assert m["gold_score_se"] == pytest.approx([0.25, 0.0])  # per-prompt means [0.5, 1.0] and [2.0, 2.0]


def test_load_bon_store_reads_and_normalises(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    P, N = 3, 4
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(2, P, N)).astype(np.float32)
    gold = rng.normal(size=(P, N)).astype(np.float32)
    bon = tmp_path / "bon"
    members = {}
    for name, mean, std in [("seed1", 0.5, 2.0), ("seed2", -1.0, 0.5)]:
        folder = tmp_path / f"rm_{name}"
        folder.mkdir()
        (folder / "reward_stats.json").write_text(json.dumps({"mean": mean, "std": std}))
        members[name] = {"path": str(folder), "files": {}}
    index = np.arange(P * N)
    bon.mkdir()
    pq.write_table(pa.table({"prompt": index // N, "answer": index % N, "seed1": raw[0].ravel(), "seed2": raw[1].ravel()}),
                   bon / "proxy_scores.parquet")
    (bon / "proxy_scores.json").write_text(json.dumps(
        {"data": "x", "max_length": 64, "P": P, "N": N, "members": members, "columns": {n: [n] for n in members}}))
    datasets.Dataset.from_dict({
        "instruction": [f"q{p}" for p in range(P)], "input": [""] * P,
        "answers": [[f"a{p}{i}" for i in range(N)] for p in range(P)], "gold_scores": gold.tolist(),
    }).save_to_disk(str(bon / "gold_gens"))

    (bon / "rmopt_config.yaml").write_text("normalise: true\n")  # the run standardised its members
    store = load_bon_store(bon)
    assert store.names == ["seed1", "seed2"] and store.ns == [1, 2, 4]
    np.testing.assert_allclose(store.gold, gold)
    np.testing.assert_allclose(store.scores[0], (raw[0] - 0.5) / 2.0, rtol=1e-6)
    np.testing.assert_allclose(store.scores[1], (raw[1] + 1.0) / 0.5, rtol=1e-6)
    np.testing.assert_allclose(load_bon_store(bon, normalise=False).scores, raw)
    (bon / "rmopt_config.yaml").write_text("normalise: false\n")  # by default: what the run did
    np.testing.assert_allclose(load_bon_store(bon).scores, raw)


def test_scaling_laws_recovers_forms_from_a_fake_demo(tmp_path):
    ns = [1, 2, 4, 8, 16, 32, 64, 128]
    kl = np.asarray(kl_bon(ns))
    bon = tmp_path / "bon" / "mean"
    bon.mkdir(parents=True)
    gold = 0.3 + bon_form(kl_to_d(kl), 0.4, 0.2)
    (bon / "bon_sampled_results.json").write_text(json.dumps(
        [{"n": n, "proxy_score": 0.0, "gold_score": float(g), "kl_bon": float(k)} for n, g, k in zip(ns, gold, kl, strict=True)]))
    ppo_kl = [0.0, 1.0, 3.0, 7.0, 12.0]
    run = tmp_path / "ppo" / "wco"
    run.mkdir(parents=True)
    gains = rl_form(kl_to_d(ppo_kl), 0.1, 0.3)
    (run / "results.json").write_text(json.dumps({"points": [
        {"step": 10 * i, "kl": k, "proxy_score": 0.0, "gold_score": 0.2 + float(g)} for i, (k, g) in enumerate(zip(ppo_kl, gains, strict=True))]}))
    bad = tmp_path / "ppo" / "short"
    bad.mkdir()
    (bad / "results.json").write_text(json.dumps({"points": [{"step": 0, "kl": 0.0, "proxy_score": 0.0, "gold_score": 0.1}]}))

    fits = fit_all(tmp_path)
    assert fits["bon"]["mean"]["alpha"] == pytest.approx(0.4) and fits["bon"]["mean"]["beta"] == pytest.approx(0.2)
    assert fits["bon"]["mean"]["gold_start"] == pytest.approx(0.3)
    assert fits["bon"]["mean"]["peak_kl"] == pytest.approx(1.0)  # d* = 0.4 / (2 * 0.2) = 1
    assert fits["rl"]["wco"]["alpha"] == pytest.approx(0.1) and fits["rl"]["wco"]["beta"] == pytest.approx(0.3)
    assert "at least 2 points" in fits["rl"]["short"]["error"]


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_a_study_reruns_the_demos_own_config_changing_only_its_knob(tmp_path, monkeypatch):
    from conftest import compose
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    import experiments.common as common
    from rmopt.stage import save_run_config

    demo_run = tmp_path / "demo" / "ppo" / "wco"
    demo_run.mkdir(parents=True)
    saved = compose("ppo", ["experiment=toy", 'proxy_rm_path="rm_seed{seed}"', "seeds=[1,2]", "objective=wco",
                            "kl_coef=0.0", "normalise=true", "eval_samples=3", "logger=csv"], output_dir=tmp_path / "h")
    save_run_config(saved, demo_run)
    calls = []
    monkeypatch.setattr(common, "run_cli", lambda *args, log=None: calls.append(args))
    common.rerun("rmopt-ppo", demo_run, tmp_path / "study" / "wco", "kl_coef=0.01")
    (args,) = calls
    assert args[:5] == ("rmopt-ppo", "--config-dir", str(demo_run), "--config-name", "rmopt_config")
    with initialize_config_dir(config_dir=str(demo_run), version_base="1.3"):
        rerun_cfg = hydra_compose(config_name="rmopt_config", overrides=list(args[5:]))
    before = _flat(OmegaConf.to_container(OmegaConf.load(demo_run / "rmopt_config.yaml")))
    after = _flat(OmegaConf.to_container(rerun_cfg))
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {"kl_coef", "output_dir", "logger.csv.save_dir"}
    assert after["kl_coef"] == 0.01 and after["eval_samples"] == 3 and after["normalise"] is True
    calls.clear()  # a sweep keeps the summary of failed members (conf/hydra/default.yaml's callback)
    common.rerun("rmopt-rm", demo_run, tmp_path / "study" / "rm", "seed=1,2", multirun=True)
    assert calls[0][1] == "-m" and "+hydra.callbacks.sweep_summary._target_=rmopt.sweep.SweepSummary" in calls[0]


def test_logprob_proxy_scores_the_answers_mean_log_probability_by_hand():
    import torch

    from experiments.logprob_proxy import answer_mean_logprob

    # one row, vocabulary 2, tokens [0, 1, 1]; answer = tokens 1..2 (the prompt is token 0)
    logits = torch.tensor([[[0.0, 0.0], [0.0, float(np.log(3.0))], [9.0, 9.0]]])  # p(1) = 1/2 at t=0, 3/4 at t=1
    ids = torch.tensor([[0, 1, 1]])
    got = answer_mean_logprob(logits, ids, torch.tensor([1]), torch.tensor([3]))
    assert got.item() == pytest.approx((np.log(0.5) + np.log(0.75)) / 2)
    # padding past a row's end is left out: the same row with a pad token after it
    padded = torch.cat([logits, torch.zeros(1, 1, 2)], 1)
    assert answer_mean_logprob(padded, torch.tensor([[0, 1, 1, 0]]), torch.tensor([1]), torch.tensor([3])).item() == got.item()


def test_logprob_proxy_starts_as_the_policys_log_probability_and_learns_the_pairs():
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from experiments.logprob_proxy import Proxy, train

    torch.manual_seed(0)
    lm = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=11, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=32, max_position_embeddings=16)).eval()
    prompts, answers = [[1, 2]], [[3, 4, 5]]
    proxy = Proxy(lm, "logprob+head", pad_id=0, seed=1)
    with torch.no_grad():
        brute = lm(torch.tensor([[1, 2, 3, 4, 5]])).logits[0].log_softmax(-1)
        want = (brute[1, 3] + brute[2, 4] + brute[3, 5]) / 3  # tokens 3, 4, 5 predicted at positions 1, 2, 3
        assert proxy(prompts, answers).item() == pytest.approx(want.item(), abs=1e-6)
        assert Proxy(lm, "head", pad_id=0, seed=1)(prompts, answers).abs().item() < 0.5  # a small head alone
    pairs = [[[3, 4, 5], [6, 7]]] * 4
    before = proxy([[1, 2]] * 2, [[3, 4, 5], [6, 7]])
    train(proxy, [[1, 2]] * 4, pairs, [1, 1, 1, 1], steps=20, lr=1e-2, seed=0, batch=4)  # [6, 7] is preferred
    with torch.no_grad():
        after = proxy([[1, 2]] * 2, [[3, 4, 5], [6, 7]])
    assert (after[1] - after[0]) > (before[1] - before[0]) + 0.5


def test_logprob_proxy_share_is_the_gain_over_the_oracles_with_its_paired_error():
    from experiments.logprob_proxy import _share

    # two prompts; gains by n = 2: the proxy's (1, 3), the oracle's (2, 2): share 1, residuals (-1, 1) -> SE 1 / 2
    curve = {"n": [1, 2], "per_prompt": {"gold_score": [[0.0, 0.0], [1.0, 3.0]]}}
    oracle = {"n": [1, 2], "per_prompt": {"gold_score": [[0.0, 0.0], [2.0, 2.0]]}}
    assert _share(curve, oracle, 2) == (pytest.approx(1.0), pytest.approx(0.5))


def test_logprob_proxy_refuses_a_folder_that_is_not_a_demo(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parent.parent / "experiments" / "logprob_proxy.py"
    done = subprocess.run([sys.executable, str(script), "--demo", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1 and "models/sft' is missing" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "studies").exists()
    done = subprocess.run([sys.executable, str(script), "--demo", str(tmp_path), "--steps", "0"], capture_output=True, text=True)
    assert done.returncode == 1 and "--steps 0" in done.stderr


def test_logprob_proxy_accuracy_leaves_gold_ties_out():
    import torch

    from experiments.logprob_proxy import _accuracy

    def longer_is_better(prompts, answers):
        return torch.tensor([float(len(a)) for a in answers])

    answers = [[[1, 2], [1]], [[1], [1, 2]], [[1, 2], [1]]]
    gold = [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]  # right, wrong, a tie (left out): 1 of 2, SE 0.5
    assert _accuracy(longer_is_better, [[1]] * 3, answers, gold) == (pytest.approx(0.5), pytest.approx(0.5))


def test_logprob_ensembles_clean_labels_are_the_golds_preference_and_ties_are_refused():
    from experiments.logprob_ensembles import clean_preference
    from rmopt.errors import RmoptError

    assert clean_preference([[0.2, 0.5], [0.9, -0.1], [-1.0, -0.5]]) == [1, 0, 1]
    with pytest.raises(RmoptError, match=r"pair 1 has a gold tie \(0.3, 0.3\)"):
        clean_preference([[0.0, 1.0], [0.3, 0.3]])


def test_logprob_ensembles_members_train_on_the_resample_rmopt_rm_draws_for_their_seed():
    from experiments.logprob_ensembles import member_pool
    from rmopt.data.preference import PreferenceDataModule

    class Pairs:  # ten pairs (tokenised as one-token answers below)
        def preferences(self, split):
            import datasets

            return datasets.Dataset.from_dict({"instruction": [f"q{i}" for i in range(10)], "input": [""] * 10,
                                               "answers": [["a", "b"]] * 10, "preference": [0] * 10})

    class Tok:
        pad_token_id = 0

    from unittest import mock

    with mock.patch("rmopt.data.preference.tokenize_preferences", lambda ds, tok, n: [{"chosen": [1], "rejected": [2]}] * len(ds)):
        dm = PreferenceDataModule(Pairs(), Tok(), seed=3, bootstrap=True)
        dm.setup()
    drawn = [int(r["counts"][0]) for r in dm.train_rows]
    pool = member_pool(10, 3, bootstrap=True)
    kept = [i for i in range(10) if (pool == i).any()]  # the data module skips rows it never drew
    assert [int((pool == i).sum()) for i in kept] == drawn and len(pool) == 10 and len(kept) < 10
    assert member_pool(4, 3, bootstrap=False).tolist() == [0, 1, 2, 3]


def test_logprob_ensembles_perfect_members_reproduce_the_oracle_in_the_targets():
    from experiments.logprob_ensembles import curves_of, standardise
    from experiments.report import summarise_demo
    from experiments.targets import measure

    rng = np.random.default_rng(0)
    gold = rng.normal(size=(6, 8))
    ns = [1, 2, 4, 8]
    members = np.stack([standardise(gold * s + s, gold[:2] * s + s) for s in (1.0, 3.0)])  # the gold, rescaled
    assert np.allclose(members[0], members[1])  # standardising undoes each member's own scale and shift
    curves = {"bon": curves_of(members, gold, ns, [1, 2], 0.5)}
    assert set(curves["bon"]) == {"seed1", "seed2", "single", "mean", "wco", "uwo_0.5"}
    summary = summarise_demo(curves)
    summary["world"] = {"oracle": objective_curve(gold, gold, ns, "single"), "sft_max_share": 0.0}
    got = measure(summary, curves)
    assert got["bon_single_peak_n"]["value"] == 8 and got["bon_single_rise_share"]["value"] == pytest.approx(1.0)
    assert summary["bon"]["wco"]["gold_final"] == pytest.approx(gold.max(1).mean())  # each prompt's best answer at n = N


def test_logprob_ensembles_refuses_bad_member_lists_and_folders(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parent.parent / "experiments" / "logprob_ensembles.py"
    done = subprocess.run([sys.executable, str(script), "--demo", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1 and "models/sft' is missing" in done.stderr and "Traceback" not in done.stderr
    for need in ("models/sft", "data/pairs", "bon/gold_gens"):
        (tmp_path / need).mkdir(parents=True)
    (tmp_path / "summary.json").write_text(json.dumps({"settings": {"members": [1, 2, 3], "bootstrap": True, "uwo_weight": 0.5}}))
    for bad in ("1", "1,1", "1,x"):
        done = subprocess.run([sys.executable, str(script), "--demo", str(tmp_path), "--members", bad], capture_output=True, text=True)
        assert done.returncode == 1 and f"--members {bad!r}" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "studies").exists()
    done = subprocess.run([sys.executable, str(script), "--over", str(tmp_path), str(tmp_path / "nowhere"), "--out", str(tmp_path / "pooled")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "logprob_ensembles.json' is missing" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "pooled").exists()


def test_logprob_ensembles_pools_replicates_by_hand_and_refuses_unlike_ones():
    from experiments.logprob_ensembles import pool_replicates
    from rmopt.errors import RmoptError

    def study(demo, rise, final, lr=1e-4):
        settings = {"demo": demo, "steps": 300, "lr": lr, "members": [ord(demo), 9], "bootstrap": True, "uwo_weight": 0.5}
        curve = {"n": [1, 2], "kl_bon": [0.0, 0.19], "gold_score": [0.1, final]}
        return {"settings": settings, "curves": {"bon": {"single": curve}},
                "targets": {"bon_single_rise_share": {"value": rise, "se": float("nan")},
                            "bon_wco_final_gain": {"value": final, "se": 0.01}}}

    # rise shares 0.2, 0.4, 0.6: mean 0.4, SE 0.2 / sqrt(3); final gains 0.1, 0.2, 0.3 -> mean 0.2, SE 0.1 / sqrt(3),
    # t(2) = 4.303: interval 0.2 +- 0.248 includes zero, so not met though each replicate's gain is positive
    targets, curves = pool_replicates([study("a", 0.2, 0.1), study("b", 0.4, 0.2), study("c", 0.6, 0.3)])
    rise, gain = targets["bon_single_rise_share"], targets["bon_wco_final_gain"]
    assert rise["value"] == pytest.approx(0.4) and rise["se"] == pytest.approx(0.2 / np.sqrt(3)) and rise["met"]
    assert rise["replicates"] == [0.2, 0.4, 0.6]
    assert gain["value"] == pytest.approx(0.2) and gain["se"] == pytest.approx(0.1 / np.sqrt(3)) and not gain["met"]
    single = curves["bon"]["single"]
    assert single["gold_score"] == pytest.approx([0.1, 0.2]) and single["gold_score_se"][1] == pytest.approx(0.1 / np.sqrt(3))
    with pytest.raises(RmoptError, match=r"'b' ran the study with .*'lr': 0.001"):
        pool_replicates([study("a", 0.2, 0.1), study("b", 0.4, 0.2, lr=1e-3)])
