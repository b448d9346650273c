"""The toy world: a synthetic instruction data set and its deterministic gold reward.

Three short tasks over a small vocabulary, each with one right answer and many near misses:

- ``list``:    "List 3 animals."             -> "cat, dog, fox"
- ``sort``:    "Sort these letters." / "d a c" -> "a c d"
- ``repeat``:  "Repeat the word sun 3 times." -> "sun sun sun"

The SFT split mixes correct answers with degraded ones (a missing, extra, repeated or wrong item,
a swapped pair), so an SFT policy answers with a spread of quality. The gold reward is what a
careful judge of the task would give: the fraction of the task done right, minus penalties for the
things an imperfect proxy can be fooled by (extra length, repetition, wrong items).
"""

from __future__ import annotations

import re
import string
import zlib
from dataclasses import dataclass

import numpy as np

CATEGORIES: dict[str, tuple[str, ...]] = {
    "animals": ("cat", "dog", "fox", "owl", "bee", "cow", "pig", "rat", "bat", "elk"),
    "colors": ("red", "blue", "green", "pink", "gray", "gold", "tan", "teal", "navy", "lime"),
    "fruits": ("apple", "pear", "plum", "fig", "kiwi", "lemon", "mango", "grape", "peach", "lime"),
    "tools": ("saw", "axe", "drill", "file", "rake", "hoe", "vise", "awl", "plane", "level"),
    "metals": ("iron", "tin", "zinc", "lead", "gold", "copper", "nickel", "steel", "brass", "silver"),
    "birds": ("owl", "crow", "hawk", "duck", "swan", "wren", "dove", "kite", "robin", "finch"),
}
ALL_WORDS = tuple(sorted({w for words in CATEGORIES.values() for w in words}))
LETTERS = tuple(string.ascii_lowercase)
REPEAT_WORDS = ("sun", "moon", "star", "rain", "wind", "snow", "tree", "rock", "sea", "sky", "hill", "leaf")
TASKS = ("list", "sort", "repeat")
SPLITS = ("sft", "preference", "unlabeled", "val", "rm_val")
# The prompt space is cut in three by a fixed hash of the prompt's text (crc32 mod 8): "val" (2 of 8, the
# evaluation prompts of best-of-n and PPO), "rm_val" (1 of 8, the reward models' held-out pairs and so their
# reward_stats.json) and "train" (the rest: sft, preference, unlabeled). No prompt is in two parts.
PROMPT_PARTS = {0: "val", 1: "val", 2: "rm_val"}
SPLIT_PART = {"val": "val", "rm_val": "rm_val"}  # every other split draws from "train"

_LIST_RE = re.compile(r"^List (\d+) (\w+)\.$")
_SORT_RE = re.compile(r"^Sort these letters\.$")
_REPEAT_RE = re.compile(r"^Repeat the word (\w+) (\d+) times\.$")

# Gold penalties, per offending item. Extra items cost less than wrong ones, so a proxy that learnt
# "more items = better" is rewarded a little at first and punished as it overdoes it.
PENALTY_WRONG = 0.3
PENALTY_DUPLICATE = 0.3
PENALTY_EXTRA = 0.2


@dataclass(frozen=True)
class Task:
    """One parsed instruction: what a right answer is made of."""

    kind: str
    target: tuple[str, ...]  # the right answer's items, in order
    allowed: frozenset[str]  # items that are not wrong
    ordered: bool  # whether order matters (sort, repeat) or not (list)
    separator: str

    def render(self, items) -> str:
        return self.separator.join(items)


def parse_task(instruction: str, input: str = "") -> Task:
    """Recover the task from its instruction and input; ValueError for anything else."""
    if m := _LIST_RE.match(instruction):
        k, category = int(m.group(1)), m.group(2)
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; expected one of {sorted(CATEGORIES)}")
        words = CATEGORIES[category]
        return Task("list", words[:k], frozenset(words), ordered=False, separator=", ")
    if _SORT_RE.match(instruction):
        letters = input.split()
        return Task("sort", tuple(sorted(letters)), frozenset(letters), ordered=True, separator=" ")
    if m := _REPEAT_RE.match(instruction):
        word, k = m.group(1), int(m.group(2))
        return Task("repeat", (word,) * k, frozenset([word]), ordered=True, separator=" ")
    raise ValueError(f"not a toy-world instruction: {instruction!r}")


def split_items(task: Task, answer: str) -> list[str]:
    if task.separator == ", ":
        return [w.strip() for w in answer.split(",") if w.strip()]
    return answer.split()


def gold_score(instruction: str, input: str, answer: str) -> float:
    """Score one answer in [-1, 1]: fraction of the task done right minus penalties."""
    task = parse_task(instruction, input)
    items = split_items(task, answer)
    k = len(task.target)
    if not items:
        return -1.0
    wrong = sum(1 for w in items if w not in task.allowed)
    if task.kind == "list":
        seen: set[str] = set()
        duplicates = 0
        for w in items:
            if w in task.allowed:
                duplicates += w in seen
                seen.add(w)
        correct = min(len(seen), k) / k
        extra = max(0, len(items) - k - duplicates - wrong)
    elif task.kind == "sort":
        duplicates = len(items) - len(set(items))
        correct = sum(a == b for a, b in zip(items, task.target, strict=False)) / k
        extra = max(0, len(items) - k - duplicates - wrong)
    else:  # repeat: k copies of one word; copies beyond k are extra, not duplicates
        duplicates = 0
        correct = min(len(items) - wrong, k) / k
        extra = max(0, len(items) - wrong - k)
    score = correct - PENALTY_WRONG * wrong - PENALTY_DUPLICATE * duplicates - PENALTY_EXTRA * extra
    return float(min(1.0, max(-1.0, score)))


