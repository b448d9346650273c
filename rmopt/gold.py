"""Gold reward models behind one API: ``score(instructions, inputs, answers) -> float32 array``.

- the toy world's exact gold (:class:`rmopt.toy.world.ToyGoldReward`, ``gold=toy``);
- a neural sequence-classification gold RM with its own tokenizer and input format
  (:class:`HFGoldReward`, ``gold=alpaca_farm`` or ``gold=hf``). It takes text, never token ids:
  answers from a policy are decoded first and rebuilt in the gold model's own format, since the gold
  model's tokenizer and prompt template differ from the policy's.

``conf/gold/*.yaml`` instantiate these; :func:`build_gold` picks the configured one or, when none is
configured, the data source's own gold (the toy world has one).
"""

from __future__ import annotations

import os

import numpy as np

from rmopt.errors import RmoptError

# The Alpaca prompt template that AlpacaFarm's reward models were trained on: its
# examples/prompts/v0_inputs_noinputs.json ("prompt_inputs" / "prompt_noinputs"), the answer appended
# directly after "### Response:" (data_preprocessor.format_prompt + format_output).
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
TEMPLATES = ("alpaca", "prompt_format")


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt for one instruction; the no-input variant when ``input`` is empty."""
    if input:
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def gold_text(template: str, instruction: str, input: str, answer: str, eos: str = "") -> str:
    """The text a gold RM reads: its own prompt template, then the answer, then ``eos`` (may be empty)."""
    if template == "alpaca":
        return alpaca_prompt(instruction, input) + answer + eos
    if template == "prompt_format":  # a gold RM trained in this project's own format
        from rmopt.prompts import format_answer, format_prompt

        return format_prompt(instruction, input) + format_answer(answer)
    raise RmoptError(f"gold template {template!r} is unknown; expected one of {list(TEMPLATES)}")


def _model_type(folder: str) -> str | None:
    import json

    try:
        return json.loads(open(os.path.join(folder, "config.json")).read()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _check_options(template: str, padding_side: str) -> None:
    if template not in TEMPLATES:
        raise RmoptError(f"gold template {template!r} is unknown; expected one of {list(TEMPLATES)}")
    if padding_side not in ("left", "right"):
        raise RmoptError(f"gold.padding_side={padding_side!r}: expected left or right")


def _check_lengths(instructions, inputs, answers) -> None:
    if not (len(instructions) == len(inputs) == len(answers)):
        raise RmoptError(
            f"instructions, inputs and answers differ in length: {len(instructions)}, {len(inputs)}, {len(answers)}"
        )


def resolve_device(device: str | None) -> str:
    """``auto`` (or null) -> cuda when available, else cpu."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


