"""Where models and tokenizers come from: a local folder, a hub name, or a fresh toy config.

A ``ModelSource`` is what ``conf/model/*.yaml`` instantiates. Every stage asks it for the tokenizer
and for the kind of model it trains (causal LM, reward model), so the special tokens of the prompt
format and the embedding size are handled in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rmopt.errors import RmoptError
from rmopt.hub import from_pretrained as _from_pretrained  # also rmopt.gold's loader
from rmopt.prompts import ASSISTANT, EOS, PAD, PROMPTER


def _dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise RmoptError(f"model.dtype={name!r} is not one of float32, bfloat16, float16") from None


def ensure_special_tokens(tokenizer) -> int:
    """Give a tokenizer the prompt format's special tokens; return how many were added."""
    have = set(tokenizer.get_vocab())
    missing = [t for t in (PROMPTER, ASSISTANT) if t not in have]
    added = 0
    if missing:
        added += tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if EOS not in have:
        added += tokenizer.add_special_tokens({"eos_token": EOS})
    else:
        tokenizer.eos_token = EOS
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        # Pooling reads the last non-pad token, so pad must differ from the EOS that closes an answer.
        if PAD not in have:
            added += tokenizer.add_special_tokens({"pad_token": PAD})
        else:
            tokenizer.pad_token = PAD
    return added


def check_special_tokens(tokenizer, where: str = "tokenizer") -> None:
    """A tokenizer must know every special token of the prompt format as one token."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (PROMPTER, ASSISTANT, EOS) if t not in vocab]
    if missing or tokenizer.pad_token_id is None:
        raise RmoptError(
            f"{where} lacks the special tokens {missing or ['a pad token']}; expected all of "
            f"{[PROMPTER, ASSISTANT, EOS]} and a pad token (load it through rmopt.models.ModelSource)"
        )


@dataclass
class ModelSource:
    """A model to start from: ``name_or_path`` (folder or hub name) or, if null, a fresh ``config``.

    ``config`` holds ``GPTNeoXConfig`` arguments for a model built from scratch (the toy world);
    ``tokenizer`` names where the tokenizer comes from: null (= ``name_or_path``), a folder or hub
    name, or ``toy`` (trained locally on the toy world's corpus).
    """

    name_or_path: str | None = None
    config: dict[str, Any] | None = None
    tokenizer: str | None = None
    dtype: str = "float32"
    tokenizer_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.name_or_path is None and self.config is None:
            raise RmoptError("model needs name_or_path (a folder or hub name) or config (a fresh model)")
        self.torch_dtype = _dtype(self.dtype)

    def load_tokenizer(self):
        # `toy` names the tokenizer of a fresh toy model; a saved folder brings its own tokenizer
        source = (
            self.name_or_path if self.tokenizer in (None, "toy") and self.name_or_path else self.tokenizer
        )
        if source in (None, "toy"):
            from rmopt.toy.tokenizer import train_toy_tokenizer

            tokenizer = train_toy_tokenizer(**self.tokenizer_kwargs)
        else:
            from transformers import AutoTokenizer

            what = "model" if source == self.name_or_path else "tokenizer"
            tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, source, what)
        ensure_special_tokens(tokenizer)
        tokenizer.padding_side = "right"
        return tokenizer

    def _fresh_config(self, tokenizer):
        from transformers import GPTNeoXConfig

        kwargs = dict(self.config)
        kwargs.setdefault("vocab_size", len(tokenizer))
        return GPTNeoXConfig(
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )

    def _finish(self, model, tokenizer):
        old = model.get_input_embeddings().num_embeddings
        if old < len(tokenizer):
            # New tokens (the prompt format's) start at the mean of the old embeddings, which keeps the
            # model's outputs nearly unchanged until it learns them (random rows would add noise).
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            with torch.no_grad():
                seen = set()
                for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
                    if emb is None or id(emb.weight) in seen or emb.weight.shape[0] != len(tokenizer):
                        continue
                    seen.add(id(emb.weight))
                    emb.weight[old:] = emb.weight[:old].mean(0, keepdim=True).to(emb.weight.dtype)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.config.eos_token_id = tokenizer.eos_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.generation_config.eos_token_id = tokenizer.eos_token_id
        return model.to(self.torch_dtype)

    def load_causal_lm(self, tokenizer):
        from transformers import AutoModelForCausalLM

        if self.name_or_path is None:
            model = AutoModelForCausalLM.from_config(self._fresh_config(tokenizer))
        else:
            model = _from_pretrained(
                AutoModelForCausalLM.from_pretrained, self.name_or_path, "model", dtype=self.torch_dtype
            )
        return self._finish(model, tokenizer)

    def load_reward_model(self, tokenizer):
        """A sequence-classification model with one output, trunk from the source (an SFT'd LM)."""
        from transformers import AutoModelForSequenceClassification

        if self.name_or_path is None:
            config = self._fresh_config(tokenizer)
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = _from_pretrained(
                AutoModelForSequenceClassification.from_pretrained,
                self.name_or_path,
                "model",
                num_labels=1,
                dtype=self.torch_dtype,
            )
        return self._finish(model, tokenizer)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a left-padded row sees the same positions as a right-padded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def fsdp_strategy(
    layers=("transformers.models.gpt_neox.modeling_gpt_neox.GPTNeoXLayer",),
    activation_checkpointing=False,
    **kwargs,
):
    """Lightning's ``FSDPStrategy`` that shards each transformer layer (``layers``: dotted class names).

    ``conf/trainer/fsdp.yaml`` builds it; YAML cannot name a set of classes, which FSDP's
    ``auto_wrap_policy`` wants. ``activation_checkpointing`` recomputes those layers' activations in
    the backward pass (less memory, ~30% more compute).
    """
    from hydra.utils import get_class
    from lightning.pytorch.strategies import FSDPStrategy

    try:
        classes = {get_class(name) for name in layers}
    except Exception as e:
        raise RmoptError(f"fsdp layer class in {list(layers)} cannot be imported: {e}") from e
    if activation_checkpointing:
        kwargs["activation_checkpointing_policy"] = classes
    return FSDPStrategy(auto_wrap_policy=classes, **kwargs)


def is_sharded(strategy) -> bool:
    """Whether a Lightning strategy holds only a shard of each parameter on a process (FSDP, ZeRO-3)."""
    name = type(strategy).__name__
    return (
        "FSDP" in name
        or "ModelParallel" in name
        or (name == "DeepSpeedStrategy" and getattr(strategy, "zero_stage_3", False))
    )


def plain_model_from_state(model, state_dict: dict, prefix: str = "model."):
    """A fresh, unwrapped copy of a Hugging Face ``model`` holding ``state_dict`` (its keys under ``prefix``)."""
    state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not state:
        raise RmoptError(f"state dict has no keys under {prefix!r}; cannot rebuild the model to save it")
    plain = type(model)._from_config(model.config)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = set(getattr(plain, "all_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RmoptError(
            f"gathered weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    plain.generation_config = model.generation_config
    return plain.to(next(iter(state.values())).dtype)


def model_for_saving(trainer, model, attr: str = "model"):
    """The model to ``save_pretrained`` after training: ``model`` itself, or under a sharding strategy
    (FSDP, DeepSpeed ZeRO-3) a full copy gathered from every process.

    Call it on every process (gathering is collective); it returns None on all but rank 0 when sharded.
    """
    if not is_sharded(trainer.strategy):
        return model
    state = trainer.strategy.lightning_module_state_dict()  # full weights, gathered on rank 0
    if not trainer.is_global_zero:
        return None
    return plain_model_from_state(model, state, prefix=f"{attr}.")
