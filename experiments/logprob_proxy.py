"""Probe: would proxies that start from the policy's own answer log-probability learn the toy task?

The demo's reward models (the SFT trunk with a score head on the last state) stay near chance on held-out
pairs, while the SFT policy's own mean log-probability of an answer already ranks about two thirds of them
right (docs/calibration.md). This probe measures, on the demo's own best-of-n answers and pairs, three
proxies scored the same way (each answer closed by EOS, as the reward models score it):

- ``logprob``: the SFT policy's mean log-probability of the answer's tokens, untrained;
- ``logprob+head``: that score plus a score head on the last state (started at zero), the whole model trained
  on the demo's noisy pairs with the pairwise loss (so it starts as ``logprob``);
- ``head``: the score head alone (started small), trained the same way: the demo's reward models' design, in
  this probe's own loop, as the control that the loop reproduces them.

For each: held-out accuracy on the pairs' validation split (against gold, ties left out) and the best-of-n
gold curve on the demo's answers, with standard errors over prompts; the oracle and the demo's own single
reward models (its bon_sampled_results.json) beside them. ``rise_share`` is issue 17's target
``bon_single_rise_share`` (the gain at the curve's peak over the oracle's gain by that n; at least 0.30),
``share_at_16`` the same at n = 16. One member per trained proxy (``--seed``); a probe for
docs/calibration.md, not a stage: the project's reward models do not yet offer this score.

Run:  python experiments/logprob_proxy.py --demo runs/demo [--steps 300] [--lr 1e-4] [--seed 1]
Writes <demo>/studies/logprob_proxy/{logprob_proxy.json, logprob_proxy.png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import (  # noqa: E402
    gold_stats,
    parse_args,
    print_table,
    save_figure,
    stats_row,
    study_main,
    write_json,
)

STUDY = "logprob_proxy"
PROXIES = ("logprob", "logprob+head", "head")


def answer_mean_logprob(logits, ids, starts, ends):
    """Mean log-probability of each row's tokens ``ids[r, starts[r]:ends[r]]`` under next-token ``logits`` [R, T, V]
    (the logits at position t predict token t + 1)."""
    import torch

    logp = logits.float().log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)  # token t+1 at t
    pos = torch.arange(ids.size(1) - 1, device=ids.device)[None]
    mask = ((pos >= starts[:, None] - 1) & (pos < ends[:, None] - 1)).to(logp.dtype)
    return (logp * mask).sum(1) / mask.sum(1)


class Proxy:
    """``alpha`` x the answer's mean log-probability + a linear head on the last token's final state."""

    def __init__(self, lm, kind: str, pad_id: int, seed: int):
        import torch

        self.lm, self.kind, self.pad_id = lm, kind, pad_id
        gen = torch.Generator().manual_seed(seed)
        self.head = torch.nn.Linear(lm.config.hidden_size, 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.zeros_like(self.head.weight) if kind != "head"
                                   else torch.empty_like(self.head.weight).normal_(0.0, 0.02, generator=gen))
            self.head.bias.zero_()
        self.alpha = torch.nn.Parameter(torch.tensor(0.0 if kind == "head" else 1.0), requires_grad=kind != "head")

    def parameters(self):
        return [*self.lm.parameters(), *self.head.parameters(), *([self.alpha] if self.kind != "head" else [])]

    def __call__(self, prompts: list[list[int]], answers: list[list[int]]):
        import torch

        from rmopt.data.collate import pad

        seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
        ids, mask = pad(seqs, self.pad_id, side="right"), pad([[1] * len(s) for s in seqs], 0, side="right")
        out = self.lm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        ends = mask.sum(1)
        score = self.head(out.hidden_states[-1][torch.arange(len(seqs)), ends - 1]).squeeze(-1)
        if self.kind == "head":
            return score
        starts = torch.tensor([len(p) for p in prompts])
        return score + self.alpha * answer_mean_logprob(out.logits, ids, starts, ends)


def _encode(tok, instructions, inputs, answers):
    from rmopt.generation import encode_prompts
    from rmopt.prompts import format_answer

    prompts = encode_prompts(tok, instructions, inputs)
    return prompts, [[tok(format_answer(a), add_special_tokens=False)["input_ids"] for a in row] for row in answers]


def _share(curve, oracle, n: int) -> tuple[float, float]:
    """The gold gain from n = 1 to ``n`` as a share of the oracle's gain by the same n, with its SE over prompts."""
    from rmopt.stats import ratio_and_se

    i = list(curve["n"]).index(int(n))
    gain = [np.asarray(c["per_prompt"]["gold_score"][i]) - np.asarray(c["per_prompt"]["gold_score"][0]) for c in (curve, oracle)]
    return ratio_and_se(*gain)


def _accuracy(proxy, prompts, answers, gold, batch: int = 128) -> tuple[float, float]:
    """Held-out pairs ranked as gold ranks them (ties left out): accuracy and its standard error."""
    import torch

    from rmopt.stats import mean_and_se

    right = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            p, a = prompts[i : i + batch], answers[i : i + batch]
            s0, s1 = proxy(p, [x[0] for x in a]), proxy(p, [x[1] for x in a])
            right += [float((s0[j] > s1[j]) == (g[0] > g[1])) for j, g in enumerate(gold[i : i + batch]) if g[0] != g[1]]
    return mean_and_se(right)


