"""Padding-free training forwards (rmopt.packing) against transformers' own padded forward, and the
step-cost helpers the training modules use (fused AdamW on CPU, padding)."""

import functools

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification

from rmopt import packing
from rmopt.data.collate import SFTCollator, pad, padding_mask
from rmopt.ensemble import last_token_scores
from rmopt.losses import IGNORE_INDEX, sft_loss
from rmopt.modules.common import fused_on_cpu
from rmopt.modules.sft import SFTModule
from rmopt.packing import pack, packed_hidden_states, supports_packing

SEQS = [[5, 6, 7, 8, 9, 10], [3, 4], [11, 12, 13], [20, 21, 22, 23]]


def config(parallel: bool = True, rotary_pct: float = 0.5) -> GPTNeoXConfig:
    return GPTNeoXConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, rotary_pct=rotary_pct, use_parallel_residual=parallel, pad_token_id=0,
        hidden_dropout=0.0, attention_dropout=0.0,
    )


def batch(seqs, side="right"):
    return pad(seqs, 0, side), padding_mask(seqs, side)


def test_pack_lists_real_tokens_with_their_positions():
    ids, mask = batch([[1, 2, 3], [4], [5, 6]], side="left")
    p = pack(mask)
    assert p.take(ids).tolist() == [1, 2, 3, 4, 5, 6]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert p.last.tolist() == [2, 3, 5] and (p.rows, p.width) == (3, 3)
    assert p.target.tolist() == [0, 1, 2, 3, 6, 7]  # row * width + position
    assert pack(mask, drop_last=True) is None  # without its last token, the row [4] would be empty
    ids, mask = batch([[1, 2, 3], [4, 7], [5, 6]], side="left")
    trimmed = pack(mask, drop_last=True)  # each row without its last token
    assert trimmed.take(ids).tolist() == [1, 2, 4, 5] and trimmed.source.tolist() == [0, 1, 4, 7]
    assert trimmed.position_ids.tolist() == [[0, 1, 0, 0]] and (trimmed.rows, trimmed.width) == (3, 2)
    assert pack(torch.tensor([[1, 0, 1]])) is None  # a hole: not one run of tokens
    assert pack(torch.tensor([[1, 1], [0, 0]])) is None  # an empty row


@pytest.mark.parametrize(
    ("parallel", "side", "rotary_pct", "fused_attention"),
    [(True, "right", 0.5, False), (False, "right", 0.5, False), (True, "left", 0.25, False),
     (False, "left", 1.0, False), (True, "right", 0.5, True), (False, "left", 0.25, True)],
)
def test_packed_scores_and_gradients_match_the_padded_forward(parallel, side, rotary_pct, fused_attention, monkeypatch):
    if fused_attention:  # the long-row path: PyTorch's fused attention kernel instead of the plain one
        monkeypatch.setattr(packing, "PLAIN_ATTENTION_MAX_WIDTH", 0)
    torch.manual_seed(0)
    model = GPTNeoXForSequenceClassification(config(parallel, rotary_pct)).train()
    assert supports_packing(model)
    ids, mask = batch(SEQS, side)
    ours = last_token_scores(model, ids, mask)
    alone = torch.cat([model(input_ids=torch.tensor([s])).logits for s in SEQS])  # transformers, no padding
    assert torch.allclose(ours, alone, atol=1e-6)
    weights = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    (ours * weights).sum().backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (alone * weights).sum().backward()
    for g, ref in zip(packed_grads, [p.grad for p in model.parameters()], strict=True):
        assert torch.allclose(g, ref, atol=1e-5)


def test_packed_hidden_states_keep_reads_the_same_states():
    torch.manual_seed(1)
    model = GPTNeoXForSequenceClassification(config()).eval()
    ids, mask = batch(SEQS)
    p = pack(mask)
    every = packed_hidden_states(model, ids, p)
    keep = torch.tensor([0, 4, 6, 7, 14])
    assert torch.allclose(packed_hidden_states(model, ids, p, keep=keep), every[keep], atol=1e-6)
    padded = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(every, p.take(padded), atol=1e-5)


