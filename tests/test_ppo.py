"""PPO stage: reward placement, KL at the start, trunk sharing, objectives, gold eval, resume, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose, save_stand_in_rms

from rmopt.modules.ppo import rollout_tensors
from rmopt.rlhf import per_token_rewards
from rmopt.value_head import answer_forward, build_reference, freeze_bottom


class LengthReward:
    """A stand-in proxy 'ensemble' with a reward that is easy to raise: shorter sequences score higher."""

    k, models, device = 1, [], torch.device("cpu")

    def __init__(self, tokenizer, max_length=64):
        self.tokenizer, self.max_length = tokenizer, max_length

    def score_ids(self, ids):
        return torch.tensor([[-len(s) / 10.0 for s in ids]])


@pytest.fixture(scope="module")
def rm_dirs(toy_sft_dir, tmp_path_factory):
    """Two stand-in reward models (SFT trunk, random heads, seeds 1 and 2)."""
    return save_stand_in_rms(toy_sft_dir, tmp_path_factory.mktemp("rms"))


def ppo_cfg(toy_sft_dir, rm_dirs, out, *overrides):
    return compose(
        "ppo",
        [
            "experiment=toy",
            f"model.name_or_path={toy_sft_dir}",
            f'proxy_rm_path="{rm_dirs}/rm_seed{{seed}}"',
            f"output_dir={out}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "rollout_batch_size=8",
            "minibatch_size=4",
            "ppo_epochs=2",
            "max_new_tokens=16",
            "eval_prompts=6",
            "sample_every=0",
            *overrides,
        ],
        output_dir=out / "hydra",
    )


def test_reward_lands_on_eos_for_left_and_right_padding(toy_sft_dir):
    from rmopt.models import ModelSource

    source = ModelSource(name_or_path=str(toy_sft_dir))
    tok = source.load_tokenizer()
    lm = source.load_causal_lm(tok).eval()
    eos, pad_id = tok.eos_token_id, tok.pad_token_id
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    answers = [[20, 21, eos], [22, eos], [23, 24, 25, 26]]  # the last one never reached EOS
    scores = torch.tensor([1.0, 2.0, 3.0])
    logprobs = {}
    for side in ("left", "right"):
        batch = rollout_tensors(prompts, answers, pad_id, side=side)
        mask = batch["answer_mask"]
        rewards, _ = per_token_rewards(scores, torch.zeros(mask.shape), torch.zeros(mask.shape), mask, kl_coef=0.1)
        for b, answer in enumerate(answers):
            nonzero = rewards[b].nonzero().flatten().tolist()
            assert nonzero == [len(answer) - 1], (side, b, rewards[b])
            assert rewards[b, len(answer) - 1] == scores[b]
            column = batch["answer_positions"][b, len(answer) - 1]
            assert batch["input_ids"][b, column] == answer[-1]
            if answer[-1] == eos:
                assert batch["input_ids"][b, column] == eos
            # the token before the first answer token is the prompt's last token
            assert batch["input_ids"][b, batch["answer_positions"][b, 0] - 1] == prompts[b][-1]
        with torch.no_grad():
            logprobs[side] = answer_forward(lm, batch)["logprobs"]
    # both layouts give the model the same context: identical log-probs on real answer tokens
    mask = rollout_tensors(prompts, answers, pad_id)["answer_mask"]
    torch.testing.assert_close(logprobs["left"][mask], logprobs["right"][mask], rtol=1e-5, atol=1e-5)
    # and they match a plain unpadded forward of each row
    for b, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        with torch.no_grad():
            logits = lm(torch.tensor([p + a])).logits[0]
        expected = torch.log_softmax(logits[len(p) - 1 : len(p) + len(a) - 1], -1)[torch.arange(len(a)), torch.tensor(a)]
        torch.testing.assert_close(logprobs["left"][b, : len(a)], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("unfrozen", [1, -1])
def test_kl_is_zero_when_policy_equals_reference(toy_sft_dir, rm_dirs, tmp_path, unfrozen):
    from rmopt.ppo import build_module
    from rmopt.rlhf import kl_estimators, sequence_kl

    cfg = ppo_cfg(toy_sft_dir, rm_dirs, tmp_path, f"num_layers_unfrozen={unfrozen}")
    module = build_module(cfg)
    instructions, inputs = module.prompt_batch(0)
    r = module.rollout(instructions, inputs, torch.Generator().manual_seed(0), temperature=1.0)
    assert torch.equal(r["logprobs"], r["ref_logprobs"])
    mask = r["batch"]["answer_mask"]
    for name, kl in kl_estimators(r["logprobs"], r["ref_logprobs"]).items():
        assert float(sequence_kl(kl, mask).abs().max()) == 0.0, name


def test_frozen_trunk_is_shared_and_reference_stays_initial(toy_sft_dir):
    import copy

    from rmopt.models import ModelSource

    source = ModelSource(name_or_path=str(toy_sft_dir))
    tok = source.load_tokenizer()
    lm = source.load_causal_lm(tok).eval()
    initial = copy.deepcopy(lm)
    frozen = freeze_bottom(lm, 1)
    reference = build_reference(lm, frozen)
    policy_params, ref_params = dict(lm.named_parameters()), dict(reference.named_parameters())
    assert policy_params.keys() == ref_params.keys()
    frozen_ids = {id(p) for p in frozen}
    n_layers = lm.config.num_hidden_layers
    for name, p in policy_params.items():
        top = name.startswith(f"gpt_neox.layers.{n_layers - 1}.") or "final_layer_norm" in name
        trainable = top or p is lm.get_output_embeddings().weight
        assert p.requires_grad == trainable, name
        if trainable:
            assert ref_params[name].data_ptr() != p.data_ptr(), name  # the top layer is the reference's own copy
        else:
            assert id(p) in frozen_ids
            assert ref_params[name] is p and ref_params[name].data_ptr() == p.data_ptr(), name  # shared
    # the frozen bottom layer is not duplicated: unique storage is one trunk + one extra top
    unique = {p.data_ptr() for p in [*lm.parameters(), *reference.parameters()]}
    assert len(unique) == len(policy_params) + sum(p.requires_grad for p in lm.parameters())
    # change every trainable weight of the policy: the reference still scores as the initial model
    with torch.no_grad():
        for p in lm.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    batch = rollout_tensors([[5, 6, 7], [8, 9]], [[20, 21, tok.eos_token_id], [22]], tok.pad_token_id)
    with torch.no_grad():
        ref_lp = answer_forward(reference, batch)["logprobs"]
        init_lp = answer_forward(initial, batch)["logprobs"]
        policy_lp = answer_forward(lm, batch)["logprobs"]
    assert torch.equal(ref_lp, init_lp)
    assert not torch.allclose(policy_lp, init_lp)


def test_wco_rewards_with_the_member_minimum(toy_sft_dir, rm_dirs, tmp_path):
    from rmopt.ppo import build_module

    cfg = ppo_cfg(toy_sft_dir, rm_dirs, tmp_path, "objective=wco", "seeds=[1,2]")
    module = build_module(cfg)
    assert module.ensemble.k == 2
    instructions, inputs = module.prompt_batch(0)
    r = module.rollout(instructions, inputs, torch.Generator().manual_seed(0), temperature=1.0)
    scores = r["scores"]
    assert scores.shape == (2, 8)
    assert not torch.equal(scores[0], scores[1])  # different heads: the minimum is a real choice
    torch.testing.assert_close(r["combined"], scores.min(0).values)
    # scores equal the ensemble's own text-based scoring wherever re-tokenizing the decoded answer gives
    # back the sampled ids (a sampled id sequence need not be the tokenizer's canonical one)
    from rmopt.ensemble import tokenize_pairs
    from rmopt.generation import encode_prompts

    retok = tokenize_pairs(module.tokenizer, instructions, inputs, r["texts"], 64)
    prompt_ids = encode_prompts(module.tokenizer, instructions, inputs)
    answer_ids = [row[m].tolist() for row, m in zip(r["batch"]["answer_ids"], r["batch"]["answer_mask"], strict=True)]
    same = torch.tensor([p + a == t for p, a, t in zip(prompt_ids, answer_ids, retok, strict=True)])
    assert same.sum() >= 4
    by_text = module.ensemble.score(instructions, inputs, r["texts"])
    torch.testing.assert_close(scores[:, same], by_text[:, same], rtol=1e-5, atol=1e-5)
    mask = r["batch"]["answer_mask"]
    rewards, _ = per_token_rewards(r["combined"], r["logprobs"], r["ref_logprobs"], mask, kl_coef=0.0)
    torch.testing.assert_close(rewards.sum(1), scores.min(0).values)


def test_run_gold_eval_and_resume(toy_sft_dir, rm_dirs, tmp_path):
    """Eval files at 0, every eval_every and the end with gold for every answer; ckpt_path=last resumes exactly."""
    from rmopt.ppo import load_value_head, score_gold, train
    from rmopt.toy.graded import ToyGoldReward  # the default toy world (data=toy)

    common = ("eval_every=2", "checkpoint_every=2", "seeds=[1,2]", "objective=mean")
    straight = tmp_path / "straight"
    train(ppo_cfg(toy_sft_dir, rm_dirs, straight, "trainer.max_steps=6", "gold_eval=true", *common))
    files = sorted((straight / "eval").glob("step_*.json"))
    assert [f.name for f in files] == [f"step_{s:06d}.json" for s in (0, 2, 4, 6)]
    gold = ToyGoldReward()
    for f in files:
        record = json.loads(f.read_text())
        rows = record["rows"]
        assert len(rows) == 6
        expected = gold.score([r["instruction"] for r in rows], [r["input"] for r in rows], [r["answer"] for r in rows])
        np.testing.assert_allclose([r["gold"] for r in rows], expected, rtol=1e-6)
        assert record["gold"] == pytest.approx(float(np.mean(expected)), rel=1e-5)
        assert all(len(r["proxy_members"]) == 2 for r in rows)
    assert json.loads(files[0].read_text())["kl"] == 0.0
    assert score_gold(straight, gold) == 0  # resumable: nothing left to score
    results = json.loads((straight / "results.json").read_text())
    assert [p["step"] for p in results["points"]] == [0, 2, 4, 6]
    assert (straight / "ppo.png").stat().st_size > 0
    assert (straight / "policy" / "config.json").exists()

    # killed after 4 steps, resumed to 6 with ckpt_path=last: the same value head as the straight run
    resumed = tmp_path / "resumed"
    train(ppo_cfg(toy_sft_dir, rm_dirs, resumed, "trainer.max_steps=4", *common))
    after_four = load_value_head(resumed / "policy")
    ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    torch.testing.assert_close(ckpt["state_dict"]["policy.value_head.weight"], after_four["weight"])
    out = train(ppo_cfg(toy_sft_dir, rm_dirs, resumed, "trainer.max_steps=6", "ckpt_path=last", *common))
    assert out["step"] == 6.0
    final = load_value_head(resumed / "policy")
    assert not torch.equal(final["weight"], after_four["weight"])
    for key, value in load_value_head(straight / "policy").items():
        torch.testing.assert_close(final[key], value)
    assert sorted(f.name for f in (resumed / "eval").glob("*.json")) == [f.name for f in files]


def train_with_history(cfg, ensemble) -> list[dict]:
    """Train with ``ensemble`` as the proxy and return the module's per-step history."""
    from rmopt.modules.ppo import PPOModule
    from rmopt.ppo import train

    history, original = {}, PPOModule.on_train_end

    def keep_history(self):
        history["rows"] = list(self.history)
        original(self)

    PPOModule.on_train_end = keep_history
    try:
        train(cfg, ensemble=ensemble)
    finally:
        PPOModule.on_train_end = original
    return history["rows"]


