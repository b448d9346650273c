"""rmopt's side of each benchmark, through the code paths users run (Lightning Trainer + modules, ensemble, sampler),
plus the in-process peers that need no extra library (plain ``transformers`` generate, members one after another)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bench.common import Assets


def _compose(config_name: str, overrides: list[str], output_dir: Path):
    from hydra import compose, initialize_config_dir

    from rmopt.stage import CONFIG_PATH

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose(config_name=config_name, overrides=[*overrides, f"paths.output_dir={output_dir}"])


def _step_timer(warmup: int):
    """A Lightning callback noting the wall time at the end of every training step."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter())

        def steps_per_s(self) -> float:
            t = self.times[warmup - 1 :]
            return (len(t) - 1) / (t[-1] - t[0])

    return StepTimer()


def _trainer_overrides(assets: Assets, steps: int) -> list[str]:
    return [
        f"model={'toy-small'}", f"model.name_or_path={assets.lm_dir}", "logger=none",
        "trainer.enable_progress_bar=false", f"trainer.max_steps={steps}", "++trainer.limit_val_batches=0",
        "trainer.precision=32-true", "threads=1",
    ]


def rm_pairs_per_s(assets: Assets, batch_size: int, max_length: int, warmup: int, steps: int, workdir: Path) -> float:
    """RewardModule + PreferenceDataModule under the Lightning Trainer of conf/rm.yaml, as rmopt-rm builds them."""
    import hydra

    from rmopt.data.preference import PreferenceDataModule
    from rmopt.data.sources import ToyData
    from rmopt.modules.rm import RewardModule, init_score_head
    from rmopt.stage import build_trainer

    cfg = _compose("rm", [*_trainer_overrides(assets, warmup + steps), f"data.path={assets.pairs_dir}",
                          f"batch_size={batch_size}", f"max_length={max_length}", "warmup_steps=0",
                          "trainer.max_epochs=-1"], workdir)
    source = hydra.utils.instantiate(cfg.model)
    tok = source.load_tokenizer()
    model = source.load_reward_model(tok)
    init_score_head(model, 1, cfg.seed)
    model.train()
    data = PreferenceDataModule(ToyData(sizes={}, path=str(assets.pairs_dir)), tok, batch_size=batch_size,
                                max_length=max_length, seed=cfg.seed)
    data.setup()
    module = RewardModule(model, optimizer=hydra.utils.instantiate(cfg.optimizer), l2_coef=cfg.l2_coef)
    timer = _step_timer(warmup)
    trainer = build_trainer(cfg, None, [timer])
    trainer.fit(module, datamodule=data)
    return timer.steps_per_s() * batch_size


def sft_rate(assets: Assets, batch_size: int, max_length: int, warmup: int, steps: int, workdir: Path) -> dict:
    """SFTModule + SFTDataModule under the Lightning Trainer of conf/sft.yaml: samples/s and tokens per sample."""
    import datasets
    import hydra

    from rmopt.data.sft import SFTDataModule
    from rmopt.modules.sft import SFTModule
    from rmopt.stage import build_trainer

    cfg = _compose("sft", [*_trainer_overrides(assets, warmup + steps), f"batch_size={batch_size}",
                           f"max_length={max_length}", "trainer.max_epochs=-1"], workdir)
    source = hydra.utils.instantiate(cfg.model)
    tok = source.load_tokenizer()
    model = source.load_causal_lm(tok)
    model.train()
    rows = json.loads(assets.sft_json.read_text())

    class _Source:  # the saved SFT rows as a data source (same rows the peer trains on)
        def instructions(self, split):
            return datasets.Dataset.from_list([{k: r[k] for k in ("instruction", "input", "output")} for r in rows])

    data = SFTDataModule(_Source(), tok, batch_size=batch_size, max_length=max_length, seed=cfg.seed)
    data.setup()
    module = SFTModule(model, tok, optimizer=hydra.utils.instantiate(cfg.optimizer))
    timer = _step_timer(warmup)
    trainer = build_trainer(cfg, None, [timer])
    trainer.fit(module, datamodule=data)
    tokens = float(np.mean([len(r["input_ids"]) for r in data.train_rows]))
    return {"samples_per_s": timer.steps_per_s() * batch_size, "tokens_per_sample": tokens}


