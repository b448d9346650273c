"""PPO settings change training as they say: the KL estimator, score clip, whitening, temperature, gamma/lam
and the adaptive KL controller (saved in checkpoints, restored on resume).

Each run is the real ``rmopt-ppo`` training loop on tiny toy models. The PPO math it calls is recorded on the
way (what ``per_token_rewards`` was given, the rewards that reached ``gae``, the advantages that reached
``policy_loss``) and checked against a hand computation from the rollout, written out here token by token.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from conftest import compose

import rmopt.modules.ppo as ppo_module
import rmopt.ppo as ppo_stage


class TokenSumReward:
    """A stand-in proxy 'ensemble' (one member) with a score spread over [-1, 1]: a function of the ids alone."""

    k, models, device = 1, [], torch.device("cpu")

    def __init__(self, tokenizer, max_length=64):
        self.tokenizer, self.max_length = tokenizer, max_length

    @staticmethod
    def value(ids):
        return (sum(ids) % 11) / 5.0 - 1.0

    def score_ids(self, ids):
        return torch.tensor([[self.value(s) for s in ids]])


class Recorder:
    """Wraps the PPO module's math and sampling to keep what training passed through them."""

    def __init__(self, monkeypatch, perturb: float):
        self.samples, self.rewards_calls, self.gae_calls, self.loss_calls, self.checks = [], [], [], [], []
        self.module = None
        original_build = ppo_stage.build_module

        def build(cfg, ensemble=None, data=None):
            module = original_build(cfg, ensemble, data)
            if perturb:  # the policy starts away from the reference, so every KL estimator is non-zero
                gen = torch.Generator().manual_seed(123)
                with torch.no_grad():
                    for p in module.policy.lm.parameters():
                        if p.requires_grad:
                            p.add_(torch.randn(p.shape, generator=gen) * perturb)
            self.module = module
            return module

        def sample_ids(*args, **kwargs):
            out = self._sample_ids(*args, **kwargs)
            bound = inspect.signature(self._sample_ids).bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            self.samples.append({"prompt_ids": a["prompt_ids"], "answer_ids": out, "temperature": a["temperature"], "top_p": a["top_p"]})
            return out

        def per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, kl_estimator="k1", score_clip=None):
            call = {
                "scores": scores.detach().clone(), "logprobs": logprobs.detach().clone(),
                "ref_logprobs": ref_logprobs.detach().clone(), "mask": mask.clone(), "kl_coef": float(kl_coef),
                "sample": self.samples[-1],  # the rollout this step just drew
            }
            call["hand_logprobs"] = self.hand_logprobs(call["sample"])  # before any update of this step
            call["plain_logprobs"] = self.hand_logprobs(call["sample"], temperature=1.0)
            self.rewards_calls.append(call)
            return self._per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, kl_estimator, score_clip)

        def gae(rewards, values, mask, gamma=1.0, lam=0.95):
            out = self._gae(rewards, values, mask, gamma, lam)
            self.gae_calls.append({"rewards": rewards.clone(), "values": values.clone(), "gamma": gamma, "lam": lam})
            return out

        def policy_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
            self.loss_calls.append(
                {"logprobs": logprobs.detach().clone(), "old_logprobs": old_logprobs.clone(), "advantages": advantages.clone()}
            )
            return self._policy_loss(logprobs, old_logprobs, advantages, mask, clip)

        self._sample_ids, self._per_token_rewards = ppo_module.sample_ids, ppo_module.per_token_rewards
        self._gae, self._policy_loss = ppo_module.gae, ppo_module.policy_loss
        monkeypatch.setattr(ppo_stage, "build_module", build)
        monkeypatch.setattr(ppo_module, "sample_ids", sample_ids)
        monkeypatch.setattr(ppo_module, "per_token_rewards", per_token_rewards)
        monkeypatch.setattr(ppo_module, "gae", gae)
        monkeypatch.setattr(ppo_module, "policy_loss", policy_loss)

    @torch.no_grad()
    def hand_logprobs(self, sample, temperature=None):
        """log softmax(logits / T) of each sampled answer token, policy and reference, one unpadded row at a time
        (T: the run's temperature unless given)."""
        m = self.module
        T = m.s.temperature if temperature is None else temperature
        out = []
        for lm in (m.policy.lm, m.reference):
            rows = []
            for p, a in zip(sample["prompt_ids"], sample["answer_ids"], strict=True):
                logits = lm(input_ids=torch.tensor([p + a])).logits[0, len(p) - 1 : len(p) + len(a) - 1].double() / T
                rows.append(torch.log_softmax(logits, -1)[torch.arange(len(a)), torch.tensor(a)])
            out.append(rows)
        return out