def test_sft_loss_of_the_answer_tokens_matches_the_padded_loss():
    torch.manual_seed(2)
    model = GPTNeoXForCausalLM(config()).train()
    rows = [{"input_ids": s, "labels": [IGNORE_INDEX] * (len(s) // 2) + s[len(s) // 2 :]} for s in SEQS]
    b = SFTCollator(0)(rows)
    module = SFTModule(model, None, optimizer=None)
    loss, n = module.loss(b)
    ref, n_ref = sft_loss(module(b["input_ids"], b["attention_mask"]), b["labels"])
    # answer tokens predicted: each row's labelled tokens after its first
    assert int(n) == int(n_ref) == sum(len(s) - len(s) // 2 for s in SEQS)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref.backward()
    for g, r in zip(grads, [p.grad for p in model.parameters()], strict=True):
        assert torch.allclose(g, r, atol=1e-6)


def test_checkpointing_and_other_models_keep_the_padded_forward():
    model = GPTNeoXForCausalLM(config())
    assert supports_packing(model)
    model.gradient_checkpointing_enable()
    assert not supports_packing(model)
    assert not supports_packing(torch.nn.Linear(2, 2))


def test_fused_adamw_on_cpu_unless_the_config_chose():
    params = [torch.nn.Parameter(torch.randn(3))]
    assert fused_on_cpu(functools.partial(torch.optim.AdamW, lr=0.1))(params=params).defaults["fused"] is True
    chosen = fused_on_cpu(functools.partial(torch.optim.AdamW, lr=0.1, foreach=False))(params=params)
    assert not chosen.defaults["fused"] and chosen.defaults["foreach"] is False
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    assert fused_on_cpu(sgd) is sgd


def test_pad_and_mask():
    seqs = [[1, 2, 3], [4], [], [5, 6]]
    assert pad(seqs, 9).tolist() == [[1, 2, 3], [4, 9, 9], [9, 9, 9], [5, 6, 9]]
    assert pad(seqs, 9, "left").tolist() == [[1, 2, 3], [9, 9, 4], [9, 9, 9], [9, 5, 6]]
    assert padding_mask(seqs, "left").tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0], [0, 1, 1]]
    assert pad([torch.tensor([1, 2]), torch.tensor([3])], 0).tolist() == [[1, 2], [3, 0]]


@pytest.mark.parametrize("packed", [True, False])
def test_ppo_answer_logprobs_values_and_gradients_match_each_answer_alone(packed):
    """A rollout batch (left-padded prompts, right-padded answers): log-probs and values of the real answer
    tokens from the packed (and the padded) forward, against transformers on each prompt + answer alone."""
    from rmopt.modules.ppo import rollout_tensors
    from rmopt.value_head import answer_forward

    torch.manual_seed(3)
    model = GPTNeoXForCausalLM(config(rotary_pct=0.25)).train()
    head = torch.nn.Linear(32, 1)
    prompts, answers = [[5, 6, 7], [3], [11, 12, 13, 14, 15]], [[20, 21], [22, 23, 24, 25], [0]]  # 0 = pad id
    b = rollout_tensors(prompts, answers, 0)
    out = answer_forward(model, b, head, temperature=0.7, packed=packed)
    mask = b["answer_mask"]
    assert out["logprobs"].shape == mask.shape == (3, 4)
    alone_lp, alone_v = [], []
    for p, a in zip(prompts, answers, strict=True):
        hidden = model.base_model(input_ids=torch.tensor([p + a])).last_hidden_state[0, len(p) - 1 : -1]
        logits = model.get_output_embeddings()(hidden) / 0.7
        alone_lp.append(torch.log_softmax(logits, -1).gather(1, torch.tensor(a)[:, None]).squeeze(1))
        alone_v.append(head(hidden).squeeze(-1))
    alone_lp, alone_v = torch.cat(alone_lp), torch.cat(alone_v)
    assert torch.allclose(out["logprobs"][mask], alone_lp, atol=1e-5)
    assert torch.allclose(out["values"][mask], alone_v, atol=1e-5)
    weights = torch.linspace(-1.0, 2.0, int(mask.sum()))
    ((out["logprobs"][mask] + out["values"][mask]) * weights).sum().backward()
    packed = [p.grad.clone() for p in [*model.parameters(), *head.parameters()]]
    model.zero_grad()
    head.zero_grad()
    ((alone_lp + alone_v) * weights).sum().backward()
    for g, ref in zip(packed, [p.grad for p in [*model.parameters(), *head.parameters()]], strict=True):
        assert torch.allclose(g, ref, atol=1e-5)


def test_a_policy_and_its_reference_run_their_shared_layers_once():
    """With the bottom layers frozen and shared (num_layers_unfrozen), the paired states are each model's own
    packed states exactly; a full copy shares nothing."""
    from rmopt.modules.ppo import rollout_tensors
    from rmopt.value_head import (
        answer_states,
        build_reference,
        freeze_bottom,
        paired_answer_states,
        shared_layers,
    )

    torch.manual_seed(4)
    cfg = config()
    cfg.num_hidden_layers = 3
    policy = GPTNeoXForCausalLM(cfg).eval()
    reference = build_reference(policy, freeze_bottom(policy, 1))
    with torch.no_grad():  # the policy has trained: its unfrozen top layer differs from the reference's
        for p in policy.base_model.layers[2].parameters():
            p.add_(0.1)
    assert shared_layers(policy, reference) == 2
    b = rollout_tensors([[5, 6, 7], [3], [11, 12, 13, 14]], [[20, 21], [22, 23, 24], [25]], 0)
    with torch.no_grad():
        states, ref_states = paired_answer_states(policy, reference, b, packed=True)
        alone = answer_states(policy, b, packed=True), answer_states(reference, b, packed=True)
        assert torch.equal(states, alone[0]) and torch.equal(ref_states, alone[1])
        assert not torch.allclose(states[b["answer_mask"]], ref_states[b["answer_mask"]])
    assert shared_layers(policy, build_reference(policy, [])) == 0  # num_layers_unfrozen=-1: a full copy
