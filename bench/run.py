"""``make bench`` / ``python -m bench.run``: rmopt against its peers on the same work, medians of alternated runs.

Writes bench/results.json (a list of {"name", "ours", "peer", "unit", "ratio", "setup"}; ratio > 1 means
rmopt is better) and bench/RESULTS.md (a table). The TRL peers run in their own venv (bench/venv-trl,
created on first use: trl 0.29.1 is the last line with a PPO trainer) as subprocesses printing JSON.

    python -m bench.run                       # everything, toy-small (~1M params), ~15 min on 2 cores
    python -m bench.run --only rm,sft --reps 1
    python -m bench.run --model pythia-70m-shape --out bench/pythia-70m-shape   # Pythia-70M's trunk, ~20 min
    python -m bench.run --quick --no-peers --out /tmp/b   # the smoke test's sizes
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench.common import (
    BENCH_DIR,
    MODELS,
    Result,
    machine_line,
    make_assets,
    matmul_flops,
    median,
    pin_threads,
    ratio_of,
    render_results,
    run_peer,
    timed,
    trl_python,
    write_results,
)
from rmopt.errors import ArgumentParser

BENCHMARKS = ("bon", "bon_memory", "ensemble", "multihead", "warm", "rm", "sft", "ppo", "grpo", "generation")


@dataclass
class Sizes:
    model: str = "toy-small"
    reps: int = 3
    bon_P: int = 1000
    bon_N: int = 12_600
    # the exact reference is timed (a) with every n on the first prompts, checked against ours, (b) with n = 1 only
    # (no costly binomials) on more prompts, giving its per-prompt cost; fixed + per-prompt cost x P is reported
    bon_ref_prompts: tuple = (5, 40)
    memory_seeds: int = 2
    score_answers: int = 512
    score_batch: int = 128
    members: int = 5
    train_batch: int = 32
    max_length: int = 64
    train_warmup: int = 3
    train_steps: int = 30  # ~1-3 s per side and repetition: shorter windows are at the mercy of other processes
    ppo_batch: int = 8
    ppo_new_tokens: int = 32
    ppo_epochs: int = 4
    ppo_warmup: int = 2
    ppo_steps: int = 5
    grpo_group: int = 4  # answers per prompt (GRPO's group; the batch holds ppo_batch answers)
    grpo_epochs: int = 1  # TRL GRPO's num_iterations default (one update per batch)
    grpo_steps: int = 40  # a batch of 8 answers takes 0.15-0.3 s: 5 would time about 1 s, at the mercy of the machine
    gen_prompts: int = 4
    gen_n: int = 16
    gen_new_tokens: int = 32
    gen_batch: int = 64


# Larger models: fewer timed steps (each is seconds long), so the run stays within about 20 minutes.
MODEL_SIZES = {
    "pythia-70m-shape": dict(reps=2, train_warmup=2, train_steps=8, ppo_warmup=1, ppo_steps=3, grpo_steps=3, score_answers=256,
                             gen_prompts=2),
}

QUICK = Sizes(
    model="tiny", reps=1, bon_P=6, bon_N=64, bon_ref_prompts=(2, 4), memory_seeds=1, score_answers=12, score_batch=8,
    members=2, train_batch=4, max_length=64, train_warmup=2, train_steps=2, ppo_batch=2, ppo_new_tokens=4, grpo_group=2,
    ppo_epochs=1, ppo_warmup=2, ppo_steps=2, grpo_steps=2, gen_prompts=2, gen_n=2, gen_new_tokens=4, gen_batch=4,
)


class Bench:
    def __init__(self, sizes: Sizes, work: Path, peers: bool, create_venv: bool):
        self.s, self.work = sizes, work
        self.assets = make_assets(work / "assets", sizes.model, pairs=max(4 * sizes.train_batch * 8, 64),
                                  sft_rows=max(sizes.train_batch * 32, 64))  # 32 steps an epoch, as the pairs
        self.trl = trl_python(create=create_venv) if peers else None
        self.peers = peers
        self.flops = [matmul_flops()]
        self.notes: list[str] = []

    # ------------------------------------------------------------------ helpers
    def peer(self, script: str, args: dict) -> dict | None:
        if self.trl is None:
            return None
        try:
            return run_peer(self.trl, script, args)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"  peer {script}: {e}", flush=True)
            self.notes.append(f"{script}: {str(e)[:300]}")
            return None

    def peak_flops(self) -> float:
        return median(self.flops)

    def mfu(self, flop_per_s: float | None) -> float | None:
        return None if flop_per_s is None else flop_per_s / self.peak_flops()

    # ------------------------------------------------------------------ best-of-n
    def bon(self) -> list[Result]:
        import numpy as np

        from bench.ours import bon_floor, bon_scores
        from rmopt.bon import DEFAULT_NS, exact_best_of_n_reference, unbiased_best_of_n

        s = self.s
        ns = [n for n in DEFAULT_NS if n <= s.bon_N]
        proxy, gold = bon_scores(s.bon_P, s.bon_N)
        ours_t, floor_t = [], []
        for _ in range(s.reps):
            ours_t.append(timed(unbiased_best_of_n, proxy, gold, ns)[0])
            floor_t.append(timed(bon_floor, proxy, gold)[0])
        # the exact reference, too slow to run at P: its per-prompt work (sorting, exact sums by rank) timed with
        # n = 1 alone on p_rank prompts, its fixed binomial work as the rest of a run with every n on p_check prompts
        p_check, p_rank = s.bon_ref_prompts
        t_check, ref = timed(exact_best_of_n_reference, proxy[:p_check], gold[:p_check], ns)
        t_rank, _ = timed(exact_best_of_n_reference, proxy[:p_rank], gold[:p_rank], [1])
        per_prompt = t_rank / p_rank
        fixed = max(t_check - per_prompt * p_check, 0.0)
        ref_full = fixed + per_prompt * s.bon_P
        sub = unbiased_best_of_n(proxy[:p_check], gold[:p_check], ns)
        diff = max(float(np.max(np.abs(sub[k] - ref[k]))) for k in ("proxy_score", "gold_score"))
        assert diff <= 1e-9, f"unbiased_best_of_n differs from the exact reference by {diff}"
        ours_s, floor_s = median(ours_t), median(floor_t)
        shape = f"P={s.bon_P}, N={s.bon_N:,}, {len(ns)} n, float32 scores"
        return [
            Result("BoN estimate vs exact big-integer reference", ours_s, ref_full, "s", ratio_of(ours_s, ref_full, False),
                   f"{shape}; reference timed once with every n at P={p_check} ({t_check:.1f} s) and with n = 1 at "
                   f"P={p_rank} ({t_rank:.1f} s): fixed binomial cost {fixed:.1f} s + {per_prompt:.3f} s/prompt, "
                   f"extrapolated to P={s.bon_P}; max |ours - reference| at P={p_check}: {diff:.1e}", ">= 10x",
                   extra={"reference_fixed_s": fixed, "reference_per_prompt_s": per_prompt, "max_abs_diff": diff}),
            Result("BoN estimate vs floor (argsort + gather)", ours_s, floor_s, "s", ratio_of(ours_s, floor_s, False),
                   f"{shape}; floor = one numpy.argsort of the proxy scores + one take_along_axis of gold",
                   "ratio >= 0.67 (<= 1.5x the floor)"),
        ]

    def bon_memory(self) -> list[Result]:
        s = self.s
        path = self.work / "gold_labelled_gens"  # the published layout: validation/split_<k>.json
        py = sys.executable
        args = {"P": s.bon_P, "N": s.bon_N, "path": str(path), "seeds": s.memory_seeds}
        written = run_peer(Path(py), "bon_memory.py", {**args, "mode": "write"}, timeout=900)
        cache = str(self.work / "hf-datasets-cache")  # empty: the first run converts the shards to Arrow
        cold = run_peer(Path(py), "bon_memory.py", {**args, "mode": "ours", "cache": cache}, timeout=900)
        warm = run_peer(Path(py), "bon_memory.py", {**args, "mode": "ours", "cache": cache}, timeout=900)
        lists = run_peer(Path(py), "bon_memory.py", {**args, "mode": "lists"}, timeout=900)
        gib = 1024.0
        o = max(cold["peak_rss_mib"], warm["peak_rss_mib"]) / gib
        p = lists["peak_rss_mib"] / gib
        return [Result("BoN peak memory, with answers", o, p, "GiB", ratio_of(o, p, False),
                       f"P={s.bon_P} x N={s.bon_N:,} answers (6 words each) + gold scores in the published "
                       f"gold_labelled_gens layout (validation/split_<k>.json, 10 JSON shards, "
                       f"{written['bytes'] / 2**30:.2f} GiB, no input column), {s.memory_seeds} proxy seeds; "
                       f"ours = rmopt-bon's load_gold_gens (datasets reads the shards into its Arrow cache, "
                       f"memory-mapped) + float32 scores + bon_curves, the larger peak of a cold run (empty "
                       f"cache: {cold['peak_rss_mib'] / gib:.2f} GiB, {cold['seconds']:.0f} s, of which loading "
                       f"{cold['load_seconds']:.0f} s) and a warm one ({warm['peak_rss_mib'] / gib:.2f} GiB, "
                       f"{warm['seconds']:.0f} s); peer = the shards read into Python lists, one copy per seed "
                       f"({lists['seconds']:.0f} s); peak RSS of each process",
                       "ours <= 4 GiB",
                       extra={"cold_peak_gib": cold["peak_rss_mib"] / gib, "cold_s": cold["seconds"],
                              "cold_load_s": cold["load_seconds"], "warm_peak_gib": warm["peak_rss_mib"] / gib,
                              "warm_s": warm["seconds"], "warm_load_s": warm["load_seconds"],
                              "peer_s": lists["seconds"], "shard_bytes": written["bytes"]})]

    # ------------------------------------------------------------------ scoring
    def _alternate(self, ours, peer) -> tuple[float, float]:
        """Median seconds of ``ours()`` and ``peer()`` run in turn (at least 5 times each unless --reps 1)."""
        ours_t, peer_t = [], []
        for _ in range(max(self.s.reps, 5) if self.s.reps > 1 else 1):
            ours_t.append(timed(ours)[0])
            peer_t.append(timed(peer)[0])
        return median(ours_t), median(peer_t)

    def _texts(self, count: int) -> dict:
        prompts = json.loads(self.assets.prompts_json.read_text())
        rows = [prompts[j % len(prompts)] for j in range(count)]
        # answers of varied length: other prompts' outputs, some doubled
        answers = [rows[(j + 1) % count]["output"] * (1 + j % 2) for j in range(count)]
        return {"instruction": [r["instruction"] for r in rows], "input": [r["input"] for r in rows], "answer": answers}

    def ensemble(self) -> list[Result]:
        import torch

        from bench.ours import reward_models, score_ensemble, score_one_after_another
        from rmopt.ensemble import RewardEnsemble
        from rmopt.models import ModelSource

        s = self.s
        tok = ModelSource(name_or_path=str(self.assets.rm_dir)).load_tokenizer()
        models = reward_models(self.assets, s.members)
        ens = RewardEnsemble(models, tok, max_length=s.max_length)
        texts = self._texts(s.score_answers)
        a = score_ensemble(ens, texts, s.score_batch)
        b = score_one_after_another(models, tok, texts, s.max_length, s.score_batch)
        assert torch.allclose(a, b, atol=1e-4), f"ensemble and sequential scores differ by {(a - b).abs().max()}"
        o, p = self._alternate(lambda: score_ensemble(ens, texts, s.score_batch),
                               lambda: score_one_after_another(models, tok, texts, s.max_length, s.score_batch))
        return [Result(f"scoring with a {s.members}-member ensemble", o, p, "s", ratio_of(o, p, False),
                       f"{s.score_answers} (prompt, answer) texts, batches of {s.score_batch}, max_length {s.max_length}, "
                       f"{self.assets.model}; ours = RewardEnsemble.score; peer = each member tokenizes, pads and "
                       "scores on its own (HF sequence-classification forward); same scores checked", ">= 1.3x")]

    def multihead(self) -> list[Result]:
        from bench.ours import reward_models, score_ensemble
        from rmopt.ensemble import RewardEnsemble
        from rmopt.models import ModelSource

        s = self.s
        tok = ModelSource(name_or_path=str(self.assets.rm_dir)).load_tokenizer()
        multi = RewardEnsemble(reward_models(self.assets, 1, heads=s.members), tok, max_length=s.max_length)
        one = RewardEnsemble(reward_models(self.assets, 1, heads=1), tok, max_length=s.max_length)
        texts = self._texts(s.score_answers)
        assert score_ensemble(multi, texts, s.score_batch).shape[0] == s.members
        o, p = self._alternate(lambda: score_ensemble(multi, texts, s.score_batch), lambda: score_ensemble(one, texts, s.score_batch))
        return [Result(f"multi-head {s.members}-member ensemble vs one RM", o, p, "s", ratio_of(o, p, False),
                       f"same texts as the ensemble row; one trunk with a {s.members}-output head vs one RM "
                       f"(1 output); ratio = one RM time / multi-head time", "ratio >= 0.83 (cost <= 1.2x one RM)")]

    def warm(self) -> list[Result]:
        import torch

        from bench.ours import reward_models, score_ensemble
        from rmopt.ensemble import RewardEnsemble
        from rmopt.models import ModelSource
        from rmopt.warm import average_weights

        s = self.s
        tok = ModelSource(name_or_path=str(self.assets.rm_dir)).load_tokenizer()
        members = reward_models(self.assets, s.members)
        merged = reward_models(self.assets, 1)[0]
        merged.load_state_dict(average_weights([m.state_dict() for m in members], [f"member {i}" for i in range(s.members)]))
        ens, one = RewardEnsemble(members, tok, max_length=s.max_length), RewardEnsemble([merged], tok, max_length=s.max_length)
        texts = self._texts(s.score_answers)
        assert score_ensemble(one, texts, s.score_batch).shape[0] == 1
        with torch.inference_mode():  # members here differ by their heads only, so the merged score is their mean
            assert torch.allclose(score_ensemble(one, texts, s.score_batch)[0],
                                  score_ensemble(ens, texts, s.score_batch).mean(0), atol=1e-4)
        o, p = self._alternate(lambda: score_ensemble(one, texts, s.score_batch), lambda: score_ensemble(ens, texts, s.score_batch))
        return [Result(f"WARM scoring vs its {s.members} members", o, p, "s", ratio_of(o, p, False),
                       f"same texts as the ensemble row; ours = one reward model whose weights are the uniform average "
                       f"of {s.members} members' (rmopt.warm.average_weights) under RewardEnsemble.score; peer = the "
                       f"{s.members} members scored as an ensemble (RewardEnsemble.score, shared tokenization)",
                       f">= {0.6 * s.members:.1f}x (most of the {s.members}x fewer forward passes)")]

    # ------------------------------------------------------------------ training
    def _peer_common(self, name: str) -> dict:
        a = self.assets
        return {"lm_dir": str(a.lm_dir), "rm_dir": str(a.rm_dir), "pairs_dir": str(a.pairs_dir),
                "sft_json": str(a.sft_json), "prompts_json": str(a.prompts_json), "out": str(self.work / f"peer-{name}")}

    def rm(self) -> list[Result]:
        import datasets

        from bench.ours import rm_pairs_per_s
        from rmopt.prompts import EOS, format_prompt

        s, a = self.s, self.assets
        pairs = datasets.load_from_disk(str(a.pairs_dir))["train"]
        args = {**self._peer_common("rm"), "batch_size": s.train_batch, "max_length": s.max_length,
                "warmup": s.train_warmup, "steps": s.train_steps, "eos": EOS,
                "prompts": [format_prompt(i, x) for i, x in zip(pairs["instruction"], pairs["input"], strict=True)]}
        ours_r, peer_r, peer_info = [], [], {}
        for rep in range(s.reps):
            ours_r.append(rm_pairs_per_s(a, s.train_batch, s.max_length, s.train_warmup, s.train_steps,
                                         self.work / f"rm{rep}"))
            out = self.peer("trl_rm.py", args)
            if out:
                peer_r.append(out["pairs_per_s"])
                peer_info = out
        o, p = median(ours_r), median(peer_r)
        from rmopt.ensemble import tokenize_pairs
        from rmopt.models import ModelSource

        tok = ModelSource(name_or_path=str(a.rm_dir)).load_tokenizer()
        ids = tokenize_pairs(tok, list(pairs["instruction"]) * 2, list(pairs["input"]) * 2,
                             [x[0] for x in pairs["answers"]] + [x[1] for x in pairs["answers"]], s.max_length)
        tokens_per_pair = 2 * sum(len(i) for i in ids) / len(ids)
        mfu = self.mfu(None if o is None else 6 * a.params * o * tokens_per_pair)
        peer_mfu = self.mfu(None if p is None else 6 * a.params * p * peer_info.get("tokens_per_pair", tokens_per_pair))
        return [Result("RM training", o, p, "pairs/s", ratio_of(o, p, True),
                       f"{a.model} ({a.params / 1e6:.2f}M params, random init), batch {s.train_batch} pairs, "
                       f"max_length {s.max_length} (no pair cut or dropped), fp32, no gradient checkpointing, AdamW; "
                       f"ours = RewardModule + PreferenceDataModule under the Lightning Trainer of conf/rm.yaml; "
                       f"peer = TRL {self._trl_version()} RewardTrainer; {s.train_warmup} warm-up + {s.train_steps} "
                       "timed steps", ">= 1.2x",
                       extra={"MFU ours": mfu, "MFU peer": peer_mfu, "tokens/pair ours": tokens_per_pair,
                              "tokens/pair peer": peer_info.get("tokens_per_pair"),
                              "pairs kept by peer": peer_info.get("kept_pairs")})]

    def sft(self) -> list[Result]:
        from bench.ours import sft_rate

        s, a = self.s, self.assets
        args = {**self._peer_common("sft"), "batch_size": s.train_batch, "max_length": s.max_length,
                "warmup": s.train_warmup, "steps": s.train_steps}
        ours_r, peer_r, tps_o, tps_p = [], [], None, None
        for rep in range(s.reps):
            out = sft_rate(a, s.train_batch, s.max_length, s.train_warmup, s.train_steps, self.work / f"sft{rep}")
            tps_o = out["tokens_per_sample"]
            ours_r.append(out["samples_per_s"] * tps_o)
            peer = self.peer("trl_sft.py", args)
            if peer:
                tps_p = peer["tokens_per_sample"]
                peer_r.append(peer["samples_per_s"] * tps_p)
        o, p = median(ours_r), median(peer_r)
        return [Result("SFT training", o, p, "tokens/s", ratio_of(o, p, True),
                       f"{a.model}, batch {s.train_batch}, max_length {s.max_length}, loss on answers only, fp32, no "
                       f"gradient checkpointing; ours = SFTModule + SFTDataModule under the Lightning Trainer of "
                       f"conf/sft.yaml; peer = TRL {self._trl_version()} SFTTrainer (prompt/completion, "
                       f"completion_only_loss, no packing); tokens = non-padding input tokens",
                       ">= 1.5x", extra={"MFU ours": self.mfu(None if o is None else 6 * a.params * o),
                                         "MFU peer": self.mfu(None if p is None else 6 * a.params * p),
                                         "tokens/sample ours": tps_o, "tokens/sample peer": tps_p})]

    def ppo(self) -> list[Result]:
        from bench.ours import ppo_rate

        s, a = self.s, self.assets
        args = {**self._peer_common("ppo"), "batch_size": s.ppo_batch, "new_tokens": s.ppo_new_tokens,
                "epochs": s.ppo_epochs, "warmup": s.ppo_warmup, "steps": s.ppo_steps}
        ours_r, peer_r = [], []
        for rep in range(s.reps):
            ours_r.append(ppo_rate(a, s.ppo_batch, s.ppo_new_tokens, s.ppo_epochs, s.ppo_warmup, s.ppo_steps,
                                   self.work / f"ppo{rep}")["samples_per_s"])
            peer = self.peer("trl_ppo.py", args)
            if peer:
                peer_r.append(peer["samples_per_s"])
        o, p = median(ours_r), median(peer_r)
        prompts = json.loads(a.prompts_json.read_text())
        from rmopt.models import ModelSource

        tok = ModelSource(name_or_path=str(a.lm_dir)).load_tokenizer()
        prompt_len = sum(len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in prompts) / len(prompts)
        seq = prompt_len + s.ppo_new_tokens

        def flops(rate):  # per sample: generation 2PT, then training passes 6P x seq x epochs
            return None if rate is None else rate * (2 * a.params * s.ppo_new_tokens + 6 * a.params * seq * s.ppo_epochs)

        return [Result("PPO end to end", o, p, "samples/s", ratio_of(o, p, True),
                       f"{a.model} policy, its RM shape as reward model, batch {s.ppo_batch}, {s.ppo_new_tokens} new "
                       f"tokens, {s.ppo_epochs} PPO epochs, 1 mini-batch, full policy trained, fp32; ours = PPOModule "
                       f"steps under the Lightning Trainer of conf/ppo.yaml (value head on the policy); peer = TRL "
                       f"{self._trl_version()} trl.experimental.ppo.PPOTrainer (separate value model, as it requires); "
                       f"{s.ppo_warmup} warm-up + {s.ppo_steps} timed updates", ">= 1.5x",
                       extra={"MFU ours": self.mfu(flops(o)), "MFU peer": self.mfu(flops(p)),
                              "mean prompt tokens": prompt_len})]

    def grpo(self) -> list[Result]:
        from bench.ours import ppo_rate

        s, a = self.s, self.assets
        args = {**self._peer_common("grpo"), "batch_size": s.ppo_batch, "group_size": s.grpo_group,
                "new_tokens": s.ppo_new_tokens, "epochs": s.grpo_epochs, "warmup": s.ppo_warmup, "steps": s.grpo_steps}
        ours_r, peer_r = [], []
        for rep in range(s.reps):
            ours_r.append(ppo_rate(a, s.ppo_batch, s.ppo_new_tokens, s.grpo_epochs, s.ppo_warmup, s.grpo_steps,
                                   self.work / f"grpo{rep}", algorithm="grpo", group_size=s.grpo_group)["samples_per_s"])
            peer = self.peer("trl_grpo.py", args)
            peer_r.append(peer["samples_per_s"] if peer else None)
        pairs = [(o, p) for o, p in zip(ours_r, peer_r, strict=True) if p is not None]
        peer_r = [p for p in peer_r if p is not None]
        o, p = median(ours_r), median(peer_r)
        return [Result("GRPO end to end", o, p, "samples/s", ratio_of(o, p, True),
                       f"{a.model} policy, its RM shape as reward model, batch {s.ppo_batch} answers = "
                       f"{s.ppo_batch // s.grpo_group} prompts x group {s.grpo_group}, {s.ppo_new_tokens} new tokens, "
                       f"{s.grpo_epochs} update per batch, KL term off (TRL's default beta 0), full policy trained, fp32; "
                       f"ours = PPOModule with algorithm=grpo under the Lightning Trainer of conf/rl.yaml (no value "
                       f"head; with no KL term and no logger, no reference forward either); peer = TRL {self._trl_version()} "
                       f"GRPOTrainer (steps_per_generation 1, num_iterations {s.grpo_epochs}); {s.ppo_warmup} warm-up "
                       f"+ {s.grpo_steps} timed batches", ">= 1.5x",
                       {"ours_each": [round(v, 1) for v in ours_r], "peer_each": [round(v, 1) for v in peer_r],
                        "ratio_each": [round(o / p, 2) for o, p in pairs]})]

    def generation(self) -> list[Result]:
        from transformers import AutoModelForCausalLM

        from bench.ours import generate_hf, generate_ours
        from rmopt.models import ModelSource

        s, a = self.s, self.assets
        tok = ModelSource(name_or_path=str(a.lm_dir)).load_tokenizer()
        model = AutoModelForCausalLM.from_pretrained(a.lm_dir).eval()
        prompts = json.loads(a.prompts_json.read_text())[: s.gen_prompts]
        ours_r, peer_r = [], []
        for rep in range(s.reps):
            t, n = timed(generate_ours, model, tok, prompts, s.gen_n, s.gen_new_tokens, s.gen_batch, rep)
            ours_r.append(n / t)
            t, n = timed(generate_hf, model, tok, prompts, s.gen_n, s.gen_new_tokens, rep)
            peer_r.append(n / t)
        o, p = median(ours_r), median(peer_r)
        return [Result("generation of N answers per prompt", o, p, "new tokens/s", ratio_of(o, p, True),
                       f"{a.model}, {s.gen_prompts} prompts x N={s.gen_n}, up to {s.gen_new_tokens} new tokens, "
                       f"temperature 1, no top-k/top-p; ours = rmopt.generation.generate_answers, (prompt, sample) "
                       f"rows in batches of {s.gen_batch}; peer = transformers generate(num_return_sequences=N), one "
                       "prompt at a time", ">= 1.0x")]

    _trl = None

    def _trl_version(self) -> str:
        if self.trl is None:
            return "(not run)"
        if Bench._trl is None:
            Bench._trl = subprocess.run([str(self.trl), "-c", "import trl; print(trl.__version__)"],
                                        capture_output=True, text=True).stdout.strip()
        return Bench._trl


def _shown(argv: list[str]) -> list[str]:
    """The command line for RESULTS.md, without --note's text (which gets a line of its own)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return out


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma list of {', '.join(BENCHMARKS)}")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per side (default 3)")
    parser.add_argument("--model", default=None, help="toy-small (default) or pythia-70m-shape")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (the smoke test)")
    parser.add_argument("--no-peers", action="store_true", help="skip the TRL peers (subprocesses in bench/venv-trl)")
    parser.add_argument("--no-venv", action="store_true", help="use bench/venv-trl only if it already exists")
    parser.add_argument("--out", default=str(BENCH_DIR), help="folder for results.json and RESULTS.md")
    parser.add_argument("--update", action="store_true", help="replace only these rows in the results files already there")
    parser.add_argument("--note", default=None, help="a line for RESULTS.md's header (what changed)")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite --out's RESULTS.md from its results.json (after editing NOTES.md)")
    args = parser.parse_args(argv)
    if args.render:
        try:
            print(f"wrote {render_results(Path(args.out))}")
        except FileNotFoundError as e:
            parser.error(str(e))
        return 0
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; expected some of {list(BENCHMARKS)}")
    sizes = QUICK if args.quick else Sizes()
    if args.model is not None:
        if args.model not in MODELS:
            parser.error(f"unknown model {args.model!r}; expected one of {sorted(m for m in MODELS if m != 'tiny')}")
        sizes = replace(sizes, model=args.model, **MODEL_SIZES.get(args.model, {}))
    if args.reps is not None:
        sizes.reps = args.reps
    pin_threads()
    from rmopt.utils import quiet_third_party

    quiet_third_party()
    import warnings

    warnings.filterwarnings("ignore")
    started = time.time()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="rmopt-bench-") as tmp:
        bench = Bench(sizes, Path(tmp), peers=not args.no_peers, create_venv=not (args.no_venv or args.quick))
        for name in only:
            print(f"[bench] {name} ...", flush=True)
            t0 = time.perf_counter()
            for r in getattr(bench, name)():
                results.append(r)
                print(f"  {r.name}: ours {r.ours} peer {r.peer} {r.unit} ratio {r.ratio}", flush=True)
            print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
            bench.flops.append(matmul_flops())
        header = {
            "made": time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
            + f" by `{' '.join(['python -m bench.run', *_shown(argv if argv is not None else sys.argv[1:])])}`",
            "took": f"{(time.time() - started) / 60:.1f} min",
            "machine": machine_line(),
            "peak fp32 matmul (1024^3, 1 thread)": f"{bench.peak_flops() / 1e9:.1f} GFLOP/s (median over the run; "
                                                   "MFU = achieved training FLOP/s over this)",
            "peers": f"TRL {bench._trl_version()} in bench/venv-trl" if bench.trl else "TRL peers not run",
            "model": f"{sizes.model} ({bench.assets.params / 1e6:.2f}M params, random init, toy tokenizer)",
        }
        if bench.notes:
            header["peer failures"] = "; ".join(bench.notes)
        if args.note:
            header["note"] = args.note
    json_path, md_path = write_results(results, Path(args.out), header, update=args.update)
    print(f"wrote {json_path} and {md_path} in {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
