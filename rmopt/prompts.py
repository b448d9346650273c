"""The prompt format shared by SFT, reward models and PPO (Open-Assistant style).

    <|prompter|>{instruction}\\n{input}<|endoftext|><|assistant|>{output}<|endoftext|>

The ``\\n{input}`` part appears only when the input is non-empty.
"""

from __future__ import annotations

PROMPTER = "<|prompter|>"
ASSISTANT = "<|assistant|>"
EOS = "<|endoftext|>"
PAD = "<|padding|>"
SPECIAL_TOKENS = (PROMPTER, ASSISTANT, EOS, PAD)


def format_prompt(instruction: str, input: str = "") -> str:
    """The text the model sees before it answers."""
    body = f"{instruction}\n{input}" if input else instruction
    return f"{PROMPTER}{body}{EOS}{ASSISTANT}"


def format_answer(output: str) -> str:
    """The text the model is trained to produce: the answer closed by EOS."""
    return f"{output}{EOS}"


def split_prompt(prompt: str) -> tuple[str, str]:
    """Inverse of :func:`format_prompt`: recover (instruction, input) from a formatted prompt."""
    if not (prompt.startswith(PROMPTER) and prompt.endswith(EOS + ASSISTANT)):
        raise ValueError(f"not a formatted prompt: {prompt[:60]!r}")
    body = prompt[len(PROMPTER) : -len(EOS + ASSISTANT)]
    instruction, _, input = body.partition("\n")
    return instruction, input
