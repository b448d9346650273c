"""PPO against a proxy reward (one RM or an ensemble combined by an objective), manual optimisation.

One ``training_step`` is one PPO iteration: sample a rollout batch (KV-cached, stops at EOS), score
it with every member at once, compute reference log-probs, per-token KL penalty + sequence reward at
the answer's last token, GAE, whitened advantages, then ``ppo_epochs`` passes of clipped policy and
value updates over shuffled mini-batches. The math lives in :mod:`rmopt.rlhf`. A step whose metrics no
logger writes computes none of them (no entropy, no KL), and then, with no KL term, no penalty and a
fixed coefficient, leaves out the reference's forward too: training is the same bit for bit.

``algorithm=grpo`` / ``rloo`` (critic-free) sample ``group_size`` answers to each of
``rollout_batch_size / group_size`` prompts, fold the KL penalty (``kl_coef``) into each answer's
reward, and replace GAE by the group baseline (GRPO: the group's mean, divided by its std unless
``scale_rewards=false``; RLOO: the mean of the other answers), one advantage per answer; GRPO can add
``beta`` times the k3 KL to the initial policy to the loss. No value head is trained.

Step counting: Lightning counts a manual-optimisation step each time a *LightningOptimizer* steps.
The inner mini-batch updates step the wrapped torch optimizer directly and only the last update of
an iteration goes through Lightning, so ``trainer.global_step`` (and ``trainer.max_steps``, the
checkpoint cadence and the logged step) count PPO iterations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from rmopt.data.collate import pad
from rmopt.generation import decode_answers, encode_prompts, sample_ids
from rmopt.modules.common import clip_gradients, configure_optimizer, log_samples, logs_this_step
from rmopt.rlhf import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    group_advantages,
    kl_estimators,
    kl_loss,
    leave_one_out_advantages,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    sequence_kl,
    sequence_rewards,
    value_loss,
)
from rmopt.stats import group_means, standard_error
from rmopt.utils import atomic_write_json
from rmopt.value_head import answer_forward, answer_kl, paired_answer_states


@dataclass
class PPOSettings:
    """The PPO knobs of ``conf/ppo.yaml`` (see the comments there)."""

    rollout_batch_size: int = 64
    minibatch_size: int = 16
    ppo_epochs: int = 4
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 1.0
    max_grad_norm: float | None = 1.0
    max_new_tokens: int = 256
    max_length: int = 520
    temperature: float = 1.0
    kl_controller: str = "fixed"
    kl_coef: float = 0.01
    kl_init: float = 0.1
    kl_target: float = 6.0
    kl_horizon: int = 10000
    kl_estimator: str = "k1"
    score_clip: float | None = None
    whiten_advantages: bool = True
    eval_every: int = 100
    eval_temperature: float | None = None  # None: the training temperature
    eval_top_p: float = 1.0
    eval_samples: int = 1
    eval_batch_size: int = 256
    sample_every: int = 50
    sample_count: int = 4
    score_batch_size: int = 64
    packed_forward: bool = True
    # the algorithm (conf/algorithm/*.yaml): ppo (GAE with a value head), grpo or rloo (critic-free, group baselines)
    algorithm: str = "ppo"
    group_size: int = 1  # answers per prompt in a step (grpo, rloo: at least 2)
    scale_rewards: bool = True  # grpo: divide by the group's std (false: Dr. GRPO)
    beta: float = 0.0  # grpo: coefficient of the k3 KL-to-initial-policy loss term

    @property
    def critic_free(self) -> bool:
        return self.algorithm in ("grpo", "rloo")


ALGORITHMS = ("ppo", "grpo", "rloo")


def check_algorithm(s: PPOSettings) -> None:
    """The algorithm's settings, checked before any model is loaded."""
    from rmopt.errors import RmoptError

    if s.algorithm not in ALGORITHMS:
        raise RmoptError(f"algorithm={s.algorithm!r} is not valid; expected one of {', '.join(ALGORITHMS)}")
    if s.critic_free:
        if int(s.group_size) < 2:
            raise RmoptError(f"algorithm.group_size={s.group_size} is not valid for {s.algorithm}; expected at least 2 "
                             "answers per prompt (the baseline is the group's other answers)")
        if s.rollout_batch_size % s.group_size:
            raise RmoptError(f"rollout_batch_size={s.rollout_batch_size} is not a multiple of algorithm.group_size={s.group_size}; "
                             "a step samples rollout_batch_size / group_size prompts x group_size answers")
        if s.beta < 0:
            raise RmoptError(f"algorithm.beta={s.beta} is not valid; expected a KL loss coefficient >= 0")


