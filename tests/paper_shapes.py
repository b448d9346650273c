"""The paper's model shapes with random weights, through rmopt's own code: one RM step, one PPO step,
best-of-n scoring and gold scoring, each measured (wall time, throughput, peak accelerator memory).

``tests/test_gpu.py`` runs these at the paper's shapes on a CUDA GPU (Pythia-70M reward models,
Pythia-1.4B policy, a LLaMA-7B-shaped gold RM in bf16); ``tests/test_paper_shapes.py`` runs the same
functions at tiny shapes on CPU, so the code a GPU run takes is exercised by ``make test``. Weights are
random (built from the config), token ids are drawn from the toy tokenizer's range: the numbers are
about shapes, memory and speed, not about quality.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

# EleutherAI/pythia-70m and pythia-1.4b (GPT-NeoX; embedding rows padded to 50304), LLaMA-7B as in
# AlpacaFarm's sft10k / reward-model-human (vocab 32000 + [PAD])
PYTHIA_70M = dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
                  rotary_pct=0.25, max_position_embeddings=2048, vocab_size=50304, hidden_dropout=0.0,
                  attention_dropout=0.0, use_parallel_residual=True)
PYTHIA_1_4B = dict(PYTHIA_70M, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192)
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                max_position_embeddings=2048, rms_norm_eps=1e-6, vocab_size=32001)
TINY_NEOX = dict(PYTHIA_70M, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=600, vocab_size=1000)
TINY_LLAMA = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=1024, rms_norm_eps=1e-6, vocab_size=400)
GIB = 2**30


@contextlib.contextmanager
def measured(device: str, out: dict):
    """Wall seconds (``s``) and, on CUDA, peak allocated memory (``peak_gib``) of the block, into ``out``."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    yield out
    if cuda:
        torch.cuda.synchronize()
        out["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
    out["s"] = time.perf_counter() - start


def line(name: str, numbers: dict) -> str:
    """One printable line: ``paper-shapes <name>: key value, ...``."""
    parts = [f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items()]
    return f"paper-shapes {name}: " + ", ".join(parts)


def _autocast(device: str):
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)  # as trainer=gpu (bf16-mixed)
    return contextlib.nullcontext()


def rm_step(shape: dict, device: str, pairs: int = 32, length: int = 520, steps: int = 3) -> dict:
    """RM training steps as rmopt-rm takes them (last-token scores, pair loss, AdamW), ``pairs`` pairs of
    ``length`` tokens at most (the released defaults: 32 pairs, max length 520)."""
    from rmopt.ensemble import last_token_scores
    from rmopt.models import ModelSource, count_parameters
    from rmopt.modules.rm import init_score_head, multi_head_pair_loss

    source = ModelSource(config=dict(shape), tokenizer="toy")
    tokenizer = source.load_tokenizer()
    torch.manual_seed(0)
    model = source.load_reward_model(tokenizer)
    init_score_head(model, 1, seed=1)
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(length // 2, length + 1, (2 * pairs,), generator=g)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = torch.randint(3, len(tokenizer), (2 * pairs, length), generator=g).masked_fill(mask == 0, tokenizer.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    counts = torch.ones(pairs, 1, dtype=torch.long, device=device)
    losses = []

    def step():
        with _autocast(device):
            scores = last_token_scores(model, ids, mask)
        loss, _, _ = multi_head_pair_loss(scores.float(), counts, 0.001)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))

    step()  # warm-up (allocations, kernels)
    out = {"params_m": count_parameters(model) / 1e6}
    with measured(device, out):
        for _ in range(steps):
            step()
    out.update(ms_per_step=1000 * out["s"] / steps, pairs_per_s=pairs * steps / out["s"],
               tokens_per_s=int(mask.sum()) * steps / out["s"])
    out["losses_finite"] = all(map(lambda v: v == v and abs(v) < float("inf"), losses))
    return out


def save_rms(shape: dict, root: Path, seeds=(1, 2, 3, 4, 5)) -> Path:
    """Reward-model folders ``root/rm_seed{seed}`` of ``shape`` with random weights and the toy tokenizer."""
    from rmopt.models import ModelSource
    from rmopt.modules.rm import init_score_head
    from rmopt.utils import save_hf_folder

    source = ModelSource(config=dict(shape), tokenizer="toy")
    tokenizer = source.load_tokenizer()
    for seed in seeds:
        torch.manual_seed(seed)
        model = source.load_reward_model(tokenizer)
        init_score_head(model, 1, seed=seed, std=1.0)  # wide heads: the members disagree
        save_hf_folder(root / f"rm_seed{seed}", model, tokenizer)
    return root


def save_policy(shape: dict, folder: Path) -> Path:
    """A causal LM folder of ``shape`` with random weights (saved in bf16: half the disk) and the toy tokenizer."""
    from rmopt.models import ModelSource
    from rmopt.utils import save_hf_folder

    source = ModelSource(config=dict(shape), tokenizer="toy")
    tokenizer = source.load_tokenizer()
    torch.manual_seed(0)
    save_hf_folder(folder, source.load_causal_lm(tokenizer).to(torch.bfloat16), tokenizer)
    return folder


