"""A tiny stand-in for AlpacaFarm's recovered ``reward-model-human``, in the real folder layout.

What AlpacaFarm's weight recovery leaves (``pretrained_models/recover_model_weights.py``; the hub repo
``tatsu-lab/alpaca-farm-reward-model-human-wdiff`` holds the same files):

- ``config.json``: ``{"_name_or_path", "architectures": ["RewardModel"], "backbone_model_name_or_path",
  "model_type": "reward_model", "torch_dtype": "float32", "transformers_version"}``, the backbone being
  the recovered ``sft10k`` folder (a ``LlamaForCausalLM`` config, vocab_size 32001, pad_token_id 0);
- weights of ``RewardModel`` (``src/alpaca_farm/models/reward_model.py``) in
  ``pytorch_model-0000i-of-00003.bin`` + ``pytorch_model.bin.index.json`` (transformers 4.29) or
  ``*.safetensors`` + ``model.safetensors.index.json`` (a recovery run with transformers >= 4.35); before
  4.31 each layer also saved ``rotary_emb.inv_freq``;
- the LLaMA tokenizer: ``tokenizer.json``, ``tokenizer.model``, ``tokenizer_config.json``,
  ``special_tokens_map.json`` and ``added_tokens.json`` (``{"[PAD]": 32000}``).

The tokenizer here is LLaMA's layout at character level: ``<unk>`` ``<s>`` ``</s>`` (0-2), the byte
fallback tokens ``<0x00>``..``<0xFF>`` (3-258, so ``\\n`` is 13 as in LLaMA), ``▁`` (259), the printable
ASCII characters ``!``..``~`` (260-353) and ``[PAD]`` (354); spaces become ``▁`` and one ``▁`` starts the
text, BOS is added, EOS is not.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

PAD_ID, BOS_ID, EOS_ID = 354, 1, 2
VOCAB_SIZE = 355
TINY_LLAMA = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
)


def char_ids(text: str) -> list[int]:
    """The stand-in tokenizer's ids for ``text`` without BOS, computed by hand (printable ASCII, space, newline)."""
    out = []
    for ch in "▁" + text.replace(" ", "▁"):
        if ch == "▁":
            out.append(259)
        elif ch == "\n":
            out.append(3 + 0x0A)
        else:
            assert 33 <= ord(ch) <= 126, ch
            out.append(260 + ord(ch) - 33)
    return out


def save_llama_tokenizer(folder: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    vocab["▁"] = 259
    vocab.update({chr(c): 260 + c - 33 for c in range(33, 127)})
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, normalized=True, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", BOS_ID)]
    )
    tok.add_special_tokens([AddedToken("[PAD]", normalized=False, special=True)])
    assert tok.token_to_id("[PAD]") == PAD_ID
    tok.save(str(folder / "tokenizer.json"))

    def token(content):
        return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": token("<s>"), "eos_token": token("</s>"), "pad_token": "[PAD]", "unk_token": token("<unk>")},
        indent=2))
    (folder / "added_tokens.json").write_text(json.dumps({"[PAD]": PAD_ID}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": {"__type": "AddedToken", **token("<s>")},
        "clean_up_tokenization_spaces": False,
        "eos_token": {"__type": "AddedToken", **token("</s>")},
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": {"__type": "AddedToken", **token("<unk>")},
    }, indent=2))


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=VOCAB_SIZE, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=0,
                       tie_word_embeddings=False, **TINY_LLAMA)


class AlpacaFarmRewardModel(torch.nn.Module):
    """AlpacaFarm's ``RewardModel`` in miniature: ``backbone_model`` (``LlamaForCausalLM``) and
    ``reward_head`` (``Linear(hidden, 1)``); the reward is the head on the last position's hidden state."""

    def __init__(self, config):
        super().__init__()
        from transformers import LlamaForCausalLM

        self.backbone_model = LlamaForCausalLM(config)
        self.reward_head = torch.nn.Linear(config.hidden_size, 1)

    def forward(self, input_ids, attention_mask=None):
        hidden = self.backbone_model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.reward_head(hidden[:, -1, :]).squeeze(-1)


