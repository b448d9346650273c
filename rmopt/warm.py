"""Weight-averaged reward models (WARM, Rame et al. 2024): ``rmopt-warm``.

One reward model whose weights are the uniform average of k members' (fine-tuned from one shared
base, so their weights are linearly connected). It scores at the cost of one member and works as any
single RM in ``rmopt-bon`` and ``rmopt-ppo``:

    rmopt-warm 'proxy_rm_path="models/toy-rm_seed{seed}"' seeds=[1,2,3,4,5] output_dir=models/toy-rm-warm

Members must share architecture and every weight's shape; the first mismatch is a one-line error.
A multi-head member (``ensemble=multihead``) has its heads averaged into one. The averaged model's
``reward_stats.json`` is computed on the members' own held-out pairs (from the first member's saved
run config), as ``rmopt-rm`` computes a member's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from rmopt.errors import RmoptError, cli_errors
from rmopt.stage import CONFIG_PATH, already_done, prepare, save_run_config

HEAD = "score.weight"  # the sequence-classification head of GPT-NeoX-style reward models ([heads, hidden])
CONFIG_KEYS_IGNORED = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "num_labels", "id2label", "label2id")


def average_weights(state_dicts: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The uniform average of several state dicts with the same keys and shapes (in float32, cast back
    to the first member's dtypes); the first key or shape that differs is a one-line error naming it."""
    if not state_dicts:
        raise RmoptError("no members to average; expected at least one reward model")
    first, first_name = state_dicts[0], names[0]
    for sd, name in zip(state_dicts[1:], names[1:], strict=True):
        missing = [k for k in first if k not in sd] or [k for k in sd if k not in first]
        if missing:
            k = missing[0]
            has, lacks = (first_name, name) if k in first else (name, first_name)
            raise RmoptError(f"members differ: {has} has weight {k!r}, {lacks} does not; WARM needs members of one architecture")
        for k, v in first.items():
            if sd[k].shape != v.shape:
                raise RmoptError(
                    f"members differ: {k!r} is {tuple(sd[k].shape)} in {name} but {tuple(v.shape)} in {first_name}; "
                    "WARM needs members of one architecture"
                )
    return {
        k: (torch.stack([sd[k].float() for sd in state_dicts]).mean(dim=0).to(v.dtype) if v.is_floating_point() else v.clone())
        for k, v in first.items()
    }


def merge_heads(state_dict: Mapping[str, torch.Tensor], head: str = HEAD) -> dict[str, torch.Tensor]:
    """A multi-head reward model's heads averaged into one output (weight rows and bias entries)."""
    out = dict(state_dict)
    for key in (head, head.replace(".weight", ".bias")):
        if key in out and out[key].shape[0] > 1:
            out[key] = out[key].float().mean(dim=0, keepdim=True).to(out[key].dtype)
    return out


def _architecture(config: Mapping) -> dict:
    return {k: v for k, v in config.items() if k not in CONFIG_KEYS_IGNORED}


def check_configs(configs: Sequence[Mapping], names: Sequence[str]) -> None:
    """Members share one architecture: every config field but names, dtypes and the head count agree."""
    first = _architecture(configs[0])
    for config, name in zip(configs[1:], names[1:], strict=True):
        other = _architecture(config)
        for k in sorted(set(first) | set(other)):
            if first.get(k) != other.get(k):
                raise RmoptError(
                    f"members differ: config {k!r} is {other.get(k)!r} in {name} but {first.get(k)!r} in {names[0]}; "
                    "WARM needs members of one architecture"
                )


def held_out_pairs(member: str | Path):
    """The held-out pairs a member was validated on, from its saved run config (``data``, ``val_split``, ``val_size``)."""
    path = Path(member) / "rmopt_config.yaml"
    if not path.exists():
        raise RmoptError(f"{member} has no rmopt_config.yaml; expected a folder written by rmopt-rm")
    cfg = OmegaConf.load(path)
    ds = hydra.utils.instantiate(cfg.data).preferences(str(cfg.val_split))
    limit = cfg.get("val_size")
    return (ds.select(range(int(limit))) if limit is not None and len(ds) > int(limit) else ds), int(cfg.max_length)


WARM_FILE = "warm.json"  # beside the averaged model: its members and their folders' fingerprints


def average_members(paths: Sequence[str], seeds: Sequence, out: str | Path, max_length: int | None = None) -> Path:
    """Average the member folders ``paths`` into the reward-model folder ``out`` (with ``reward_stats.json``
    on the first member's held-out pairs and ``warm.json``); returns ``out``. Skipped when ``out`` already
    holds the average of these very folders."""
    import json

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rmopt.bon_pipeline import folder_fingerprint
    from rmopt.ensemble import STATS_FILE
    from rmopt.rm import reward_stats
    from rmopt.utils import save_hf_folder

    out = Path(out)
    record = {"members": [str(p) for p in paths], "seeds": list(seeds), "fingerprints": [folder_fingerprint(p) for p in paths]}
    if (out / WARM_FILE).exists() and json.loads((out / WARM_FILE).read_text()) == json.loads(json.dumps(record)):
        return out
    names = [f"{p} (seed {s})" for p, s in zip(paths, seeds, strict=True)]
    check_configs([json.loads((Path(p) / "config.json").read_text()) for p in paths], names)
    models = [AutoModelForSequenceClassification.from_pretrained(p) for p in paths]
    averaged = merge_heads(average_weights([m.state_dict() for m in models], names))
    model = models[0]
    if model.config.num_labels > 1:  # one output after merging the heads
        old = model.score
        model.score = torch.nn.Linear(old.in_features, 1, bias=old.bias is not None, dtype=old.weight.dtype)
        model.config.num_labels = 1
        model.config.id2label, model.config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    model.load_state_dict(averaged)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(paths[0])
    pairs, member_max_length = held_out_pairs(paths[0])
    stats = reward_stats(model, tokenizer, pairs, member_max_length if max_length is None else int(max_length))
    save_hf_folder(out, model, tokenizer, extra_json={STATS_FILE: stats, WARM_FILE: record})
    print(f"WARM of {len(paths)} members saved to {out} (held-out score mean {stats['mean']:.3f}, std {stats['std']:.3f})")
    return out


def warm(cfg: DictConfig) -> Path:
    """Average the members named by ``proxy_rm_path`` and ``seeds`` into ``output_dir``; returns it."""
    from rmopt.ensemble import member_paths

    if OmegaConf.is_missing(cfg, "proxy_rm_path") or not cfg.proxy_rm_path:
        raise RmoptError("proxy_rm_path is required, e.g. 'proxy_rm_path=\"models/toy-rm_seed{seed}\"' seeds=[1,2,3]")
    seeds = list(cfg.seeds) if OmegaConf.is_list(cfg.seeds) else [cfg.seeds]
    paths = member_paths(str(cfg.proxy_rm_path), seeds)
    out = Path(cfg.output_dir)
    if already_done(cfg, out):
        return out
    prepare(cfg)
    average_members(paths, seeds, out, cfg.max_length)
    save_run_config(cfg, out)
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="warm")
def _main(cfg: DictConfig) -> None:
    from rmopt.sweep import run_job

    run_job(warm, cfg)


main = cli_errors(_main)

if __name__ == "__main__":
    main()
