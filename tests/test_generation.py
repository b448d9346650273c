"""Sampling: top-p against its exact distribution; answers keep every sampled token up to their end."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from rmopt import generation
from rmopt.generation import _sample, decode_answers, draw_categorical, sample_ids

# --------------------------------------------------------------------------------------------- top-p


def top_p_by_hand(probs: list[float], temperature: float, top_p: float) -> dict[int, float]:
    """The tokens that survive top-p and their renormalised probabilities, by brute force.

    Temper first (p^(1/T), renormalised), then walk the tokens from the most likely down and keep
    them until the kept mass reaches ``top_p``: the smallest such set.
    """
    tempered = np.asarray(probs, dtype=np.float64) ** (1.0 / temperature)
    tempered /= tempered.sum()
    kept, mass = [], 0.0
    for token in sorted(range(len(probs)), key=lambda j: -tempered[j]):
        if mass >= top_p:
            break
        kept.append(token)
        mass += tempered[token]
    return {token: tempered[token] / mass for token in kept}


# token ids in a shuffled order, so the kept set is not simply the first ids
PROBS = [0.06, 0.25, 0.04, 0.4, 0.1, 0.15]
CASES = [
    # (probs, temperature, top_p, the kept tokens worked out on paper)
    (PROBS, 1.0, 0.7, {3: 0.4 / 0.8, 1: 0.25 / 0.8, 5: 0.15 / 0.8}),  # 0.4 + 0.25 = 0.65 < 0.7: the 0.15 joins
    (PROBS, 1.0, 0.3, {3: 1.0}),  # the top token alone already holds 0.4 >= 0.3
    (PROBS, 1.0, 0.66, {3: 0.4 / 0.8, 1: 0.25 / 0.8, 5: 0.15 / 0.8}),
    (PROBS, 1.0, 0.64, {3: 0.4 / 0.65, 1: 0.25 / 0.65}),
    (PROBS, 1.0, 1.0, {j: p for j, p in enumerate(PROBS)}),
    # temperature 2 flattens to sqrt(p) / 2.2809: 0.2773, 0.2192, 0.1698, 0.1386 (cum. 0.8049), ... so four survive 0.7
    (PROBS, 2.0, 0.7, None),
]


@pytest.mark.parametrize("probs, temperature, top_p, on_paper", CASES)
def test_top_p_samples_its_exact_distribution(probs, temperature, top_p, on_paper):
    expected = top_p_by_hand(probs, temperature, top_p)
    if on_paper is not None:
        assert expected.keys() == on_paper.keys()
        for token, p in on_paper.items():
            assert expected[token] == pytest.approx(p, rel=1e-9)
    if temperature == 2.0:
        assert sorted(expected) == [1, 3, 4, 5]
        sq = np.sqrt(PROBS)
        assert expected[3] == pytest.approx(sq[3] / (sq[3] + sq[1] + sq[5] + sq[4]), rel=1e-9)
    n, vocab = 200_000, len(probs)
    logits = torch.log(torch.tensor(probs)).expand(n, vocab).contiguous()
    drawn = _sample(logits, temperature, top_p, torch.Generator().manual_seed(0))
    counts = np.bincount(drawn.numpy(), minlength=vocab)
    excluded = [j for j in range(vocab) if j not in expected]
    assert counts[excluded].sum() == 0, (counts, expected)  # a token top-p cut is never drawn
    kept = sorted(expected)
    observed = counts[kept]
    wanted = np.array([expected[j] for j in kept]) * n
    if len(kept) > 1:
        assert stats.chisquare(observed, wanted).pvalue > 1e-3, (observed, wanted)
    # and each frequency within 4.5 standard errors of its probability (a few 1e-3 at n = 200k)
    for j in kept:
        se = np.sqrt(expected[j] * (1 - expected[j]) / n)
        assert abs(counts[j] / n - expected[j]) <= 4.5 * se + 1e-12, (j, counts[j] / n, expected[j])


def test_top_p_is_per_row_and_greedy_at_temperature_zero():
    # two different rows in one batch: each keeps its own set
    a = torch.log(torch.tensor(PROBS))
    b = torch.log(torch.tensor([0.5, 0.02, 0.03, 0.05, 0.1, 0.3]))
    n = 50_000
    logits = torch.stack([a, b]).repeat(n, 1)  # rows a, b, a, b, ...
    drawn = _sample(logits, 1.0, 0.75, torch.Generator().manual_seed(1)).view(n, 2)
    for row, probs in ((0, PROBS), (1, [0.5, 0.02, 0.03, 0.05, 0.1, 0.3])):
        expected = top_p_by_hand(probs, 1.0, 0.75)
        counts = np.bincount(drawn[:, row].numpy(), minlength=6)
        assert set(np.flatnonzero(counts)) == set(expected), (row, counts)
        for j, p in expected.items():
            assert counts[j] / n == pytest.approx(p, abs=4.5 * np.sqrt(p * (1 - p) / n))
    assert _sample(torch.stack([a, b]), 0.0, 0.1, None).tolist() == [3, 0]


def test_a_draw_inverts_the_cumulative_distribution_at_its_uniform(monkeypatch):
    # cumulative sums 0, 0.2, 0.2, 0.7, 1.0, 1.0: token j owns [cum[j-1], cum[j]); zero-mass tokens own nothing
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]])
    by_hand = {0.0: 1, 0.1: 1, 0.2: 3, 0.69: 3, 0.7: 4, 0.99: 4, 1.0: 4}  # u = 1.0: past the end -> last with mass
    for u, token in by_hand.items():
        monkeypatch.setattr(generation.torch, "rand", lambda *a, u=u, **k: torch.full((1, 1), u, dtype=torch.float64))
        assert draw_categorical(probs).tolist() == [token], u
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="nan"):
        draw_categorical(torch.tensor([[0.5, float("nan")]]))
    with pytest.raises(RuntimeError, match="without mass"):
        draw_categorical(torch.zeros(1, 3))
    with pytest.raises(RuntimeError, match="inf"):
        draw_categorical(torch.tensor([[0.5, 0.5], [0.2, float("inf")]]))
    with pytest.raises(RuntimeError, match="nan"):  # one bad row among good ones
        draw_categorical(torch.tensor([[0.5, 0.5], [float("nan"), 0.1]]))


def test_draws_follow_each_rows_distribution_with_one_uniform_per_row():
    rows = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25]])
    n = 60_000
    gen = torch.Generator().manual_seed(4)
    drawn = draw_categorical(rows.repeat(n, 1), gen).view(n, 3)
    for r in range(3):
        counts = np.bincount(drawn[:, r].numpy(), minlength=4) / n
        for j, p in enumerate(rows[r].tolist()):
            assert counts[j] == pytest.approx(p, abs=4.5 * np.sqrt(p * (1 - p) / n) + 1e-12), (r, j)
    # one uniform per row: the generator moved exactly as far as 3n float64 draws
    twin = torch.Generator().manual_seed(4)
    torch.rand(3 * n, 1, generator=twin, dtype=torch.float64)
    assert torch.rand(1, generator=gen).item() == torch.rand(1, generator=twin).item()


# --------------------------------------------------------------------------------------------- answer ends


class ScriptedLM(torch.nn.Module):
    """A causal-LM stand-in whose step-t logits put all the mass on ``script[row][t]``.

    It speaks :func:`sample_ids`'s protocol: ``cache`` counts the steps taken.
    """

    def __init__(self, script: list[list[int]], vocab: int):
        super().__init__()
        self.script, self.vocab = script, vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # sample_ids reads the device from the parameters
        self.fed: list[list[int]] = []

    def forward(self, input_ids, attention_mask, position_ids, cache=None, use_cache=True):
        step = 0 if cache is None else cache
        if step > 0:
            self.fed.append(input_ids[:, -1].tolist())
        logits = torch.full((input_ids.size(0), input_ids.size(1), self.vocab), -1e4)
        for row, tokens in enumerate(self.script):
            logits[row, -1, tokens[min(step, len(tokens) - 1)]] = 0.0
        return SimpleNamespace(logits=logits, cache=step + 1)


@pytest.fixture(scope="module")
def ids(toy_tokenizer):
    eos, pad = toy_tokenizer.eos_token_id, toy_tokenizer.pad_token_id
    a, b, c = (toy_tokenizer.convert_tokens_to_ids(t) for t in ("a", "b", "c"))
    assert len({eos, pad, a, b, c}) == 5
    return SimpleNamespace(eos=eos, pad=pad, a=a, b=b, c=c, vocab=len(toy_tokenizer))


def run(script, ids, max_new_tokens, temperature=1.0):
    lm = ScriptedLM(script, ids.vocab)
    prompts = [[ids.a, ids.b, ids.c], [ids.c]] + [[ids.b]] * (len(script) - 2)
    out = sample_ids(
        lm, prompts[: len(script)], ids.eos, ids.pad, max_new_tokens, temperature, generator=torch.Generator().manual_seed(0)
    )
    return out, lm


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_a_sampled_pad_is_kept_with_and_without_eos(ids, temperature):
    eos, pad, a, b, c = ids.eos, ids.pad, ids.a, ids.b, ids.c
    script = [
        [a, pad, b, eos, c],  # ends with EOS after a pad mid-answer
        [a, pad, b, c, c],  # the same start, never reaches EOS within 4 tokens
        [pad, pad, pad, pad],  # nothing but pads: still 4 sampled tokens
        [a, b, pad, eos],  # a pad right before the EOS
        [eos],  # ends at once: the rest of its row is padding
    ]
    out, lm = run(script, ids, max_new_tokens=4, temperature=temperature)
    assert out == [[a, pad, b, eos], [a, pad, b, c], [pad, pad, pad, pad], [a, b, pad, eos], [eos]]
    # the rows with and without EOS treat the pad the same way: their common start is identical
    assert out[0][:3] == out[1][:3]
    # the model was fed back what it sampled, pads included (a finished row is fed pads after its EOS)
    assert [step[1] for step in lm.fed] == [a, pad, b]
    assert [step[4] for step in lm.fed] == [eos, pad, pad]
    _, finished = decode_answers(SimpleNamespace(eos_token_id=eos, batch_decode=lambda x, **k: x), out)
    assert finished == [True, False, False, True, True]


def test_answers_end_at_the_first_eos_when_every_row_finishes_early(ids):
    eos, pad, a, b = ids.eos, ids.pad, ids.a, ids.b
    script = [[a, pad, eos, b, eos], [pad, eos, a], [eos, a, a]]
    out, lm = run(script, ids, max_new_tokens=10)
    assert out == [[a, pad, eos], [pad, eos], [eos]]
    assert len(lm.fed) == 2  # sampling stopped once every row had its EOS (3 forwards)


def test_sampled_pads_are_answer_tokens_in_ppo_rollout_tensors(ids):
    from rmopt.modules.ppo import rollout_tensors

    eos, pad, a, b, c = ids.eos, ids.pad, ids.a, ids.b, ids.c
    out, _ = run([[a, pad, b, eos], [a, pad, b, c]], ids, max_new_tokens=4)
    batch = rollout_tensors([[a, b, c], [c]], out, pad)
    assert batch["answer_mask"].sum(1).tolist() == [4, 4]  # the pad is a real answer token, masked in
    assert batch["answer_ids"].tolist() == out


def test_each_row_keeps_its_own_answer_budget(ids):
    eos, a, b, c = ids.eos, ids.a, ids.b, ids.c
    lm = ScriptedLM([[a, b, c, a, b], [c, c, c, c, c], [a, eos]], ids.vocab)
    out = sample_ids(lm, [[a], [b], [c]], eos, ids.pad, [2, 5, 4], generator=torch.Generator().manual_seed(0))
    assert out == [[a, b], [c, c, c, c, c], [a, eos]]  # row 0 stops at its budget, the others go on
    assert sample_ids(ScriptedLM([[a, b, c]], ids.vocab), [[a]], eos, ids.pad, 3) == [[a, b, c]]
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        sample_ids(lm, [[a], [b], [c]], eos, ids.pad, [2, 0, 1])