def kl_controller(s: PPOSettings):
    """The KL coefficient's controller, with the KL settings checked before any model is loaded."""
    from rmopt.errors import RmoptError
    from rmopt.rlhf import KL_ESTIMATORS

    check_algorithm(s)

    if s.kl_estimator not in KL_ESTIMATORS:
        raise RmoptError(f"kl_estimator={s.kl_estimator!r} is not valid; expected one of {', '.join(KL_ESTIMATORS)}")
    if int(s.eval_samples) < 1:
        raise RmoptError(f"eval_samples={s.eval_samples} is not valid; expected answers per eval prompt >= 1")
    if s.kl_controller == "fixed":
        return FixedKLController(s.kl_coef)
    if s.kl_controller == "adaptive":
        for name in ("kl_target", "kl_horizon"):
            if not getattr(s, name) > 0:
                raise RmoptError(f"{name}={getattr(s, name)} is not valid for kl_controller=adaptive; expected a number > 0")
        return AdaptiveKLController(s.kl_init, s.kl_target, s.kl_horizon)
    raise RmoptError(f"kl_controller={s.kl_controller!r} is not valid; expected fixed or adaptive")


def rollout_tensors(prompt_ids: list[list[int]], answer_ids: list[list[int]], pad_id: int, side: str = "left"):
    """Prompt + answer rows as model inputs, with where each answer token sits.

    ``side="left"``: prompts left-padded to a common length P, answers right-padded after them, so
    answer token j of every row is at column P + j. ``side="right"``: each prompt + answer is
    right-padded as one row, answer token j of row b at column len(prompt_b) + j. Either way the
    answer mask [B, A] marks real answer tokens, and the last one (the EOS when reached) is where
    the sequence reward goes. Positions skip left padding.
    """
    B = len(prompt_ids)
    A = max(len(a) for a in answer_ids)
    answer_mask = pad([[1] * len(a) for a in answer_ids], 0).bool()
    answers = pad(answer_ids, pad_id)
    if side == "left":
        P = max(len(p) for p in prompt_ids)
        prompts = pad(prompt_ids, pad_id, side="left")
        prompt_mask = pad([[1] * len(p) for p in prompt_ids], 0, side="left")
        input_ids = torch.cat([prompts, answers], dim=1)
        attention_mask = torch.cat([prompt_mask, answer_mask.long()], dim=1)
        answer_positions = (P + torch.arange(A)).expand(B, A).clone()
    elif side == "right":
        rows = [p + a for p, a in zip(prompt_ids, answer_ids, strict=True)]
        input_ids = pad(rows, pad_id)
        attention_mask = pad([[1] * len(r) for r in rows], 0)
        starts = torch.tensor([len(p) for p in prompt_ids])[:, None]
        answer_positions = (starts + torch.arange(A)).clamp(max=input_ids.size(1) - 1)
    else:
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "answer_positions": answer_positions,
        "answer_ids": answers,
        "answer_mask": answer_mask,
    }


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


