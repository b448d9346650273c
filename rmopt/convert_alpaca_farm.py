"""``rmopt-convert-alpacafarm-rm RECOVERED_DIR OUTPUT_DIR``: AlpacaFarm's recovered reward model as a
one-output ``LlamaForSequenceClassification`` folder, which ``gold=alpaca_farm gold.name_or_path=OUTPUT_DIR``
loads.

What AlpacaFarm's weight recovery (``pretrained_models/recover_model_weights.py``) leaves is its own
``RewardModel`` (``src/alpaca_farm/models/reward_model.py``): a config with ``model_type: reward_model``
naming the backbone folder (``backbone_model_name_or_path``, the recovered ``sft10k``) and weights keyed

- ``backbone_model.model.*``: the LLaMA trunk (``LlamaModel``);
- ``backbone_model.lm_head.weight``: the unembedding, unused for scoring;
- ``reward_head.weight`` [1, hidden] and ``reward_head.bias`` [1]: ``nn.Linear(hidden, 1)``;
- checkpoints saved by transformers < 4.31 also ``backbone_model.model.layers.N.self_attn.rotary_emb.inv_freq``
  (rotary buffers, recomputed from the config).

Its reward is ``reward_head(last_hidden_state[:, -1])``. The converted folder holds the trunk as
``model.*``, the head's weight as ``score.weight``; transformers' score head has no bias, so the bias is
kept exactly in ``config.json`` as ``score_bias`` and :class:`rmopt.gold.HFGoldReward` adds it back
(plain ``transformers`` ignores that field: its scores are the original's minus that constant).
``pad_token_id`` is the tokenizer's ``[PAD]`` (the backbone config says 0, LLaMA's ``<unk>``).

Shards are streamed one at a time (``*.safetensors`` or ``pytorch_model-*.bin``, with their index
json): the 7B weights are never held twice in memory. Anything but the keys above is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from rmopt.errors import ArgumentParser, RmoptError

SCORE_BIAS_KEY = "score_bias"  # config.json field read by rmopt.gold.HFGoldReward
TRUNK_PREFIX = "backbone_model.model."
LM_HEAD = "backbone_model.lm_head.weight"
HEAD_WEIGHT, HEAD_BIAS = "reward_head.weight", "reward_head.bias"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
DTYPES = ("keep", "float32", "bfloat16", "float16")


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RmoptError(f"{what} {str(path)!r} does not exist") from None
    except (OSError, ValueError) as e:
        raise RmoptError(f"{what} {str(path)!r} cannot be read: {e}") from None


def reward_model_config(recovered: Path) -> dict:
    """The recovered folder's config.json, checked to be AlpacaFarm's ``RewardModel``."""
    if not recovered.is_dir():
        raise RmoptError(f"recovered reward model folder {str(recovered)!r} does not exist")
    cfg = _read_json(recovered / "config.json", "reward model config")
    if cfg.get("model_type") != "reward_model":
        raise RmoptError(
            f"{str(recovered / 'config.json')!r} has model_type {cfg.get('model_type')!r}; expected 'reward_model' "
            "(AlpacaFarm's RewardModel as its weight recovery saves it)"
        )
    return cfg


def backbone_config(recovered: Path, rm_cfg: dict, backbone: str | None):
    """The LLaMA config of the trunk: from ``backbone`` or the folder the RM's config names.

    A relative name that does not resolve from here is also looked for beside ``recovered`` (the
    recovery script saves ``sft10k`` and ``reward-model-human`` in one folder).
    """
    from transformers import AutoConfig

    from rmopt.models import _from_pretrained

    hint = f"pass --backbone DIR (the sft10k folder {str(recovered)!r} was recovered with)"
    if backbone is not None:
        if not (Path(backbone).expanduser() / "config.json").is_file():
            raise RmoptError(f"--backbone {backbone!r} is not a folder with a config.json")
        name = str(Path(backbone).expanduser())
    else:
        name = rm_cfg.get("backbone_model_name_or_path")
        if not name:
            raise RmoptError(f"{str(recovered / 'config.json')!r} names no backbone_model_name_or_path; {hint}")
        sibling = recovered.parent / Path(name).name
        if not Path(name).expanduser().is_dir() and (sibling / "config.json").is_file():
            name = str(sibling)
    try:
        cfg = _from_pretrained(AutoConfig.from_pretrained, name, "backbone config")
    except RmoptError as e:
        raise RmoptError(f"{e}; {hint}") from e
    if cfg.model_type != "llama":
        raise RmoptError(f"backbone config {name!r} has model_type {cfg.model_type!r}; expected 'llama'")
    return cfg, name


def weight_shards(folder: Path) -> tuple[list[Path], str]:
    """The weight files of ``folder`` in order and their kind (``safetensors`` or ``bin``)."""
    for index, single, kind in (
        ("model.safetensors.index.json", "model.safetensors", "safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", "bin"),
    ):
        if (folder / index).is_file():
            weight_map = _read_json(folder / index, "weight index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise RmoptError(f"weight index {str(folder / index)!r} has no weight_map")
            shards = [folder / name for name in sorted(set(weight_map.values()))]
            missing = [p.name for p in shards if not p.is_file()]
            if missing:
                raise RmoptError(f"weight index {str(folder / index)!r} names missing shard(s) {missing}")
            return shards, kind
        if (folder / single).is_file():
            return [folder / single], kind
    raise RmoptError(
        f"{str(folder)!r} has no weights: expected model.safetensors(.index.json) or pytorch_model.bin(.index.json)"
    )


def _iter_shard(path: Path, kind: str):
    """(key, tensor) of one shard; ``.bin`` files are memory-mapped where their format allows."""
    import torch

    if kind == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
        return
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    try:
        yield from state.items()
    finally:
        del state


def _expected_shapes(config) -> dict:
    """Key -> shape of the target ``LlamaForSequenceClassification`` (built on the meta device)."""
    import torch
    from transformers import LlamaForSequenceClassification

    with torch.device("meta"):
        model = LlamaForSequenceClassification(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _target_key(key: str, shard: str) -> str | None:
    """The converted name of ``key``; None for what scoring drops. Anything unknown is an error."""
    if key.startswith(TRUNK_PREFIX):
        if key.endswith(".rotary_emb.inv_freq"):
            return None
        return "model." + key[len(TRUNK_PREFIX) :]
    if key == LM_HEAD:
        return None
    if key == HEAD_WEIGHT:
        return "score.weight"
    raise RmoptError(
        f"unexpected tensor {key!r} in {shard}: an AlpacaFarm RewardModel holds only {TRUNK_PREFIX}*, "
        f"{LM_HEAD}, {HEAD_WEIGHT} and {HEAD_BIAS}"
    )


def _check_tokenizer(folder: Path, vocab_size: int):
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise RmoptError(f"{str(folder)!r} has no tokenizer (tokenizer.json or tokenizer.model)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:  # e.g. only tokenizer.model and no sentencepiece installed
        raise RmoptError(f"cannot load the reward model's tokenizer: {str(e).strip().splitlines()[0]}") from e
    if tokenizer.pad_token_id is None:
        raise RmoptError("the reward model's tokenizer has no pad token (AlpacaFarm's adds [PAD])")
    if len(tokenizer) > vocab_size:
        raise RmoptError(f"the tokenizer has {len(tokenizer)} tokens but the backbone's vocab_size is {vocab_size}")
    return tokenizer


def convert(recovered, output, backbone: str | None = None, dtype: str = "keep", overwrite: bool = False) -> dict:
    """Convert ``recovered`` (AlpacaFarm's RewardModel folder) into ``output``; returns a summary dict."""
    import torch
    from safetensors.torch import save_file

    from rmopt.utils import atomic_dir

    recovered, output = Path(recovered).expanduser(), Path(output).expanduser()
    if dtype not in DTYPES:
        raise RmoptError(f"--dtype {dtype!r} is not one of {list(DTYPES)}")
    if output.resolve() == recovered.resolve():
        raise RmoptError("the output folder must differ from the recovered folder")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise RmoptError(f"output folder {str(output)!r} exists and is not empty (--overwrite to replace it)")
    rm_cfg = reward_model_config(recovered)
    config, backbone_name = backbone_config(recovered, rm_cfg, backbone)
    shards, kind = weight_shards(recovered)
    expected = _expected_shapes(_classifier_config(config))
    cast = None if dtype == "keep" else getattr(torch, dtype)

    with atomic_dir(output) as tmp:
        for name in TOKENIZER_FILES:  # the tokenizer as it is, [PAD] and all
            if (recovered / name).is_file():
                shutil.copyfile(recovered / name, tmp / name)
        tokenizer = _check_tokenizer(tmp, config.vocab_size)

        seen, bias, dropped, written, out_dtype = set(), None, 0, [], None
        for i, shard in enumerate(shards):
            tensors = {}
            for key, tensor in _iter_shard(shard, kind):
                if key == HEAD_BIAS:
                    if tuple(tensor.shape) != (1,):
                        raise RmoptError(f"{HEAD_BIAS} has shape {tuple(tensor.shape)}; expected (1,)")
                    bias = float(tensor.float().item())  # exact: float32/bfloat16 fit a Python float
                    continue
                new = _target_key(key, shard.name)
                if new is None:
                    dropped += 1
                    continue
                if new not in expected:
                    raise RmoptError(f"tensor {key!r} in {shard.name} has no place in the backbone's LLaMA config")
                if tuple(tensor.shape) != expected[new]:
                    raise RmoptError(
                        f"tensor {key!r} in {shard.name} has shape {tuple(tensor.shape)}; the backbone's LLaMA "
                        f"config expects {expected[new]}"
                    )
                if new in seen:
                    raise RmoptError(f"tensor {key!r} appears twice (again in {shard.name})")
                seen.add(new)
                tensor = tensor if cast is None else tensor.to(cast)
                out_dtype = out_dtype or tensor.dtype
                tensors[new] = tensor.contiguous()
            if tensors:
                part = tmp / f".part-{i:05d}.safetensors"
                save_file(tensors, str(part), metadata={"format": "pt"})
                written.append((part, sorted(tensors), sum(t.numel() * t.element_size() for t in tensors.values())))
            del tensors

        missing = sorted(set(expected) - seen)
        if missing:
            raise RmoptError(f"the reward model lacks {len(missing)} tensor(s) of its backbone, e.g. {missing[:3]}")
        if bias is None:
            raise RmoptError(f"the reward model has no {HEAD_BIAS} (AlpacaFarm's reward head is Linear with a bias)")

        weight_map, names = {}, []
        for k, (part, keys, _) in enumerate(written):
            name = "model.safetensors" if len(written) == 1 else f"model-{k + 1:05d}-of-{len(written):05d}.safetensors"
            os.replace(part, tmp / name)
            names.append(name)
            weight_map.update({key: name for key in keys})
        if len(written) > 1:
            index = {"metadata": {"total_size": sum(w[2] for w in written)}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

        out_cfg = _classifier_config(config)
        out_cfg.pad_token_id = tokenizer.pad_token_id
        setattr(out_cfg, SCORE_BIAS_KEY, bias)
        out_cfg.dtype = out_dtype
        out_cfg.save_pretrained(str(tmp))

    return {
        "output": str(output),
        "backbone": backbone_name,
        "shards": names,
        "tensors": len(seen),
        "dropped": dropped,
        "score_bias": bias,
        "dtype": str(out_dtype).replace("torch.", ""),
        "pad_token": tokenizer.pad_token,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _classifier_config(backbone):
    """The backbone's LLaMA config as a one-output sequence classifier's."""
    import copy

    cfg = copy.deepcopy(backbone)
    cfg.architectures = ["LlamaForSequenceClassification"]
    cfg.num_labels = 1
    return cfg


def main(argv=None) -> None:
    parser = ArgumentParser(
        prog="rmopt-convert-alpacafarm-rm",
        description="Convert AlpacaFarm's recovered reward model (e.g. reward-model-human) into a one-output "
        "LlamaForSequenceClassification folder for gold=alpaca_farm gold.name_or_path=OUTPUT_DIR.",
    )
    parser.add_argument("recovered_dir", help="the folder recover_model_weights.py wrote (model_type: reward_model)")
    parser.add_argument("output_dir", help="the folder to write")
    parser.add_argument("--backbone", default=None,
                        help="the backbone (sft10k) folder; default: backbone_model_name_or_path of its config")
    parser.add_argument("--dtype", default="keep", choices=DTYPES, help="weights' dtype (default: as stored)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT_DIR")
    args = parser.parse_args(argv)
    try:
        summary = convert(args.recovered_dir, args.output_dir, args.backbone, args.dtype, args.overwrite)
    except RmoptError as e:
        if os.environ.get("RMOPT_TRACEBACK"):
            raise
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
    print(
        f"wrote {summary['output']}: {summary['tensors']} tensors in {len(summary['shards'])} shard(s) "
        f"({summary['dtype']}), dropped {summary['dropped']} (lm_head, inv_freq), score_bias {summary['score_bias']!r}, "
        f"pad {summary['pad_token']!r} = {summary['pad_token_id']}; backbone config from {summary['backbone']}"
    )


if __name__ == "__main__":
    main()
