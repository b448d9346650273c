"""``rmopt-pairs``: gold-labelled preference pairs sampled from the SFT policy.

    rmopt-pairs experiment=toy model.name_or_path=models/toy-sft output_dir=data/toy-pairs label_noise=0.25

Two answers a prompt at temperature 1, both scored by the world's gold reward; ``preference`` is
the index (0/1) of the better one. Ties are dropped (``ties=drop``, default) or coin-flipped
(``ties=random``). With ``label_noise=p`` each *train* label is flipped with probability p, so p is
the expected fraction of wrong labels (the paper's 0.25 came from replacing half the labels by a
coin flip, which is the same in expectation); held-out labels keep the true gold order, so held-out
accuracy measures agreement with the gold reward. The pairs are saved as a ``datasets`` folder
(splits ``train`` and ``validation``; columns instruction, input, answers, preference, gold_scores)
so the same pairs serve every member of an ensemble.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from rmopt.errors import RmoptError, cli_errors
from rmopt.stage import CONFIG_PATH
from rmopt.sweep import run_job

TIES = ("drop", "random")


def label_pairs(gold: np.ndarray, rng: np.random.Generator, ties: str = "drop", label_noise: float = 0.0):
    """Preference labels from gold scores [N, 2]: (labels, keep mask, flipped mask).

    ``labels[i]`` is the index of the answer with the higher gold score; ties are dropped or get a
    coin flip; then each kept label is flipped with probability ``label_noise``.
    """
    if ties not in TIES:
        raise RmoptError(f"ties={ties!r} is not one of {list(TIES)}")
    if not 0.0 <= label_noise <= 1.0:
        raise RmoptError(f"label_noise={label_noise} is not a probability in [0, 1]")
    gold = np.asarray(gold, dtype=np.float64)
    labels = (gold[:, 1] > gold[:, 0]).astype(np.int64)
    tied = gold[:, 0] == gold[:, 1]
    coins = rng.integers(0, 2, size=len(gold))
    flips = rng.random(len(gold)) < label_noise  # drawn for every row so the noise does not depend on ties
    if ties == "random":
        labels = np.where(tied, coins, labels)
        keep = np.ones(len(gold), dtype=bool)
    else:
        keep = ~tied
    labels = np.where(flips, 1 - labels, labels)
    return labels, keep, flips & keep


def sample_pairs(model, tokenizer, gold, prompts, limit, rng, generator, cfg, noise: float, progress=None) -> dict:
    """Pairs for ``prompts`` (a Dataset with instruction, input), stopping once ``limit`` pairs are kept."""
    from rmopt.generation import encode_prompts, generate_answers

    limit = len(prompts) if limit is None else int(limit)
    columns = {"instruction": [], "input": [], "answers": [], "preference": [], "gold_scores": []}
    counts = {"prompts": 0, "ties": 0, "flipped": 0}
    max_pos = getattr(model.config, "max_position_embeddings", None)
    for start in range(0, len(prompts), int(cfg.batch_size)):
        if len(columns["preference"]) >= limit:
            break
        rows = prompts.select(range(start, min(start + int(cfg.batch_size), len(prompts))))
        instructions, inputs = list(rows["instruction"]), list(rows["input"])
        max_new = int(cfg.max_new_tokens)
        if max_pos:
            longest = max(len(p) for p in encode_prompts(tokenizer, instructions, inputs))
            max_new = max(1, min(max_new, int(max_pos) - longest))
        # both answers of a prompt in one batch: rows [p0, p1, ..., p0, p1, ...]
        samples = generate_answers(
            model,
            tokenizer,
            instructions * 2,
            inputs * 2,
            batch_size=2 * len(rows),
            generator=generator,
            max_new_tokens=max_new,
            temperature=float(cfg.temperature),
            top_p=float(cfg.top_p),
        )
        n = len(rows)
        answers = list(zip(samples.texts[:n], samples.texts[n:], strict=True))
        scores = np.asarray(gold.score(instructions * 2, inputs * 2, samples.texts), dtype=np.float64).reshape(2, n).T
        labels, keep, flipped = label_pairs(scores, rng, cfg.ties, noise)
        counts["prompts"] += n
        counts["ties"] += int((scores[:, 0] == scores[:, 1]).sum())
        for i in np.flatnonzero(keep):
            if len(columns["preference"]) >= limit:
                break
            columns["instruction"].append(instructions[i])
            columns["input"].append(inputs[i])
            columns["answers"].append(list(answers[i]))
            columns["preference"].append(int(labels[i]))
            columns["gold_scores"].append([float(s) for s in scores[i]])
            counts["flipped"] += int(flipped[i])
        if progress is not None:
            progress.update(n)
    return {"columns": columns, "counts": counts}


def make_pairs(cfg) -> dict:
    """Sample, label and save the pairs at ``cfg.output_dir``; return a summary."""
    import datasets
    from tqdm.auto import tqdm

    from rmopt.gold import build_gold, resolve_device
    from rmopt.stage import already_done, prepare, save_run_config
    from rmopt.utils import atomic_dir, atomic_write_json

    if already_done(cfg, cfg.output_dir):
        return json.loads((Path(cfg.output_dir) / "pairs_summary.json").read_text())
    prepare(cfg)
    device = resolve_device(cfg.get("device"))
    source = hydra.utils.instantiate(cfg.model)
    tokenizer = source.load_tokenizer()
    model = source.load_causal_lm(tokenizer).to(device).eval()
    data = hydra.utils.instantiate(cfg.data)
    gold = build_gold(cfg.get("gold"), data)
    rng = np.random.default_rng(int(cfg.seed))
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    splits, summary = {}, {}
    for name, split, limit, noise in (
        ("train", cfg.train_split, cfg.train_size, float(cfg.label_noise)),
        ("validation", cfg.val_split, cfg.val_size, 0.0),
    ):
        prompts = data.instructions(split)
        total = len(prompts) if limit is None else min(len(prompts), int(limit))
        with tqdm(total=total, desc=f"sampling {name} pairs", unit="prompt", disable=not cfg.get("progress", True)) as bar:
            out = sample_pairs(model, tokenizer, gold, prompts, limit, rng, generator, cfg, noise, progress=bar)
        columns = out["columns"]
        if not columns["preference"]:
            raise RmoptError(f"no {name} pairs from split {split!r}: every pair was a tie; try ties=random")
        splits[name] = datasets.Dataset.from_dict(columns)
        gold_pref = [int(g[1] > g[0]) for g in columns["gold_scores"]]
        agree = np.mean([p == g for p, g in zip(columns["preference"], gold_pref, strict=True)])
        summary[name] = {"pairs": len(columns["preference"]), **out["counts"], "label_gold_agreement": float(agree)}
    with atomic_dir(cfg.output_dir) as tmp:
        datasets.DatasetDict(splits).save_to_disk(str(tmp))
        atomic_write_json(tmp / "pairs_summary.json", summary)
        save_run_config(cfg, tmp)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="pairs")
def _main(cfg: DictConfig) -> int | None:
    return run_job(_run, cfg)


def _run(cfg: DictConfig) -> int:
    summary = make_pairs(cfg)
    for name, s in summary.items():
        print(
            f"{name}: {s['pairs']} pairs from {s['prompts']} prompts ({s['ties']} ties), "
            f"{s['flipped']} labels flipped, labels agree with gold on {s['label_gold_agreement']:.1%}"
        )
    print(f"pairs saved to {cfg.output_dir}")
    return summary["train"]["pairs"]


main = cli_errors(_main)

if __name__ == "__main__":
    main()
