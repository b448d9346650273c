"""Shared fixtures: offline, one thread, tiny toy models built or trained once per session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from rmopt.stage import CONFIG_PATH  # noqa: E402

torch.set_num_threads(1)

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=96,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)


def compose(config_name: str, overrides=(), output_dir=None):
    """Compose a stage's config as its Hydra main would, with ``paths.output_dir`` pointed at a tmp folder."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = list(overrides)
    if output_dir is not None:
        overrides.append(f"paths.output_dir={output_dir}")
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


@pytest.fixture(scope="session")
def tiny_source():
    from rmopt.models import ModelSource

    return ModelSource(config=dict(TINY), tokenizer="toy")


@pytest.fixture(scope="session")
def toy_tokenizer(tiny_source):
    return tiny_source.load_tokenizer()


@pytest.fixture(scope="session")
def toy_lm_dir(tmp_path_factory, tiny_source, toy_tokenizer):
    """An untrained tiny GPT-NeoX causal LM + tokenizer saved as a Hugging Face folder."""
    from rmopt.utils import save_hf_folder

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("toy-lm")
    save_hf_folder(path, tiny_source.load_causal_lm(toy_tokenizer), toy_tokenizer)
    return path


@pytest.fixture(scope="session")
def toy_sft_dir(tmp_path_factory):
    """A tiny policy after a short SFT on the toy world (a few seconds)."""
    from rmopt.sft import train

    out = tmp_path_factory.mktemp("toy-sft")
    cfg = compose(
        "sft",
        [
            "experiment=toy",
            f"output_dir={out}",
            "trainer.max_steps=150",
            "trainer.val_check_interval=75",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "sample_count=0",
        ]
        + [f"model.config.{k}={v}" for k, v in TINY.items()],
        output_dir=out / "run",
    )
    train(cfg)
    return out


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory):
    """Toy preference pairs without sampling: the reference answer against a wrong one."""
    import datasets

    from rmopt.data.sources import ToyData

    toy = ToyData(sizes={"sft": 96, "preference": 8, "unlabeled": 8, "val": 24}, seed=0)
    splits = {}
    for name, split in (("train", "sft"), ("validation", "val")):
        ds = toy.instructions(split)
        wrong = ["no"] * len(ds)
        prefs = [i % 2 for i in range(len(ds))]
        answers = [[o, w] if p == 0 else [w, o] for o, w, p in zip(ds["output"], wrong, prefs, strict=True)]
        splits[name] = datasets.Dataset.from_dict(
            {"instruction": ds["instruction"], "input": ds["input"], "answers": answers, "preference": prefs}
        )
    path = tmp_path_factory.mktemp("pairs") / "pairs"
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def save_stand_in_rms(sft_dir, root, seeds=(1, 2), head_std=None):
    """Reward-model folders ``root/rm_seed{seed}``: the SFT trunk with a head initialised from the seed.

    ``head_std`` widens the heads (by default they start near zero, as rmopt-rm's do) so members disagree.
    """
    from rmopt.models import ModelSource
    from rmopt.utils import save_hf_folder

    source = ModelSource(name_or_path=str(sft_dir))
    tokenizer = source.load_tokenizer()
    for seed in seeds:
        torch.manual_seed(seed)
        model = source.load_reward_model(tokenizer)
        if head_std is not None:
            torch.nn.init.normal_(model.score.weight, std=head_std)
        save_hf_folder(root / f"rm_seed{seed}", model, tokenizer)
    return root