def ppo_rate(assets: Assets, batch_size: int, new_tokens: int, epochs: int, warmup: int, steps: int,
             workdir: Path, algorithm: str = "ppo", group_size: int = 1) -> dict:
    """PPOModule training steps (rollout, scoring, update) under the Trainer of conf/ppo.yaml, or of conf/rl.yaml
    with ``algorithm=grpo|rloo`` (``batch_size`` answers, ``group_size`` per prompt, KL off): answers/s."""
    import datasets

    from rmopt.ensemble import RewardEnsemble
    from rmopt.ppo import build_module
    from rmopt.stage import build_trainer

    if algorithm == "ppo":
        config, extra = "ppo", ["kl_coef=0.05"]
    else:  # as TRL's GRPOTrainer by default: no KL term, no reference model in the loss
        config, extra = "rl", [f"algorithm={algorithm}", f"algorithm.group_size={group_size}", "kl_coef=0.0"]
        extra += ["algorithm.beta=0.0"] if algorithm == "grpo" else []
    cfg = _compose(config, [*_trainer_overrides(assets, warmup + steps), f"proxy_rm_path={assets.rm_dir}",
                            "seeds=[1]", f"rollout_batch_size={batch_size}", f"minibatch_size={batch_size}",
                            f"ppo_epochs={epochs}", f"max_new_tokens={new_tokens}", "max_length=128",
                            "num_layers_unfrozen=-1", "eval_every=0", "eval_prompts=0", "sample_every=0",
                            *extra, f"output_dir={workdir / config}"], workdir)
    prompts = json.loads(assets.prompts_json.read_text())

    class _Source:
        def instructions(self, split):
            return datasets.Dataset.from_list([{"instruction": r["instruction"], "input": r["input"]} for r in prompts])

    ensemble = RewardEnsemble.load(str(assets.rm_dir), [1], max_length=128)
    module = build_module(cfg, ensemble, _Source())
    timer = _step_timer(warmup)
    trainer = build_trainer(cfg, None, [timer])
    trainer.fit(module)
    return {"samples_per_s": timer.steps_per_s() * batch_size}


# ---------------------------------------------------------------------------------------------- scoring


def reward_models(assets: Assets, k: int, heads: int = 1):
    """k reward models of the assets' shape (different heads), loaded from the saved folder."""
    from transformers import AutoModelForSequenceClassification

    from rmopt.modules.rm import init_score_head

    models = []
    for seed in range(k):
        m = AutoModelForSequenceClassification.from_pretrained(assets.rm_dir)
        init_score_head(m, heads, seed)
        models.append(m.eval())
    return models


def score_ensemble(ensemble, texts: dict, batch_size: int):
    return ensemble.score(texts["instruction"], texts["input"], texts["answer"], batch_size=batch_size)


def score_one_after_another(models, tokenizer, texts: dict, max_length: int, batch_size: int):
    """The straightforward way: each member tokenizes and pads the batch on its own, then scores it."""
    import torch

    from rmopt.prompts import format_answer, format_prompt

    full = [format_prompt(i, x) + format_answer(a) for i, x, a in zip(texts["instruction"], texts["input"], texts["answer"], strict=True)]
    out = []
    with torch.inference_mode():
        for m in models:
            chunks = []
            for s in range(0, len(full), batch_size):
                enc = tokenizer(full[s : s + batch_size], padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt", add_special_tokens=False)
                chunks.append(m(**enc).logits.float().T)
            out.append(torch.cat(chunks, dim=1))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------- generation


def generate_ours(model, tokenizer, prompts: list[dict], n: int, new_tokens: int, batch_size: int, seed: int) -> int:
    """N answers per prompt with rmopt.generation (many (prompt, sample) rows per batch); returns new tokens."""
    import torch

    from rmopt.generation import generate_answers

    instructions = [p["instruction"] for p in prompts for _ in range(n)]
    inputs = [p["input"] for p in prompts for _ in range(n)]
    gen = torch.Generator().manual_seed(seed)
    samples = generate_answers(model, tokenizer, instructions, inputs, batch_size=batch_size, generator=gen,
                               max_new_tokens=new_tokens, temperature=1.0)
    return sum(len(a) for a in samples.answer_ids)


def generate_hf(model, tokenizer, prompts: list[dict], n: int, new_tokens: int, seed: int) -> int:
    """``generate`` with num_return_sequences=N, one prompt at a time; returns new tokens (to EOS)."""
    import torch

    torch.manual_seed(seed)
    eos, total = tokenizer.eos_token_id, 0
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([tokenizer(p["prompt"], add_special_tokens=False)["input_ids"]])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, num_return_sequences=n, max_new_tokens=new_tokens, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id)
            for row in out[:, ids.size(1) :].tolist():
                total += row.index(eos) + 1 if eos in row else len(row)
    return total


# ---------------------------------------------------------------------------------------------- best-of-n


def bon_scores(P: int, N: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((P, N), dtype=np.float32), rng.standard_normal((P, N), dtype=np.float32)


def bon_floor(proxy, gold):
    """The least any estimator must do: one argsort of the proxy scores, one gather of the gold scores."""
    order = np.argsort(proxy, axis=1)
    return np.take_along_axis(gold, order, axis=1)
