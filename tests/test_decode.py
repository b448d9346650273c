"""The hand-written GPT-NeoX decode step gives the model's own logits bit for bit, and the same answers."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from rmopt.decode import CachedForward, NeoXDecoder, decoder_for
from rmopt.generation import sample_ids


def tiny_neox(parallel: bool = True, rotary_pct: float = 0.25, **extra) -> GPTNeoXForCausalLM:
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, rotary_pct=rotary_pct, use_parallel_residual=parallel, **extra,
    )
    model = GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():  # untrained layer norms are the identity: make every parameter matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


# rows of different lengths: left padding, positions that start at 0 in each row
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [17]]


def padded(prompts):
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("parallel, rotary_pct, prompts", [(True, 0.25, PROMPTS), (False, 1.0, PROMPTS),
                                                         (True, 0.25, [[5, 6, 7], [8, 9, 10]])])  # no padding
@torch.inference_mode()
def test_each_step_gives_the_models_own_logits_exactly(parallel, rotary_pct, prompts):
    model = tiny_neox(parallel, rotary_pct)
    fast, reference = decoder_for(model), CachedForward(model)
    assert isinstance(fast, NeoXDecoder)
    ids, mask, pos = padded(prompts)
    got, want = fast.prefill(ids, mask, pos, 6), reference.prefill(ids, mask, pos, 6)
    assert torch.equal(got, want)
    gen = torch.Generator().manual_seed(3)
    for _ in range(6):
        step = torch.multinomial(want.softmax(-1), 1, generator=gen)
        mask = torch.cat([mask, torch.ones_like(step)], 1)
        pos = pos[:, -1:] + 1
        got, want = fast.step(step, mask, pos), reference.step(step, mask, pos)
        assert torch.equal(got, want)
        assert not torch.equal(got[0], got[1])  # rows see their own prompts


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampled_answers_are_the_models_own(monkeypatch, temperature, top_p):
    model = tiny_neox()
    prompts = PROMPTS * 3

    def draw():
        return sample_ids(model, prompts, 3, 0, [9, 4, 9, 7] * 3, temperature, top_p, generator=torch.Generator().manual_seed(1))

    fast = draw()
    monkeypatch.setattr("rmopt.generation.decoder_for", CachedForward)
    assert draw() == fast


@torch.inference_mode()
def test_the_rows_a_decoder_keeps_go_on_as_in_the_whole_batch():
    model = tiny_neox()
    prompts = [[5 + (i % 7), 6 + (i % 5), 7][: 1 + i % 3] for i in range(40)]
    ids, mask, pos = padded(prompts)
    whole, part = decoder_for(model), decoder_for(model)
    whole.prefill(ids, mask, pos, 4), part.prefill(ids, mask, pos, 4)
    keep = torch.tensor([i for i in range(40) if i % 5])  # 32 of the 40 rows, then every other one of those
    step = torch.arange(40)[:, None] % 90 + 3
    rows = torch.arange(40)
    for t, index in enumerate([keep, torch.arange(0, 32, 2)]):
        rows = rows[index]
        part.select_rows(index)
        got, want = part.step(step[rows], None, pos[rows, -1:] + t + 1), whole.step(step, None, pos[:, -1:] + t + 1)
        torch.testing.assert_close(got, want[rows], rtol=0, atol=1e-5)  # equal up to float rounding everywhere


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_dropping_finished_rows_changes_no_answer_and_no_later_draw(monkeypatch, temperature, top_p):
    """Rows that finish early leave the decoder's batch (from 16 rows on); the answers, and the generator's state
    after them, are those of decoding every row to the end (the model's own cached forward, which never drops).
    Exact where products of 16+ rows round as the full batch's (this tiny model on x86 CPUs with one thread); the
    kept rows' logits agree to float rounding everywhere."""
    model = tiny_neox()
    prompts = [[5 + (i % 7), 6 + (i % 5), 7 + (i % 3)][: 1 + i % 3] for i in range(48)]
    budgets = [2 + (i % 4) if i % 3 else 12 for i in range(48)]  # two thirds stop within 5 tokens
    selected = []
    monkeypatch.setattr(NeoXDecoder, "select_rows", lambda self, index, original=NeoXDecoder.select_rows:
                        (selected.append(index.numel()), original(self, index))[1])

    def draw():
        gen = torch.Generator().manual_seed(1)
        return sample_ids(model, prompts, 3, 0, budgets, temperature, top_p, generator=gen), torch.rand(4, generator=gen)

    fast, after = draw()
    assert len(selected) >= 2 and min(selected) >= 16  # rows were dropped (twice: a subset of a subset), never below 16 left
    monkeypatch.setattr("rmopt.generation.decoder_for", CachedForward)
    slow, slow_after = draw()
    assert fast == slow
    assert torch.equal(after, slow_after)  # every row drew its uniform at every step, dropped or not


def test_models_it_does_not_follow_keep_their_own_forward():
    assert isinstance(decoder_for(tiny_neox(attn_implementation="eager")), CachedForward)
    with_dropout = tiny_neox(hidden_dropout=0.1).train()
    assert isinstance(decoder_for(with_dropout), CachedForward)
    assert isinstance(decoder_for(with_dropout.eval()), NeoXDecoder)  # dropout is off in eval mode
    assert isinstance(decoder_for(torch.nn.Linear(2, 2)), CachedForward)
    hooked = tiny_neox()
    hooked.base_model.layers[0].mlp.register_forward_hook(lambda module, args, out: out * 2)
    assert isinstance(decoder_for(hooked), CachedForward)  # a hook changes the forward the decoder writes out

    class Adapted(torch.nn.Linear):  # e.g. a LoRA or quantized layer in place of a plain one
        pass

    adapted = tiny_neox()
    old = adapted.base_model.layers[1].attention.dense
    adapted.base_model.layers[1].attention.dense = Adapted(old.in_features, old.out_features)
    assert isinstance(decoder_for(adapted), CachedForward)