class HFGoldReward:
    """A Hugging Face sequence-classification model (one output) as gold RM, in its own input format.

    ``template``: ``alpaca`` (AlpacaFarm's reward models) or ``prompt_format`` (this project's format).
    ``append_eos``: add the gold tokenizer's EOS text after the answer (AlpacaFarm's reward models were
    trained without: ``end_sequence_with_eos=False``). The tokenizer adds what it adds by itself (the
    LLaMA tokenizer's BOS); texts longer than ``max_length`` tokens keep their first ``max_length``.
    ``padding_side``: where a batch pads (AlpacaFarm: left). The score is read at the last non-padding
    token, with positions counted from each row's first real token, so a padded row scores as it
    would alone. A ``score_bias`` in the model's config (``rmopt-convert-alpacafarm-rm`` keeps AlpacaFarm's
    reward-head bias there; transformers' score head has none) is added by the score head.
    """

    def __init__(
        self,
        name_or_path: str,
        template: str = "alpaca",
        device: str = "auto",
        batch_size: int = 16,
        dtype: str = "float32",
        max_length: int = 1024,
        append_eos: bool = False,
        padding_side: str = "right",
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from rmopt.models import _dtype, _from_pretrained

        _check_options(template, padding_side)
        if not name_or_path:
            raise RmoptError("gold.name_or_path is not set: point it at the gold reward model's folder")
        if os.path.isdir(name_or_path) and not os.path.exists(os.path.join(name_or_path, "config.json")):
            raise RmoptError(f"gold reward model folder {name_or_path!r} has no config.json")
        if os.path.isdir(name_or_path) and _model_type(name_or_path) == "reward_model":
            raise RmoptError(
                f"gold reward model folder {name_or_path!r} is AlpacaFarm's RewardModel as its weight recovery left it; "
                f"convert it first: rmopt-convert-alpacafarm-rm {name_or_path} <output folder>"
            )
        tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, name_or_path, "gold tokenizer")
        model = _from_pretrained(
            AutoModelForSequenceClassification.from_pretrained,
            name_or_path,
            "gold reward model",
            dtype=_dtype(dtype),
        )
        self._setup(name_or_path, model, tokenizer, template, device, batch_size, max_length, append_eos, padding_side)

    @classmethod
    def from_model(cls, model, tokenizer, template: str = "alpaca", device: str = "auto", batch_size: int = 16,
                   max_length: int = 1024, append_eos: bool = False, padding_side: str = "right", name: str = "model"):
        """A gold scorer around a model and tokenizer already in memory (as a loaded folder would be)."""
        _check_options(template, padding_side)
        self = cls.__new__(cls)
        self._setup(name, model, tokenizer, template, device, batch_size, max_length, append_eos, padding_side)
        return self

    def _setup(self, name, model, tokenizer, template, device, batch_size, max_length, append_eos, padding_side):
        import torch

        self.name = name
        self.template, self.batch_size, self.max_length = template, int(batch_size), int(max_length)
        self.device = torch.device(resolve_device(device))
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None:  # pooling uses the attention mask, so any pad token will do
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = padding_side
        self.tokenizer.truncation_side = "right"
        self.eos = (self.tokenizer.eos_token or "") if append_eos else ""
        if model.config.num_labels != 1:
            raise RmoptError(f"gold reward model {name!r} has {model.config.num_labels} outputs; expected 1")
        self.model = with_score_bias(model).to(self.device).eval()

    def texts(self, instructions, inputs, answers) -> list[str]:
        _check_lengths(instructions, inputs, answers)
        return [
            gold_text(self.template, i, x or "", a, self.eos)
            for i, x, a in zip(instructions, inputs, answers, strict=True)
        ]

    def encode(self, texts: list[str]):
        """The gold tokenizer's batch for ``texts``: its own special tokens, padded, at most ``max_length``."""
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def score(
        self, instructions, inputs, answers, batch_size: int | None = None, progress=None
    ) -> np.ndarray:
        """One float32 score per answer, from text (the gold tokenizer builds its own input)."""
        import torch

        texts = self.texts(instructions, inputs, answers)
        batch_size = int(batch_size or self.batch_size)
        # Longest first within the call, so batches pad little; results go back in the input order.
        order = sorted(range(len(texts)), key=lambda j: -len(texts[j]))
        scores = np.empty(len(texts), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = self.encode([texts[j] for j in idx]).to(self.device)
                scores[idx] = (
                    _pooled_scores(self.model, enc["input_ids"], enc["attention_mask"]).float().cpu().numpy()
                )
                if progress is not None:
                    progress.update(len(idx))
        return scores


def with_score_bias(model):
    """``model`` whose score head adds ``config.score_bias`` (one value per output), if the config has one.

    The head becomes ``Linear(hidden, num_labels, bias=True)`` with the same weight: the same operation
    as AlpacaFarm's ``reward_head``, so the converted model's scores equal the original's.
    """
    import torch

    from rmopt.convert_alpaca_farm import SCORE_BIAS_KEY

    bias = getattr(model.config, SCORE_BIAS_KEY, None)
    if bias is None:
        return model
    old = getattr(model, "score", None)
    if not isinstance(old, torch.nn.Linear):
        raise RmoptError(f"config.{SCORE_BIAS_KEY} is set but the model has no linear score head")
    values = torch.tensor(bias if isinstance(bias, (list, tuple)) else [bias], dtype=torch.float64)
    if values.numel() != old.out_features:
        raise RmoptError(f"config.{SCORE_BIAS_KEY} has {values.numel()} value(s); the score head has {old.out_features} outputs")
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        if old.bias is not None:
            values = values + old.bias.detach().double().cpu()
        head.bias.copy_(values.to(head.bias.dtype))
    model.score = head
    return model


def _pooled_scores(model, input_ids, attention_mask):
    """[B] scores read at the last attended token (padding-side agnostic)."""
    if hasattr(model, "score") and hasattr(model, "base_model") and model.base_model is not model:
        from rmopt.ensemble import last_token_scores

        return last_token_scores(model, input_ids, attention_mask)[:, 0]
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]


def build_gold(gold_cfg, data=None):
    """The configured gold scorer, or the data source's own gold when ``gold`` is not configured."""
    import hydra

    if gold_cfg is not None and gold_cfg.get("_target_"):
        return hydra.utils.instantiate(gold_cfg)
    if data is not None and hasattr(data, "gold"):
        return data.gold()
    raise RmoptError(
        "no gold reward model: this data source has none built in; pass gold=alpaca_farm "
        "(gold.name_or_path=<folder>) or gold=hf gold.name_or_path=<folder>"
    )
