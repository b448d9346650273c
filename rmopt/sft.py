"""``rmopt-sft``: supervised fine-tuning in the prompt format, loss on answer tokens only.

    rmopt-sft experiment=toy output_dir=models/toy-sft trainer.max_steps=200
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from rmopt.errors import cli_errors
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


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and save a Hugging Face folder (model + tokenizer) at ``cfg.output_dir``.

    A folder that already holds a finished run of the same config is left as it is (``overwrite=true`` redoes it).
    """
    from rmopt.data.sft import SFTDataModule
    from rmopt.models import model_for_saving
    from rmopt.modules.sft import SFTModule
    from rmopt.utils import save_hf_folder

    if already_done(cfg, cfg.output_dir):
        return {}
    prepare(cfg)
    source = hydra.utils.instantiate(cfg.model)
    tokenizer = source.load_tokenizer()
    model = source.load_causal_lm(tokenizer)
    data = SFTDataModule(
        hydra.utils.instantiate(cfg.data),
        tokenizer,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        seed=cfg.seed,
    )
    data.setup()
    module = SFTModule(
        model,
        tokenizer,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        warmup_steps=cfg.warmup_steps,
        sample_prompts=data.val_prompts(cfg.sample_count),
    )
    output_dir = Path(cfg.output_dir)
    ckpt_dir = output_dir / "checkpoints"
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, ckpt_dir, cfg.get("resume", False))
    # a fresh run's first validation (the curve's starting point) is fit's sanity check over the whole
    # validation set, which SFTModule records: a validate() before fit would leave FSDP's layer wrappers
    # in place, and fit would then not wrap the root (whose parameters then go unsynchronised)
    trainer = build_trainer(cfg, ckpt_dir, num_sanity_val_steps=-1 if ckpt_path is None else 0)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    trainer.validate(module, datamodule=data, verbose=False)
    model.eval()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    to_save = model_for_saving(trainer, model)  # every process: gathers the shards under fsdp
    if trainer.is_global_zero:  # under ddp/fsdp every process runs this; one writes the folder
        save_hf_folder(output_dir, to_save, tokenizer, extra_json={"sft_history.json": module.history})
        save_run_config(cfg, output_dir)
        print(f"SFT model saved to {output_dir}")
        print("validation loss by step:\n" + loss_curve_text(module.history))
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sft")
def _main(cfg: DictConfig) -> float | None:
    metrics = run_job(train, cfg)
    return None if metrics is None else metrics.get("val/loss", float("nan"))


main = cli_errors(_main)

if __name__ == "__main__":
    main()