def run_ppo(toy_sft_dir, out, monkeypatch, *overrides, perturb=0.03, steps=1, resume=False):
    rec = Recorder(monkeypatch, perturb)
    cfg = compose(
        "ppo",
        [
            "experiment=toy",
            f"model.name_or_path={toy_sft_dir}",
            'proxy_rm_path="unused{seed}"',
            f"output_dir={out}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "rollout_batch_size=8",
            "minibatch_size=4",
            "ppo_epochs=2",
            "max_new_tokens=12",
            "eval_prompts=2",
            "eval_every=1000",
            "sample_every=0",
            f"trainer.max_steps={steps}",
            *(["ckpt_path=last"] if resume else []),
            *overrides,
        ],
        output_dir=out / "hydra",
    )
    from rmopt.models import ModelSource

    tok = ModelSource(name_or_path=str(toy_sft_dir)).load_tokenizer()
    ppo_stage.train(cfg, ensemble=TokenSumReward(tok))
    return rec, cfg


def kl_by_hand(r, name):
    if name == "k1":
        return r
    if name == "k2":
        return 0.5 * r * r
    return math.exp(-r) - 1.0 + r


def rewards_by_hand(call, coef, estimator, clip, eos):
    """Per-token rewards from the rollout: -coef * kl on every answer token, the (clipped) score on the last."""
    sample = call["sample"]
    rows = []
    for b, (p, a) in enumerate(zip(sample["prompt_ids"], sample["answer_ids"], strict=True)):
        lp, ref = call["logprobs"][b], call["ref_logprobs"][b]
        row = [-coef * kl_by_hand(float(lp[t] - ref[t]), estimator) for t in range(len(a))]
        scored = p + (a if a[-1] == eos else a + [eos])  # what the proxy reads: the answer closed by EOS, <= 64 ids
        score = TokenSumReward.value(scored if len(scored) <= 64 else scored[:63] + [eos])
        row[-1] += score if clip is None else min(max(score, -clip), clip)
        rows.append(row)
    return rows


def gae_by_hand(rewards, values, gamma, lam):
    adv = []
    for r, v in zip(rewards, values, strict=True):
        a, nxt, row = 0.0, 0.0, [0.0] * len(r)
        for t in reversed(range(len(r))):
            delta = r[t] + gamma * nxt - v[t]
            a = delta + gamma * lam * a
            row[t], nxt = a, v[t]
        adv.append(row)
    return adv


def whiten_by_hand(rows):
    flat = np.array([x for row in rows for x in row])
    mean, var = flat.mean(), flat.var(ddof=1)
    return [[(x - mean) / math.sqrt(var + 1e-8) for x in row] for row in rows]


def padded(rows, width):
    return torch.tensor([row + [0.0] * (width - len(row)) for row in rows], dtype=torch.float64)