def train(proxy, prompts, answers, preference, steps: int, lr: float, seed: int, batch: int = 32, pool=None) -> None:
    """The pairwise loss -log sigmoid(chosen - rejected) over random batches of the training pairs (drawn from
    ``pool``, a list of pair indices, e.g. a bootstrap resample; all pairs when None)."""
    import torch
    import torch.nn.functional as F

    params = proxy.parameters()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    pool = np.arange(len(prompts)) if pool is None else np.asarray(pool)
    proxy.lm.train()
    for _ in range(steps):
        idx = pool[rng.integers(0, len(pool), batch)]
        p = [prompts[i] for i in idx]
        chosen = [answers[i][preference[i]] for i in idx]
        rejected = [answers[i][1 - preference[i]] for i in idx]
        s = proxy(p + p, chosen + rejected)
        loss = -F.logsigmoid(s[:batch] - s[batch:]).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    proxy.lm.eval()


def main() -> None:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from experiments.common import load_bon_store, mean_curve, objective_curve, resolve
    from rmopt.data.gold_gens import gold_gens_dataset
    from rmopt.errors import RmoptError
    from rmopt.stats import Z95

    def extra(parser):
        parser.add_argument("--steps", type=int, default=300, help="training steps of the trained proxies (default 300)")
        parser.add_argument("--lr", type=float, default=1e-4, help="their learning rate (default 1e-4)")
        parser.add_argument("--seed", type=int, default=1, help="their seed: head init and batch order (default 1)")

    args = parse_args(__doc__, STUDY, extra)
    if args.steps < 1 or not args.lr > 0:
        raise RmoptError(f"--steps {args.steps} --lr {args.lr}: expected at least one step and a positive learning rate")
    demo = resolve(args.demo)
    out = resolve(args.out) if args.out else demo / "studies" / STUDY
    for need in (demo / "models/sft", demo / "data/pairs", demo / "bon/gold_gens"):
        if not need.exists():
            raise RmoptError(f"{str(need)!r} is missing; expected a finished demo folder (experiments/demo.py writes it)")
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(demo / "models/sft")
    store = load_bon_store(demo / "bon")
    gens = gold_gens_dataset(str(demo / "bon/gold_gens"))
    gens = gens.select(range(store.gold.shape[0]))
    g_prompts, g_answers = _encode(tok, gens["instruction"], gens["input"], [a[: store.gold.shape[1]] for a in gens["answers"]])
    pairs = datasets.load_from_disk(str(demo / "data/pairs"))
    tr, va = pairs["train"], pairs["validation"]
    t_prompts, t_answers = _encode(tok, tr["instruction"], tr["input"], tr["answers"])
    v_prompts, v_answers = _encode(tok, va["instruction"], va["input"], va["answers"])

    curves, rows = {}, []
    for kind in PROXIES:
        torch.manual_seed(args.seed)
        proxy = Proxy(AutoModelForCausalLM.from_pretrained(demo / "models/sft").eval(), kind, tok.pad_token_id, args.seed)
        if kind != "logprob":
            train(proxy, t_prompts, t_answers, tr["preference"], args.steps, args.lr, args.seed)
        acc, acc_se = _accuracy(proxy, v_prompts, v_answers, va["gold_scores"])
        with torch.no_grad():
            scores = np.stack([proxy([p] * len(a), a).numpy() for p, a in zip(g_prompts, g_answers, strict=True)])
        curves[kind] = objective_curve(scores, store.gold, store.ns, "single")
        rows.append(stats_row(gold_stats(curves[kind]), "gold_start", "gold_max", "n_at_max", "gold_peak_cv", "gold_final", "drop_cv", proxy=kind,
                              accuracy=acc, accuracy_se=acc_se))
        print(f"{kind}: held-out accuracy {acc:.3f} +- {Z95 * acc_se:.3f}", flush=True)
    # the demo's own single reward models on the same answers (averaged, as the demo's report does), and the oracle
    curves["demo single RMs"] = mean_curve([objective_curve(m, store.gold, store.ns, "single") for m in store.scores])
    curves["oracle"] = objective_curve(store.gold, store.gold, store.ns, "single")
    for name in ("demo single RMs", "oracle"):
        rows.append(stats_row(gold_stats(curves[name]), "gold_start", "gold_max", "n_at_max", "gold_peak_cv", "gold_final", "drop_cv", proxy=name))
    for row, name in zip(rows, curves, strict=True):  # gains over the oracle's, as experiments/targets.py states them
        row["rise_share"], row["rise_share_se"] = _share(curves[name], curves["oracle"], row["n_at_max"])
        row["share_at_16"], row["share_at_16_se"] = _share(curves[name], curves["oracle"], 16)
    print_table(rows, ["proxy", "accuracy", "gold_start", "gold_max", "n_at_max", "gold_peak_cv", "gold_final", "drop_cv", "rise_share", "share_at_16"],
                f"best-of-n over {store.gold.shape[0]} prompts x {store.gold.shape[1]} answers (+- 1.96 SE over prompts)")
    settings = {"steps": args.steps, "lr": args.lr, "seed": args.seed, "demo": str(demo), "demo_members": store.names}
    write_json(out / f"{STUDY}.json", {"settings": settings, "rows": rows, "curves": curves})
    save_figure([{"title": "best-of-n on the demo's answers", "xlabel": "n", "ylabel": "gold score", "log_x": True,
                  "lines": [{"x": c["n"], "y": c["gold_score"], "se": c.get("gold_score_se"), "label": k} for k, c in curves.items()]}],
                out / f"{STUDY}.png")
    print(f"wrote {out / (STUDY + '.json')} and {out / (STUDY + '.png')}")


if __name__ == "__main__":
    study_main(main)
