"""``rmopt-rm``: train a reward model (or, as a sweep over seeds, an ensemble of them).

    rmopt-rm experiment=toy model.name_or_path=models/toy-sft data.path=data/toy-pairs output_dir=models/toy-rm
    rmopt-rm -m experiment=toy model.name_or_path=models/toy-sft data.path=data/toy-pairs \\
        output_dir=models/toy-rm seed=1,2,3,4,5        # -> models/toy-rm_seed1 ... _seed5

Each member lands in ``${output_dir}_seed${seed}``: a Hugging Face sequence-classification folder
(``AutoModelForSequenceClassification.from_pretrained`` loads it as it is) with ``reward_stats.json``
(mean and std of its scores on the held-out answers) and ``rmopt_config.yaml``. The seed sets the
head's initialisation, the data order, dropout and (with ``ensemble.bootstrap``) the resample.
``ensemble=multihead`` trains k heads on one trunk in one run, saved as one folder with num_labels=k.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from rmopt.errors import RmoptError, cli_errors
from rmopt.stage import (
    CONFIG_PATH,
    already_done,
    build_trainer,
    loss_curve_text,
    prepare,
    resolve_ckpt_path,
    save_run_config,
)
from rmopt.sweep import run_job


def member_dir(cfg: DictConfig) -> Path:
    """Where the run's model goes: ``${output_dir}_seed${seed}``."""
    return Path(f"{cfg.output_dir}_seed{cfg.seed}")


def heads_of(cfg: DictConfig) -> int:
    ens = cfg.get("ensemble") or {}
    heads = int(ens.get("k", 1)) if ens.get("kind", "independent") == "multihead" else 1
    if heads < 1:
        raise RmoptError(f"ensemble.k={heads} must be at least 1")
    return heads


def reward_stats(model, tokenizer, pairs, max_length: int) -> dict:
    """Mean and std of the model's scores on every held-out answer (both of each pair), per head."""
    from rmopt.ensemble import RewardEnsemble

    instructions = [i for i in pairs["instruction"] for _ in range(2)]
    inputs = [x for x in pairs["input"] for _ in range(2)]
    answers = [a for pair in pairs["answers"] for a in pair]
    scores = RewardEnsemble([model], tokenizer, max_length=max_length).score(instructions, inputs, answers)
    mean, std = scores.mean(1).tolist(), scores.std(1, unbiased=False).clamp(min=1e-6).tolist()
    if len(mean) == 1:
        return {"mean": mean[0], "std": std[0], "n": len(answers)}
    return {"mean": mean, "std": std, "n": len(answers)}


def train(cfg: DictConfig) -> dict[str, float]:
    """Train one reward model (k heads with ``ensemble=multihead``) and save it at ``member_dir(cfg)``."""
    from rmopt.data.preference import PreferenceDataModule
    from rmopt.ensemble import STATS_FILE
    from rmopt.models import model_for_saving
    from rmopt.modules.rm import RewardModule, init_score_head
    from rmopt.utils import save_hf_folder

    if already_done(cfg, member_dir(cfg)):
        return {}
    prepare(cfg)
    heads = heads_of(cfg)
    source = hydra.utils.instantiate(cfg.model)
    tokenizer = source.load_tokenizer()
    model = source.load_reward_model(tokenizer)
    init_score_head(model, heads, cfg.seed)
    model.train()  # from_pretrained leaves eval mode (dropout off); Lightning keeps modules' modes
    data = PreferenceDataModule(
        hydra.utils.instantiate(cfg.data),
        tokenizer,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        seed=cfg.seed,
        heads=heads,
        bootstrap=bool(cfg.ensemble.get("bootstrap", False)),
        train_split=cfg.train_split,
        val_split=cfg.val_split,
        val_size=cfg.get("val_size"),
    )
    data.setup()
    module = RewardModule(
        model, optimizer=hydra.utils.instantiate(cfg.optimizer), warmup_steps=cfg.warmup_steps, l2_coef=cfg.l2_coef
    )
    out = member_dir(cfg)
    ckpt_dir = out / "checkpoints"
    trainer = build_trainer(cfg, ckpt_dir)
    trainer.fit(module, datamodule=data, ckpt_path=resolve_ckpt_path(cfg.ckpt_path, ckpt_dir, cfg.get("resume", False)))
    trainer.validate(module, datamodule=data, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    to_save = model_for_saving(trainer, model)  # every process: gathers the shards under fsdp
    if trainer.is_global_zero:  # under ddp/fsdp every process runs this; one writes the folder
        to_save.eval()
        stats = reward_stats(to_save, tokenizer, data.val_pairs, cfg.max_length)
        save_hf_folder(out, to_save, tokenizer, extra_json={STATS_FILE: stats})
        save_run_config(cfg, out)
        print(f"reward model saved to {out} (held-out accuracy {metrics.get('val/accuracy', float('nan')):.3f})")
        print("held-out accuracy by step:\n" + loss_curve_text(module.history, key="val_accuracy"))
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="rm")
def _main(cfg: DictConfig) -> float | None:
    metrics = run_job(train, cfg)
    return None if metrics is None else metrics.get("val/accuracy", float("nan"))


main = cli_errors(_main)

if __name__ == "__main__":
    main()