def advantages_used(rec, call):
    """The advantages each rollout row had in the first epoch's policy losses, put back in rollout order."""
    n = call["logprobs"].size(0)
    full = call["logprobs"]
    found = {}
    for loss in rec.loss_calls[: -(-n // rec.module.s.minibatch_size)]:
        for row, adv in zip(loss["old_logprobs"], loss["advantages"], strict=True):
            j = next(j for j in range(n) if torch.equal(full[j], row))
            found[j] = adv
    assert sorted(found) == list(range(n))
    return torch.stack([found[j] for j in range(n)]).double()


CASES = {
    "k1": ["kl_estimator=k1"],
    "k2": ["kl_estimator=k2"],
    "k3": ["kl_estimator=k3"],
    "no-whitening": ["whiten_advantages=false"],
    "score-clip": ["score_clip=0.3"],
    "temperature": ["temperature=0.6"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_rewards_and_advantages_equal_a_hand_computation_from_the_rollout(case, toy_sft_dir, tmp_path, monkeypatch):
    common = ["kl_coef=0.5", "gamma=0.9", "lam=0.8"]
    rec, cfg = run_ppo(toy_sft_dir, tmp_path / case, monkeypatch, *common, *CASES[case])
    s, eos = rec.module.s, rec.module.tokenizer.eos_token_id
    assert len(rec.rewards_calls) == len(rec.gae_calls) == 1
    call, used = rec.rewards_calls[0], rec.gae_calls[0]
    sample, mask = call["sample"], call["mask"]
    lengths = [len(a) for a in sample["answer_ids"]]
    assert mask.sum(1).tolist() == lengths
    assert sample["temperature"] == cfg.temperature and sample["top_p"] == 1.0  # rollouts sample at the training temperature

    # the log-probs PPO trains on are those of the tempered policy and reference, on the answers it sampled
    for b, n in enumerate(lengths):
        torch.testing.assert_close(call["logprobs"][b, :n].double(), call["hand_logprobs"][0][b], atol=2e-5, rtol=0)
        torch.testing.assert_close(call["ref_logprobs"][b, :n].double(), call["hand_logprobs"][1][b], atol=2e-5, rtol=0)
    log_ratio = [float(call["logprobs"][b, t] - call["ref_logprobs"][b, t]) for b, n in enumerate(lengths) for t in range(n)]
    assert max(abs(x) for x in log_ratio) > 0.05  # the perturbed policy is away from the reference: the KL terms count

    # the rewards that reached GAE: -kl_coef x the named estimator on each token, the (clipped) score on the last
    hand = rewards_by_hand(call, s.kl_coef, cfg.kl_estimator, cfg.score_clip, eos)
    width = mask.size(1)
    torch.testing.assert_close(used["rewards"].double() * mask, padded(hand, width), atol=1e-5, rtol=0)
    assert (used["gamma"], used["lam"]) == (0.9, 0.8)

    # the advantages the policy loss used: GAE by hand (gamma 0.9, lam 0.8), whitened over the batch unless turned off
    values = [used["values"][b, :n].double().tolist() for b, n in enumerate(lengths)]
    raw = gae_by_hand(hand, values, 0.9, 0.8)
    expected = whiten_by_hand(raw) if cfg.whiten_advantages else raw
    got = advantages_used(rec, call) * mask
    torch.testing.assert_close(got, padded(expected, width), atol=1e-4, rtol=1e-4)

    # the first update of the step sees ratio 1: its forward uses the rollout's temperature too
    first = rec.loss_calls[0]
    torch.testing.assert_close(first["logprobs"], first["old_logprobs"], atol=1e-5, rtol=0)

    # and each setting made a difference here: the alternative would have given other numbers
    def differs(a, b, tol=1e-3):
        return (padded(a, width) - padded(b, width)).abs().max().item() > tol

    if case in ("k1", "k2", "k3"):
        for other in {"k1", "k2", "k3"} - {case}:
            assert differs(hand, rewards_by_hand(call, s.kl_coef, other, None, eos)), other
    if case == "no-whitening":
        assert differs(raw, whiten_by_hand(raw))
    if case == "score-clip":
        assert differs(hand, rewards_by_hand(call, s.kl_coef, "k1", None, eos))
    if case == "temperature":  # temperature-1 log-probs are other numbers
        tempered = [row.tolist() for row in call["hand_logprobs"][0]]
        assert differs(tempered, [row.tolist() for row in call["plain_logprobs"][0]])


def test_adaptive_kl_coefficient_follows_its_law_is_checkpointed_and_resumed(toy_sft_dir, tmp_path, monkeypatch):
    """kl_controller=adaptive: each step's coefficient is the last one moved by clip(KL / target - 1, +-0.2) x n / horizon,
    KL being the rollout's mean sequence k1; the checkpoint holds it and a resumed run goes on from it."""
    settings = ["kl_controller=adaptive", "kl_init=0.2", "kl_target=2.5", "kl_horizon=16", "checkpoint_every=2"]
    straight, _ = run_ppo(toy_sft_dir, tmp_path / "straight", monkeypatch, *settings, steps=4, perturb=0.05)
    coefs = [c["kl_coef"] for c in straight.rewards_calls]
    assert len(coefs) == 4 and coefs[0] == 0.2
    errors = []
    for step, call in enumerate(straight.rewards_calls):
        mask = call["mask"]
        kl = float(((call["logprobs"] - call["ref_logprobs"]) * mask).sum(1).mean())
        error = min(max(kl / 2.5 - 1.0, -0.2), 0.2)
        errors.append(kl / 2.5 - 1.0)
        nxt = coefs[step] * (1.0 + error * 8 / 16)
        if step + 1 < len(coefs):
            assert coefs[step + 1] == pytest.approx(nxt, rel=1e-6), step
    assert len({round(c, 9) for c in coefs}) == 4  # it moved at every step
    assert any(abs(e) < 0.2 for e in errors), errors  # at least one step inside the clip: the proportional law itself
    ckpt = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["kl_coef"] == pytest.approx(nxt, rel=1e-9)

    # killed after 2 steps, resumed to 4: the coefficient comes back from the checkpoint, not from kl_init
    monkeypatch.undo()
    first, _ = run_ppo(toy_sft_dir, tmp_path / "resumed", monkeypatch, *settings, steps=2, perturb=0.05)
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["kl_coef"] == pytest.approx(coefs[2], rel=1e-6)
    monkeypatch.undo()
    second, _ = run_ppo(toy_sft_dir, tmp_path / "resumed", monkeypatch, *settings, steps=4, perturb=0.05, resume=True)
    resumed = [c["kl_coef"] for c in first.rewards_calls + second.rewards_calls]
    assert resumed == pytest.approx(coefs, rel=1e-6)
    assert second.rewards_calls[0]["kl_coef"] != 0.2


def test_fixed_controller_keeps_its_coefficient(toy_sft_dir, tmp_path, monkeypatch):
    rec, _ = run_ppo(toy_sft_dir, tmp_path / "fixed", monkeypatch, "kl_coef=0.07", "kl_init=0.2", steps=2, perturb=0.05)
    assert [c["kl_coef"] for c in rec.rewards_calls] == [0.07, 0.07]