class PPOModule(L.LightningModule):
    def __init__(
        self,
        policy,
        reference,
        tokenizer,
        ensemble,
        objective,
        prompts,
        eval_prompts,
        settings: PPOSettings,
        optimizer,
        output_dir: str | Path,
        seed: int = 0,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.ensemble, self.objective, self.s = ensemble, objective, settings
        self.prompts, self.eval_prompts = prompts, eval_prompts
        self.optimizer_factory, self.output_dir, self.seed = optimizer, Path(output_dir), int(seed)
        self.kl_ctl = kl_controller(settings)
        self._perms: dict[int, np.ndarray] = {}
        self._columns: tuple[list, list] | None = None
        # the RM sees the policy's own ids when both share a tokenizer; else decode and re-tokenize
        self.same_tokenizer = ensemble.tokenizer.get_vocab() == tokenizer.get_vocab()
        self.history: list[dict] = []

    # ------------------------------------------------------------------ data
    def prompt_batch(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[list[str], list[str]]:
        """The prompts of process ``rank`` in PPO iteration ``step``: a fixed function of (seed, step, rank).

        Under ddp the ranks take consecutive slices of one shuffled order, so they sample different
        prompts and one step consumes ``rollout_batch_size x world_size`` of them; resuming repeats nothing.
        """
        n, G = len(self.prompts), self.s.group_size if self.s.critic_free else 1
        B = self.s.rollout_batch_size // G  # grpo / rloo: each prompt G times in a row
        first = (step * world_size + rank) * B
        idx = []
        for i in range(first, first + B):
            epoch = i // n
            if epoch not in self._perms:
                self._perms = {epoch: np.random.default_rng(_seed(self.seed, epoch)).permutation(n)}
            idx.append(int(self._perms[epoch][i % n]))
        if self._columns is None:  # plain lists: a dataset's select costs milliseconds a step
            self._columns = (list(self.prompts["instruction"]), list(self.prompts["input"]))
        instructions, inputs = self._columns
        rows = [i for i in idx for _ in range(G)]
        return [instructions[i] for i in rows], [inputs[i] for i in rows]

    def _noise_seed(self, *parts: int) -> int:
        """A seed for this process's sampling noise: rank 0 (and a single process) uses ``parts`` alone."""
        rank = self.global_rank
        return _seed(self.seed, *parts, *((rank,) if rank else ()))

    # ------------------------------------------------------------------ rollouts
    def score(self, instructions, inputs, prompt_ids, answer_ids, texts) -> torch.Tensor:
        """[k, B] proxy scores, tokenized once for all members."""
        bs = self.s.score_batch_size
        if not self.same_tokenizer:
            return self.ensemble.score(instructions, inputs, texts, batch_size=bs).float()
        eos, L_max = self.tokenizer.eos_token_id, self.ensemble.max_length
        ids = [p + (a if a and a[-1] == eos else a + [eos]) for p, a in zip(prompt_ids, answer_ids, strict=True)]
        ids = [s if len(s) <= L_max else s[: L_max - 1] + [eos] for s in ids]
        return torch.cat([self.ensemble.score_ids(ids[i : i + bs]).cpu() for i in range(0, len(ids), bs)], dim=1)

    @torch.inference_mode()
    def sample(self, instructions, inputs, generator, temperature: float, top_p: float = 1.0) -> dict:
        """Answers to a batch of prompts and their model inputs (no scoring, no log-probs)."""
        tok = self.tokenizer
        prompt_ids = encode_prompts(tok, instructions, inputs)
        budgets = [min(self.s.max_new_tokens, self.s.max_length - len(p)) for p in prompt_ids]  # per row: a long
        if min(budgets) < 1:  # prompt shortens only its own answer
            from rmopt.errors import RmoptError

            longest = max(len(p) for p in prompt_ids)
            raise RmoptError(f"max_length={self.s.max_length} leaves no room for an answer after a prompt of {longest} tokens")
        answer_ids = sample_ids(
            self.policy.lm, prompt_ids, tok.eos_token_id, tok.pad_token_id, budgets, temperature, top_p, generator=generator
        )
        texts, finished = decode_answers(tok, answer_ids)
        batch = {k: v.to(self.device) for k, v in rollout_tensors(prompt_ids, answer_ids, tok.pad_token_id).items()}
        return {"prompt_ids": prompt_ids, "answer_ids": answer_ids, "texts": texts, "finished": finished, "batch": batch}

    @torch.inference_mode()
    def rollout(self, instructions, inputs, generator, temperature: float, top_p: float = 1.0, policy: bool = True,
                reference: bool = True) -> dict:
        """Sample and score one batch of prompts, with the log-probs and values PPO needs (no gradients);
        ``policy=False`` leaves out the policy's own forward (log-probs and values None), ``reference=False``
        the reference's (its log-probs None)."""
        r = self.sample(instructions, inputs, generator, temperature, top_p)
        batch = r["batch"]
        value_head = None if self.s.critic_free else self.policy.value_head
        if policy and reference:
            states, ref_states = paired_answer_states(self.policy.lm, self.reference, batch, self.s.packed_forward)
            out = answer_forward(self.policy.lm, batch, value_head, self.s.temperature, states=states)
            ref = answer_forward(self.reference, batch, None, self.s.temperature, states=ref_states)
        else:
            out = answer_forward(self.policy.lm, batch, value_head, self.s.temperature, packed=self.s.packed_forward) if policy else {}
            ref = answer_forward(self.reference, batch, None, self.s.temperature, packed=self.s.packed_forward) if reference else {}
        scores = self.score(instructions, inputs, r["prompt_ids"], r["answer_ids"], r["texts"]).to(self.device)
        return {
            "batch": batch,
            "logprobs": out.get("logprobs"),
            "values": out.get("values"),
            "ref_logprobs": ref.get("logprobs"),
            "scores": scores,
            "combined": self.objective(scores).float(),
            "texts": r["texts"],
            "finished": r["finished"],
        }

    # ------------------------------------------------------------------ training
    def training_step(self, _batch, batch_idx):
        s, step = self.s, self.global_step
        # the first and last evaluations run here, inside the training step (the wrapped model's forward
        # under distributed strategies), rather than in on_train_start/on_train_end
        if step == 0 and not self.eval_path(0).exists():
            self.evaluate(0)
        start = time.perf_counter()
        self.policy.eval()  # no dropout: the ratio must be exactly 1 before the first update
        self.reference.eval()
        generator = torch.Generator(device=self.device).manual_seed(self._noise_seed(step, 1))
        world = self.trainer.world_size if self._trainer is not None else 1
        instructions, inputs = self.prompt_batch(step, self.global_rank, world)
        n = len(instructions)
        order_gen = torch.Generator().manual_seed(self._noise_seed(step, 2))
        updates = [(e, i) for e in range(s.ppo_epochs) for i in range(0, n, s.minibatch_size)]
        single = self.one_update(len(updates))
        seen = self.metrics_seen()
        r = self.rollout(instructions, inputs, generator, s.temperature, policy=not single,
                         reference=seen or self.needs_reference())
        batch, mask = r["batch"], r["batch"]["answer_mask"]
        first, first_s = None, 0.0
        if single:
            perm = torch.randperm(n, generator=order_gen).to(self.device)
            t = time.perf_counter()
            first = self._update_forward({k: v[perm] for k, v in batch.items()}, seen)
            first_s = time.perf_counter() - t  # the update's forward: not the rollout's time
            unpermute = torch.empty_like(perm)
            unpermute[perm] = torch.arange(n, device=perm.device)
            r["logprobs"] = first["logprobs"].detach()[unpermute]
            r["values"] = None if s.critic_free else first["values"].detach()[unpermute]
        old_logprobs = r["logprobs"].clone()
        # without the reference (no KL term, coefficient 0, no KL metric seen) every KL term is exactly zero
        ref_logprobs = old_logprobs.clone() if r["ref_logprobs"] is None else r["ref_logprobs"].clone()
        if s.critic_free:  # a whole answer's reward against its group's: no value head
            old_values = returns = None
            combined = r["combined"] if s.score_clip is None else r["combined"].clamp(-s.score_clip, s.score_clip)
            seq_rewards, _ = sequence_rewards(combined, old_logprobs, ref_logprobs, mask, self.kl_ctl.value, s.kl_estimator)
            if s.algorithm == "grpo":
                seq_adv = group_advantages(seq_rewards, s.group_size, s.scale_rewards)
            else:
                seq_adv = leave_one_out_advantages(seq_rewards, s.group_size)
            advantages = seq_adv.to(old_logprobs.dtype)[:, None] * mask
        else:
            old_values = r["values"].clone()
            rewards, _ = per_token_rewards(
                r["combined"], old_logprobs, ref_logprobs, mask, self.kl_ctl.value, s.kl_estimator, s.score_clip
            )
            advantages, returns = gae(rewards, old_values, mask, s.gamma, s.lam)
            if s.whiten_advantages:
                advantages = masked_whiten(advantages, mask)
        rollout_time = time.perf_counter() - start - first_s

        opt = self.optimizers()
        acc: dict[str, list[float]] = {}
        for u, (_, i) in enumerate(updates):
            if i == 0 and first is None:
                perm = torch.randperm(n, generator=order_gen).to(self.device)
            idx = perm[i : i + s.minibatch_size]
            out = first if first is not None else self._update_forward({k: v[idx] for k, v in batch.items()}, seen)
            pl, pstats = policy_loss(out["logprobs"], old_logprobs[idx], advantages[idx], mask[idx], s.cliprange)
            if s.critic_free:
                vl, vstats = torch.zeros(()), {"vf_clipfrac": torch.zeros(())}
                kl_term = kl_loss(out["logprobs"], ref_logprobs[idx], mask[idx]) if s.beta else torch.zeros(())
                loss = pl + s.beta * kl_term
            else:
                vl, vstats = value_loss(out["values"], old_values[idx], returns[idx], mask[idx], s.cliprange_value)
                kl_term = torch.zeros(())
                loss = pl + s.vf_coef * vl
            opt.zero_grad()
            self.manual_backward(loss)
            if s.max_grad_norm:
                clip_gradients(self, opt, s.max_grad_norm)
            if u == len(updates) - 1:
                opt.step()  # counted by Lightning: one global step per PPO iteration
            else:
                opt.optimizer.step()
            if not seen:  # nothing logs this step's metrics
                continue
            for key, v in {
                "loss/policy": pl, "loss/value": vl, "loss/total": loss, "policy/entropy": masked_mean(out["entropy"], mask[idx]),
                "policy/clipfrac": pstats["clipfrac"], "policy/approx_kl": pstats["approx_kl"],
                "value/clipfrac": vstats["vf_clipfrac"], "loss/kl": kl_term,
            }.items():
                acc.setdefault(key, []).append(float(v.detach()) if torch.is_tensor(v) else float(v))

        kl_coef_used = self.kl_ctl.value
        kls = {}
        if r["ref_logprobs"] is not None:
            with torch.no_grad():
                kls = {name: sequence_kl(v, mask).mean() for name, v in kl_estimators(old_logprobs, ref_logprobs).items()}
            # every rank updates the coefficient with the KL of the whole step (all ranks' answers)
            step_kl = kls["k1"] if world == 1 else self.trainer.strategy.reduce(kls["k1"].clone(), reduce_op="mean")
            self.kl_ctl.update(float(step_kl), n * world)
        self.history.append({"step": step, "proxy": float(r["combined"].mean()), "kl": float(kls["k1"]) if kls else None})
        last = self.trainer.max_steps is not None and step + 1 == self.trainer.max_steps
        if self._progress_bar():
            self.log("proxy", float(r["combined"].mean()), prog_bar=True, logger=False, batch_size=n)
        if seen:
            self._log_step(r, kls, kl_coef_used, mask, acc, n, start, rollout_time,
                           None if s.critic_free else (old_values, returns))
        if s.sample_every and step % s.sample_every == 0 and s.sample_count:
            log_samples(
                self,
                [
                    {"instruction": i, "input": x, "answer": a, "proxy": float(c)}
                    for i, x, a, c in list(zip(instructions, inputs, r["texts"], r["combined"].tolist(), strict=True))[: s.sample_count]
                ],
            )
        if (s.eval_every and (step + 1) % s.eval_every == 0) or (last and not self.eval_path(step + 1).exists()):
            self.evaluate(step + 1)

    def _log_step(self, r: dict, kls: dict, kl_coef_used: float, mask, acc: dict, n: int, start: float,
                  rollout_time: float, value_targets) -> None:
        elapsed = time.perf_counter() - start
        scores = r["scores"]
        metrics = {
            "reward/proxy": r["combined"].mean(),
            "reward/member_std": scores.std(0, unbiased=False).mean(),
            **{f"reward/member_{j}": scores[j].mean() for j in range(scores.size(0))},
            **{f"kl/{name}": v for name, v in kls.items()},
            "kl/coef": kl_coef_used,
            **({} if value_targets is None else {"value/explained_variance": explained_variance(*value_targets, mask)}),
            "answer/length": mask.sum(1).float().mean(),
            "answer/finished": float(np.mean(r["finished"])),
            "perf/samples_per_s": n / elapsed,
            "perf/rollout_s": rollout_time,
            "perf/step_s": elapsed,
            **{k: float(np.mean(v)) for k, v in acc.items()},
        }
        self.log_dict({k: float(v) for k, v in metrics.items()}, prog_bar=False, batch_size=n)

    def metrics_seen(self) -> bool:
        """Whether this step's metrics reach anyone: a logger that writes this step (every
        ``log_every_n_steps``; without a trainer, assume so). Unseen, they are neither logged nor computed."""
        if self._trainer is None:
            return True
        return bool(self.loggers) and logs_this_step(self)

    def needs_reference(self) -> bool:
        """Whether the update needs the reference's log-probs whatever is logged: a KL loss term (``beta``), a
        KL penalty (``kl_coef`` not 0) or an adaptive coefficient (it follows the KL)."""
        s = self.s
        return (s.critic_free and s.beta != 0) or not isinstance(self.kl_ctl, FixedKLController) or self.kl_ctl.value != 0

    def _progress_bar(self) -> bool:
        return self._trainer is not None and self.trainer.progress_bar_callback is not None

    def one_update(self, updates: int) -> bool:
        """One update on the whole batch (``ppo_epochs=1``, one mini-batch): its own forward then gives the
        rollout's log-probs and values (the policy has not moved yet), so the rollout runs the reference's only."""
        return updates == 1

    def _update_forward(self, sub: dict, with_entropy: bool = True) -> dict:
        """The policy's forward on a mini-batch of the rollout, with gradients: log-probs, values, entropy (a
        logged diagnostic: ``with_entropy=False`` leaves it out)."""
        value_head = None if self.s.critic_free else self.policy.value_head
        return answer_forward(self.policy.lm, sub, value_head, self.s.temperature, with_entropy=with_entropy,
                              packed=self.s.packed_forward)

    # ------------------------------------------------------------------ evaluation
    def eval_path(self, step: int) -> Path:
        return self.output_dir / "eval" / f"step_{step:06d}.json"

    def eval_settings(self) -> dict:
        """How an evaluation samples (written into every eval file)."""
        s = self.s
        temperature = s.temperature if s.eval_temperature is None else float(s.eval_temperature)
        return {
            "temperature": temperature,
            "top_p": float(s.eval_top_p),
            "samples": int(s.eval_samples),
            "prompts": len(self.eval_prompts),
            "train_temperature": float(s.temperature),
            "kl": f"KL(policy || initial policy) at temperature {s.temperature:g}, top-p 1, on answers sampled "
            "there: per-token KL summed over the vocabulary, summed along each answer (kl_k1: log-ratio of the sampled tokens)",
        }

    @torch.inference_mode()
    def evaluate(self, step: int) -> dict | None:
        """Answers to the held-out prompts, their proxy scores and the KL from the initial policy -> ``eval/step_NNNNNN.json``.

        ``eval_samples`` answers per prompt. The KL is always measured on answers sampled at the training
        settings (temperature, top-p 1); with other evaluation settings a second set of answers, sampled at
        those, carries the proxy (and later gold) scores. Every mean comes with its standard error over prompts.
        """
        if self.eval_prompts is None or len(self.eval_prompts) == 0:
            return None
        s, settings = self.s, self.eval_settings()
        same = settings["temperature"] == s.temperature and settings["top_p"] == 1.0
        m = settings["samples"]
        was_training = self.policy.training
        self.policy.eval()
        # the same noise at every evaluation: curves differ by the policy, not the draw
        kl_gen = torch.Generator(device=self.device).manual_seed(_seed(self.seed, 7))
        eval_gen = kl_gen if same else torch.Generator(device=self.device).manual_seed(_seed(self.seed, 8))
        ev, per_batch = self.eval_prompts, max(1, s.eval_batch_size // m)
        rows_out, members, kl_prompt, kl_exact, kl_k1 = [], [], [], [], []
        for start in range(0, len(ev), per_batch):
            chunk = ev.select(range(start, min(start + per_batch, len(ev))))
            instr = [i for i in chunk["instruction"] for _ in range(m)]
            inp = [x for x in chunk["input"] for _ in range(m)]
            prompt = [start + j for j in range(len(chunk)) for _ in range(m)]
            drawn = self.sample(instr, inp, kl_gen, s.temperature, 1.0)
            mask = drawn["batch"]["answer_mask"]
            kl = {k: sequence_kl(v, mask) for k, v in answer_kl(self.policy.lm, self.reference, drawn["batch"], s.temperature,
                                                                              packed=s.packed_forward).items()}
            kl_prompt += prompt
            kl_exact += kl["exact"].tolist()
            kl_k1 += kl["k1"].tolist()
            if not same:
                drawn = self.sample(instr, inp, eval_gen, settings["temperature"], settings["top_p"])
            scores = self.score(instr, inp, drawn["prompt_ids"], drawn["answer_ids"], drawn["texts"]).to(self.device)
            combined = self.objective(scores).float()
            members.append(scores.cpu())
            lengths = drawn["batch"]["answer_mask"].sum(1).tolist()
            for j in range(len(instr)):
                row = {
                    "prompt": prompt[j],
                    "instruction": instr[j],
                    "input": inp[j],
                    "answer": drawn["texts"][j],
                    "finished": drawn["finished"][j],
                    "length": int(lengths[j]),
                    "proxy": float(combined[j]),
                    "proxy_members": [float(v) for v in scores[:, j]],
                }
                if same:  # this answer's own KL
                    row["kl"], row["kl_k1"] = kl_exact[-len(instr) + j], kl_k1[-len(instr) + j]
                rows_out.append(row)
        self.policy.train(was_training)
        scores = torch.cat(members, dim=1)
        _, kl_pp = group_means(kl_exact, kl_prompt)
        _, k1_pp = group_means(kl_k1, kl_prompt)
        _, proxy_pp = group_means([r["proxy"] for r in rows_out], [r["prompt"] for r in rows_out])
        record = {
            "step": step,
            "objective": repr(self.objective),
            "settings": settings,
            "kl": float(kl_pp.mean()),
            "kl_se": standard_error(kl_pp),
            "kl_k1": float(k1_pp.mean()),
            "kl_k1_se": standard_error(k1_pp),
            "proxy": float(proxy_pp.mean()),
            "proxy_se": standard_error(proxy_pp),
            "proxy_members": [float(v) for v in scores.mean(1)],
            "proxy_member_std": float(scores.std(0, unbiased=False).mean()),
            "kl_per_prompt": [float(v) for v in kl_pp],
            "kl_k1_per_prompt": [float(v) for v in k1_pp],
            "rows": rows_out,
        }
        if self.global_rank == 0:  # under ddp every process evaluates the same policy with the same noise
            atomic_write_json(self.eval_path(step), record)
        if self._trainer is not None and self.loggers:
            for logger in self.loggers:
                logger.log_metrics({"eval/proxy": record["proxy"], "eval/kl": record["kl"]}, step=step)
        return record

    def on_train_start(self):
        self.ensemble.models = [m.to(self.device) for m in self.ensemble.models]
        self.ensemble.device = self.device

    def on_train_end(self):  # a run stopped before max_steps (the last step evaluates inside training_step)
        if not self.eval_path(self.global_step).exists():
            self.evaluate(self.global_step)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint):
        checkpoint["kl_coef"] = self.kl_ctl.value

    def on_load_checkpoint(self, checkpoint):
        if "kl_coef" in checkpoint:
            self.kl_ctl.value = float(checkpoint["kl_coef"])

    def configure_optimizers(self):
        return configure_optimizer(self, self.policy.trainable_parameters(), self.optimizer_factory)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(_Steps(), batch_size=None)


class _Steps(torch.utils.data.IterableDataset):
    """An endless stream of placeholders: the module picks each iteration's prompts from its step."""

    def __iter__(self):
        while True:
            yield 0