def rotary_inv_freq(config) -> torch.Tensor:
    head_dim = config.hidden_size // config.num_attention_heads
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))


def build_reward_model(seed: int = 0) -> AlpacaFarmRewardModel:
    torch.manual_seed(seed)
    model = AlpacaFarmRewardModel(llama_config()).eval()
    with torch.no_grad():  # large enough weights that answers get clearly different rewards
        for p in model.backbone_model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
        model.reward_head.weight.normal_(0.0, 1.0)
        model.reward_head.bias.fill_(0.4375123)  # not exactly representable: float32 rounding kept as is
    return model


def save_recovered(root: Path, layout: str = "bin", inv_freq: bool = True, shards: int = 3, seed: int = 0,
                   backbone_name: str | None = None, state_edit=None) -> tuple[Path, Path]:
    """Write ``root/sft10k`` (backbone config) and ``root/reward-model-human`` (the recovered RM).

    ``backbone_name``: what the RM's config names as backbone (default: the sft10k folder's absolute
    path). ``state_edit(state) -> state`` changes the saved tensors (for error cases).
    """
    root.mkdir(parents=True, exist_ok=True)
    config = llama_config()
    backbone = root / "sft10k"
    config.save_pretrained(str(backbone))
    rm_dir = root / "reward-model-human"
    rm_dir.mkdir()
    (rm_dir / "config.json").write_text(json.dumps({
        "_name_or_path": "/juice5/models/reward_model_human",
        "architectures": ["RewardModel"],
        "backbone_model_name_or_path": backbone_name or str(backbone),
        "model_type": "reward_model",
        "torch_dtype": "float32",
        "transformers_version": "4.29.2",
    }, indent=2))
    save_llama_tokenizer(rm_dir)
    (rm_dir / "tokenizer.model").write_bytes(b"sentencepiece model (unused here: tokenizer.json is read)")
    state = {k: v.clone() for k, v in build_reward_model(seed).state_dict().items()}
    if inv_freq:
        for i in range(config.num_hidden_layers):
            state[f"backbone_model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = rotary_inv_freq(config)
    if state_edit is not None:
        state = state_edit(state)
    keys = list(state)
    groups = [keys[i::shards] for i in range(shards)] if shards > 1 else [keys]
    ext = "bin" if layout == "bin" else "safetensors"
    prefix = "pytorch_model" if layout == "bin" else "model"
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"{prefix}-{i + 1:05d}-of-{len(groups):05d}.{ext}" if len(groups) > 1 else f"{prefix}.{ext}"
        part = {k: state[k] for k in group}
        if layout == "bin":
            torch.save(part, rm_dir / name)
        else:
            from safetensors.torch import save_file

            save_file(part, str(rm_dir / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in group})
    if len(groups) > 1:
        total = sum(v.numel() * v.element_size() for v in state.values())
        (rm_dir / f"{prefix}.{ext}.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return rm_dir, backbone


def load_original(rm_dir: Path) -> AlpacaFarmRewardModel:
    """The stand-in RewardModel rebuilt from its own saved shards, as AlpacaFarm loads it (inv_freq unused)."""
    index = json.loads(next(rm_dir.glob("*.index.json")).read_text())
    state = {}
    for name in sorted(set(index["weight_map"].values())):
        if name.endswith(".bin"):
            state.update(torch.load(rm_dir / name, weights_only=True))
        else:
            from safetensors.torch import load_file

            state.update(load_file(str(rm_dir / name)))
    state = {k: v for k, v in state.items() if not k.endswith("inv_freq")}
    model = AlpacaFarmRewardModel(llama_config())
    model.load_state_dict(state, strict=True)
    return model.eval()