class ToyGoldReward:
    """The toy world's gold reward model: instructions, inputs and answers in, one float per answer out.

    The same interface as a neural gold RM (:mod:`rmopt.gold`), so every stage treats them alike.
    """

    name = "toy"

    def score(self, instructions, inputs, answers, batch_size: int | None = None) -> np.ndarray:
        if not (len(instructions) == len(inputs) == len(answers)):
            raise ValueError(
                f"instructions, inputs and answers differ in length: "
                f"{len(instructions)}, {len(inputs)}, {len(answers)}"
            )
        return np.array([gold_score(i, x, a) for i, x, a in zip(instructions, inputs, answers, strict=True)], np.float32)


def _degrade(task: Task, items: list[str], rng: np.random.Generator) -> list[str]:
    """One near miss: drop, add, repeat or replace an item, or swap two."""
    items = list(items)
    kind = rng.choice(["drop", "extra", "repeat", "wrong", "swap"])
    if kind == "drop" and len(items) > 1:
        del items[rng.integers(len(items))]
    elif kind == "extra":
        pool = sorted(task.allowed - set(items)) or sorted(task.allowed)
        items.insert(rng.integers(len(items) + 1), str(rng.choice(pool)))
    elif kind == "repeat":
        items.insert(rng.integers(len(items) + 1), items[rng.integers(len(items))])
    elif kind == "wrong":
        vocab = LETTERS if task.kind == "sort" else ALL_WORDS
        pool = [w for w in vocab if w not in task.allowed]
        items[rng.integers(len(items))] = str(rng.choice(pool))
    elif len(items) > 1:  # swap
        i, j = rng.choice(len(items), size=2, replace=False)
        items[i], items[j] = items[j], items[i]
    return items


def prompt_part(instruction: str, input: str = "") -> str:
    """The part of the prompt space a prompt belongs to: ``val``, ``rm_val`` or ``train`` (a fixed hash of its text).

    Each split draws only from its own part (:data:`SPLIT_PART`), so no (instruction, input) of the
    evaluation split appears in sft, preference, unlabeled or rm_val. A sort prompt is placed by its
    set of letters, so the same letters in another order (the same right answer) stay in one part.
    """
    key = " ".join(sorted(input.split())) if _SORT_RE.match(instruction) else input
    return PROMPT_PARTS.get(zlib.crc32(f"{instruction}\n{key}".encode()) % 8, "train")


def _draw_instruction(rng: np.random.Generator, kind: str) -> tuple[str, str]:
    if kind == "list":
        category = str(rng.choice(sorted(CATEGORIES)))
        return f"List {rng.integers(2, 6)} {category}.", ""
    if kind == "sort":
        letters = rng.choice(LETTERS, size=rng.integers(3, 6), replace=False)
        return "Sort these letters.", " ".join(letters)
    return f"Repeat the word {rng.choice(REPEAT_WORDS)} {rng.integers(2, 6)} times.", ""


def _instruction(rng: np.random.Generator, part: str) -> tuple[str, str]:
    """A prompt of a uniformly drawn task kind from one part of the prompt space (:func:`prompt_part`).

    The kind is drawn first and the prompt redrawn within it, so every part keeps the same task mix.
    """
    kind = str(rng.choice(TASKS))
    while True:
        instruction, input = _draw_instruction(rng, kind)
        if prompt_part(instruction, input) == part:
            return instruction, input


def correct_answer(instruction: str, input: str, rng: np.random.Generator | None = None) -> str:
    """A right answer; for ``list`` tasks a random choice of distinct category members."""
    task = parse_task(instruction, input)
    if task.kind == "list":
        rng = rng or np.random.default_rng(0)
        words = sorted(task.allowed)
        return task.render(rng.choice(words, size=len(task.target), replace=False).tolist())
    return task.render(task.target)


def make_example(rng: np.random.Generator, noise: float, part: str = "train") -> dict[str, str]:
    instruction, input = _instruction(rng, part)
    task = parse_task(instruction, input)
    items = split_items(task, correct_answer(instruction, input, rng))
    if rng.random() < noise:
        items = _degrade(task, items, rng)
        if rng.random() < 0.3:
            items = _degrade(task, items, rng)
    return {"instruction": instruction, "input": input, "output": task.render(items)}


def generate_split(size: int, seed: int, noise: float = 0.0, part: str = "train") -> list[dict[str, str]]:
    """``size`` examples with the AlpacaFarm schema (instruction, input, output) from one part of the
    prompt space (:func:`prompt_part`)."""
    rng = np.random.default_rng(seed)
    return [make_example(rng, noise, part) for _ in range(size)]


def generate_dataset(sizes: dict[str, int], seed: int = 0, sft_noise: float = 0.5):
    """A ``datasets.DatasetDict`` with AlpacaFarm-like splits; only ``sft`` has degraded outputs.

    ``val`` (evaluation) and ``rm_val`` (the reward models' held-out pairs) hold prompts of their own
    parts of the prompt space, which no other split contains.
    """
    import datasets

    splits = {}
    for i, name in enumerate(SPLITS):
        if sizes.get(name, 0) <= 0:
            continue
        rows = generate_split(
            sizes[name], seed=seed * 1000 + i, noise=sft_noise if name == "sft" else 0.0, part=SPLIT_PART.get(name, "train")
        )
        splits[name] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)


def corpus(n: int = 4000, seed: int = 12345) -> list[str]:
    """Text for training the toy tokenizer: every word of the world, in prompt context."""
    rows = generate_split(n, seed, noise=0.5)
    words = list(ALL_WORDS) + list(LETTERS) + list(REPEAT_WORDS)
    text = [f"{r['instruction']}\n{r['input']}{r['output']}" for r in rows]
    return text + [" ".join(words), ", ".join(words)]