def test_short_run_raises_an_easy_proxy_reward(toy_sft_dir, tmp_path):
    from rmopt.models import ModelSource

    tok = ModelSource(name_or_path=str(toy_sft_dir)).load_tokenizer()
    cfg = ppo_cfg(
        toy_sft_dir, "unused", tmp_path, "trainer.max_steps=40", "eval_every=40", "rollout_batch_size=16", "kl_coef=0.0"
    )
    proxy = [h["proxy"] for h in train_with_history(cfg, LengthReward(tok))]
    assert len(proxy) == 40
    early, late = np.mean(proxy[:8]), np.mean(proxy[-8:])
    assert late > early + 0.15, (early, late)


def test_a_fresh_run_in_an_old_folder_drops_the_old_eval_files(toy_sft_dir, rm_dirs, tmp_path):
    from rmopt.ppo import train

    out = tmp_path / "run"
    train(ppo_cfg(toy_sft_dir, rm_dirs, out, "trainer.max_steps=4", "eval_every=1", "seeds=[1]"))
    assert len(list((out / "eval").glob("step_*.json"))) == 5
    train(ppo_cfg(toy_sft_dir, rm_dirs, out, "trainer.max_steps=2", "eval_every=2", "seeds=[1]", "kl_coef=0.05"))
    assert sorted(f.name for f in (out / "eval").glob("step_*.json")) == ["step_000000.json", "step_000002.json"]
    points = json.loads((out / "results.json").read_text())["points"]
    assert [p["step"] for p in points] == [0, 2]