def ppo_step(policy: Path, rms: Path, seeds, tmp: Path, trainer: str, rollouts: int = 64, minibatch: int = 16,
             new_tokens: int = 256, eval_prompts: int = 8) -> dict:
    """One PPO step of rmopt-ppo (rollout of ``rollouts`` prompts, ``new_tokens`` new tokens at most, 4 PPO
    epochs of mini-batches, the proxy ensemble's mean) from the ``policy`` folder; reads the step's own
    timing (perf/step_s, perf/rollout_s) from its metrics and the evaluation it wrote."""
    import csv

    from conftest import compose

    from rmopt.ppo import train as ppo_train

    out_dir = tmp / "ppo"
    overrides = [
        "experiment=toy", f"trainer={trainer}", "logger=csv", "trainer.enable_progress_bar=false",
        "++trainer.log_every_n_steps=1", f"model.name_or_path={policy}",
        f'proxy_rm_path="{rms}/rm_seed{{seed}}"', f"seeds=[{','.join(map(str, seeds))}]", "objective=mean",
        f"rollout_batch_size={rollouts}", f"minibatch_size={minibatch}", "ppo_epochs=4",
        f"max_new_tokens={new_tokens}", f"max_length={new_tokens + 64}", f"eval_prompts={eval_prompts}",
        f"eval_batch_size={eval_prompts}", "sample_every=0", "trainer.max_steps=1", "eval_every=1",
        f"output_dir={out_dir}",
    ]
    out = {}
    with measured("cuda" if trainer == "gpu" else "cpu", out):
        ppo_train(compose("ppo", overrides, output_dir=tmp / "run-ppo"))
    out["stage_s"] = out.pop("s")
    (metrics,) = list((tmp / "run-ppo").rglob("metrics.csv"))
    with open(metrics) as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/step_s")]
    out.update(step_s=float(rows[-1]["perf/step_s"]), rollout_s=float(rows[-1]["perf/rollout_s"]),
               samples_per_s=float(rows[-1]["perf/samples_per_s"]), answer_length=float(rows[-1]["answer/length"]))
    evals = sorted((out_dir / "eval").glob("step_*.json"))
    rows = json.loads(evals[-1].read_text())["rows"]
    out["evals"] = len(evals)
    out["finite"] = bool(rows) and all(torch.isfinite(torch.tensor([r["proxy"], r["kl"]])).all() for r in rows)
    return out


def _random_answers(tokenizer, count: int, max_tokens: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max_tokens // 4, max_tokens + 1, (count,), generator=g).tolist()
    vocab = len(tokenizer)
    return [tokenizer.decode(torch.randint(3, vocab, (n,), generator=g).tolist(), skip_special_tokens=True)
            for n in lengths]


def bon_scoring(rms: Path, seeds, device: str, prompts: int = 4, n: int = 512, answer_tokens: int = 256,
                batch_size: int = 256) -> dict:
    """Best-of-n as rmopt-bon does it: every member scores N answers per prompt (bf16 on CUDA), then the
    unbiased estimator of the ensemble's objective (mean) for n = 1..N."""
    import numpy as np

    from rmopt.bon import unbiased_best_of_n
    from rmopt.ensemble import RewardEnsemble

    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    ensemble = RewardEnsemble.load(f"{rms}/rm_seed{{seed}}", list(seeds), device=device, dtype=dtype)
    instructions = [f"Reverse the words of sentence {p}." for p in range(prompts) for _ in range(n)]
    answers = _random_answers(ensemble.tokenizer, prompts * n, answer_tokens)
    out = {"members": ensemble.k, "answers": prompts * n}
    with measured(device, out):
        scores = ensemble.score(instructions, [""] * len(answers), answers, batch_size=batch_size)
    out["answers_per_s"] = len(answers) / out["s"]
    proxy = scores.float().mean(0).reshape(prompts, n).numpy()
    gold = np.random.default_rng(0).normal(size=(prompts, n))
    curve = unbiased_best_of_n(proxy, gold, ns=[1, 2, 4, 16, n])
    out["finite"] = bool(np.isfinite(scores.numpy()).all() and np.isfinite(curve["proxy_score"]).all())
    out["proxy_rises"] = bool(np.all(np.diff(curve["proxy_score"]) >= -1e-6))
    return out


def gold_scoring(shape: dict, tmp: Path, device: str, texts: int = 64, batch_size: int = 16) -> dict:
    """gold=alpaca_farm's scorer (v0 template, no EOS, left padding, 512 tokens) around a LLaMA of
    ``shape`` with random weights (bf16 on CUDA) and the LLaMA-layout stand-in tokenizer; half the answers
    are long enough to be cut at 512 tokens."""
    from llama_stand_in import PAD_ID, save_llama_tokenizer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig

    from rmopt.gold import HFGoldReward

    save_llama_tokenizer(tmp / "gold-tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tmp / "gold-tokenizer")
    config = LlamaConfig(num_labels=1, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                         **shape)
    config.score_bias = 0.25
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # built in place, in its dtype: no float32 copy of the 7B weights
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    gold = HFGoldReward.from_model(model, tokenizer, template="alpaca", device=device, batch_size=batch_size,
                                   max_length=512, padding_side="left")
    words = ["cat", "dog", "sun", "blue", "seven", "river", "quietly", "and"]
    answers = [" ".join(words[(i * 7 + j) % len(words)] for j in range(10 if i % 2 else 200)) for i in range(texts)]
    instructions = [f"Describe item {i}." for i in range(texts)]
    inputs = ["" if i % 3 else f"item {i}" for i in range(texts)]
    lengths = gold.encode(gold.texts(instructions, inputs, answers))["attention_mask"].sum(1)
    out = {"params_b": sum(p.numel() for p in model.parameters()) / 1e9, "texts": texts,
           "max_tokens": int(lengths.max())}
    with measured(device, out):
        scores = gold.score(instructions, inputs, answers)
    out.update(texts_per_s=texts / out["s"], tokens_per_s=float(lengths.sum()) / out["s"])
    alone = gold.score(instructions[:2], inputs[:2], answers[:2], batch_size=1)
    out["finite"] = bool(torch.isfinite(torch.from_numpy(scores)).all())
    out["batch_vs_alone"] = float(abs(scores[:2] - alone).max())
    out["score_std"] = float(scores.std())
    return out
