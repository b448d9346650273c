"""Multi-head reward models: each head trains on its own bootstrap resample, and that is what sets heads apart."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose

from rmopt.data.preference import PreferenceDataModule, bootstrap_counts, tokenize_preferences
from rmopt.data.sources import ToyData

HEADS, SEED = 3, 4


def data_module(pairs_dir, tokenizer, bootstrap, batch_size=16):
    dm = PreferenceDataModule(
        ToyData(path=str(pairs_dir)), tokenizer, batch_size=batch_size, max_length=64, seed=SEED, heads=HEADS, bootstrap=bootstrap
    )
    dm.setup()
    return dm


def test_each_head_gets_its_own_resample_and_without_bootstrap_every_pair(pairs_dir, toy_tokenizer):
    train = ToyData(path=str(pairs_dir)).preferences("train")
    n = len(train)
    rows = tokenize_preferences(train, toy_tokenizer, 64)
    counts = bootstrap_counts(n, HEADS, SEED)

    dm = data_module(pairs_dir, toy_tokenizer, bootstrap=True)
    drawn = [i for i in range(n) if counts[i].sum() > 0]
    assert len(dm.train_rows) == len(drawn) < n  # a pair no head drew is left out
    for row, i in zip(dm.train_rows, drawn, strict=True):
        assert (row["chosen"], row["rejected"]) == (rows[i]["chosen"], rows[i]["rejected"])
        assert row["counts"].tolist() == counts[i].tolist()
    kept = np.stack([r["counts"] for r in dm.train_rows])
    assert kept.sum(0).tolist() == [n] * HEADS  # each head: a resample of n with replacement
    for h in range(HEADS):  # and the heads' resamples are different multisets of pairs
        for g in range(h):
            assert not np.array_equal(kept[:, h], kept[:, g])
    assert (kept == 0).any() and (kept >= 2).any()  # some pairs missing from a head, some repeated

    plain = data_module(pairs_dir, toy_tokenizer, bootstrap=False)
    assert len(plain.train_rows) == n
    assert all(r["counts"].tolist() == [1] * HEADS for r in plain.train_rows)  # every head sees the same data
    assert all(r["counts"].tolist() == [1] * HEADS for r in dm.val_rows)  # held-out pairs are never resampled


def test_training_step_loss_is_the_sum_of_each_heads_loss_on_its_own_resample(pairs_dir, tiny_source, toy_tokenizer):
    """Brute force: each head's Bradley-Terry + L2 loss over its resample written out pair by pair (repeats
    included), each sequence scored alone without padding."""
    from rmopt.modules.rm import RewardModule, init_score_head

    torch.manual_seed(0)
    model = tiny_source.load_reward_model(toy_tokenizer).eval()
    init_score_head(model, HEADS, seed=1, std=0.5)  # wide heads: losses far apart
    module = RewardModule(model, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), l2_coef=0.01)
    dm = data_module(pairs_dir, toy_tokenizer, bootstrap=True, batch_size=12)
    batch = next(iter(dm.train_dataloader()))
    counts = batch["counts"]
    assert not all(torch.equal(counts[:, 0], counts[:, h]) for h in range(HEADS))  # the heads weigh this batch apart
    b = counts.size(0)
    seqs = [row[row != toy_tokenizer.pad_token_id].tolist() for row in batch["input_ids"]]
    with torch.no_grad():
        alone = torch.stack([model(input_ids=torch.tensor([s])).logits[0] for s in seqs])  # [2b, heads]
        per_head = []
        for h in range(HEADS):
            terms = []
            for i in range(b):
                c, r = float(alone[i, h]), float(alone[b + i, h])
                term = -F.logsigmoid(torch.tensor(c - r)).item() + 0.01 * 0.5 * (c * c + r * r)
                terms += [term] * int(counts[i, h])
            per_head.append(np.mean(terms))
        loss = module.training_step(batch, 0)
    assert float(loss) == pytest.approx(sum(per_head), rel=1e-5)
    # the same batch with every count 1 is a different loss: the weights are not ignored
    with torch.no_grad():
        flat = module.training_step({**batch, "counts": torch.ones_like(counts)}, 0)
    assert abs(float(flat) - float(loss)) > 1e-3


def _identical_heads(original):
    """init_score_head, then every head a copy of head 0: only the data can make heads differ."""

    def init(model, heads, seed, std=0.02):
        original(model, heads, seed, std)
        with torch.no_grad():
            model.score.weight.copy_(model.score.weight[:1].expand_as(model.score.weight))

    return init


@pytest.mark.parametrize("bootstrap", [False, True])
def test_heads_that_start_equal_part_only_with_bootstrap(bootstrap, toy_lm_dir, pairs_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    import rmopt.modules.rm as rm_module
    from rmopt.rm import train

    monkeypatch.setattr(rm_module, "init_score_head", _identical_heads(rm_module.init_score_head))
    out = tmp_path / "mh"
    overrides = [
        "experiment=toy",
        f"model.name_or_path={toy_lm_dir}",
        f"data.path={pairs_dir}",
        f"output_dir={out}",
        f"seed={SEED}",
        "ensemble=multihead",
        f"ensemble.k={HEADS}",
        f"ensemble.bootstrap={str(bootstrap).lower()}",
        "batch_size=16",
        "trainer.max_steps=8",
        "trainer.val_check_interval=8",
        "warmup_steps=0",
        "logger=none",
        "trainer.enable_progress_bar=false",
    ]
    train(compose("rm", overrides, output_dir=tmp_path / "run"))
    w = AutoModelForSequenceClassification.from_pretrained(tmp_path / f"mh_seed{SEED}").score.weight.detach()
    assert w.shape[0] == HEADS
    spread = (w - w[:1]).abs().max().item()
    if bootstrap:
        assert spread > 5e-4, spread  # each head followed the gradients of its own resample
    else:
        assert spread < 1e-6, spread  # the same data, the same start: the same head