def test_packed_forward_trains_and_evaluates_as_the_padded_forward(toy_sft_dir, rm_dirs, tmp_path, monkeypatch):
    """``packed_forward=true``: the same run as the padded forward up to float rounding over a few updates
    (the evaluations' answers, KL and proxy), with the shared-layer path taken."""
    import json

    import rmopt.value_head as value_head
    from rmopt.ppo import train

    calls = {"bottom": 0}
    bottom = value_head.packed_bottom

    def counted(*args, **kwargs):
        calls["bottom"] += 1
        return bottom(*args, **kwargs)

    monkeypatch.setattr(value_head, "packed_bottom", counted)
    evals = {}
    for packed in ("false", "true"):  # one of toy-tiny's 2 layers trains: the other is shared with the reference
        out = tmp_path / packed
        train(ppo_cfg(toy_sft_dir, rm_dirs, out, f"packed_forward={packed}", "trainer.max_steps=4", "eval_every=2",
                      "kl_coef=0.05", "optimizer.lr=1e-3", "num_layers_unfrozen=1"))
        # the padded run never packs; the packed one runs the shared layer once per rollout and evaluation batch
        assert (calls["bottom"] > 0) == (packed == "true")
        evals[packed] = [json.loads((out / "eval" / f"step_{s:06d}.json").read_text()) for s in (0, 2, 4)]
    for padded, packed in zip(evals["false"], evals["true"], strict=True):
        assert [r["answer"] for r in padded["rows"]] == [r["answer"] for r in packed["rows"]]
        assert packed["kl"] == pytest.approx(padded["kl"], abs=1e-4) and packed["proxy"] == pytest.approx(padded["proxy"], abs=1e-4)
    assert evals["true"][-1]["kl"] > 0.01  # the policy moved: the comparison is not of two untrained policies
