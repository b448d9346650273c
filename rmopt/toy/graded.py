"""A candidate graded toy world: longer answers, partial credit, thousands of prompts (not yet wired in).

The same public interface as :mod:`rmopt.toy.world` (``parse_task``, ``gold_score``, ``ToyGoldReward``,
``generate_split``, ``generate_dataset``, ``prompt_part``, ``correct_answer``, ``corpus``), so a stage
could switch over by import. Four tasks, each answer 5 to 12 items under one or more constraints:

- ``list``:   "List 8 animals in alphabetical order, none with the letter o."
              -> "ape, bat, cat, deer, elk, hen, pig, rat"   (any 8 valid members: 6 to 12)
- ``sort``:   "Sort these letters backwards." / "d a q c m b n"  -> "q n m d c b a"   (6 to 12 letters)
- ``filter``: "Remove the fruits." / "fig, drum, kiwi, red, saw, tin, plum, owl, navy"
              -> "drum, red, saw, tin, owl, navy"   (the other words in their order: 5 to 10)
- ``count``:  "Count down from 40 in steps of 3, 8 numbers."  -> "40 37 34 31 28 25 22 19"   (6 to 12)

**The gold** is what a careful judge of the task would give, with partial credit: each of the k
items a right answer needs is worth the same share, and an order constraint (every task but the
plain list) is graded by how many items are in order, so one more right item or one item fewer out
of place is worth a little. With ``kept`` the valid distinct items (the first k of them):

    unordered (plain list):  |kept| / k
    ordered:                 (|kept| + longest run of kept in the right order, not necessarily adjacent) / (2 k)

minus penalties in units of one item's share (1 / k): 1 for a wrong item (another category's word,
a letter not in the input, a number not in the sequence, a word the filter should remove or that
the input does not hold), 1 for a repeated item, 0.75 for a valid item beyond the k asked for, 0.5
for a category member with the excluded letter. Clipped to [-1, 1]; an empty answer scores -1.
Only a complete answer in order with nothing wrong scores 1. The gold refers to nothing but the task.

**SFT data** are near misses of graded quality: a right answer with Binomial(k, ``sft_noise``)
edits (each one of: drop an item, replace one by a wrong item, insert one, repeat one, swap a
neighbouring pair, move one item, slip in a distractor: a member with the excluded letter, a word
to remove), so most SFT answers are a few mistakes short of perfect and a perfect one is rare
(``docs/calibration.md`` has the measurements; ``python -m rmopt.toy.graded`` repeats them).

**The prompt space** has thousands of prompts per task and is cut in three parts (``val``,
``rm_val``, ``train``) by a fixed hash, as in :mod:`rmopt.toy.world`. The hash is taken of what the
prompt's right answers are made of (:attr:`Task.key`), so two prompts that share a right answer are
always in one part: a list prompt by its category and count (the order and letter variants of
"List 8 animals" share right answers), a sort prompt by its set of letters, a filter prompt by the
words it keeps, a count prompt by its set of numbers (up and down alike). No two task kinds share a
right answer: a list answer is words of one category, a filter answer words of two or more.
"""

from __future__ import annotations

import bisect
import functools
import re
import string
import zlib
from dataclasses import dataclass

import numpy as np

# Disjoint categories of short words, so every word belongs to exactly one category.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "animals": ("cat", "dog", "fox", "cow", "pig", "rat", "bat", "elk", "yak", "ape", "hen", "deer", "goat", "mole", "mule", "wolf"),
    "birds": ("owl", "crow", "hawk", "duck", "swan", "wren", "dove", "kite", "robin", "finch", "jay", "lark", "gull", "rook", "tern", "emu"),
    "colors": ("red", "blue", "green", "pink", "gray", "tan", "teal", "navy", "cyan", "beige", "amber", "ivory", "black", "white", "brown", "mauve"),
    "fruits": ("apple", "pear", "plum", "fig", "kiwi", "lemon", "mango", "grape", "peach", "lime", "melon", "date", "guava", "cherry", "olive", "berry"),
    "tools": ("saw", "axe", "drill", "file", "rake", "hoe", "vise", "awl", "plane", "level", "hammer", "chisel", "wrench", "spade", "clamp", "adze"),
    "metals": ("iron", "tin", "zinc", "lead", "gold", "copper", "nickel", "steel", "brass", "silver", "bronze", "chrome", "cobalt", "pewter", "lithium", "cadmium"),
    "plants": ("oak", "elm", "ash", "fir", "pine", "yew", "moss", "fern", "ivy", "reed", "rose", "lily", "palm", "cedar", "maple", "birch"),
    "music": ("drum", "harp", "flute", "lute", "horn", "tuba", "oboe", "bell", "gong", "fife", "viola", "cello", "banjo", "piano", "sitar", "organ"),
}
ALL_WORDS = tuple(sorted({w for words in CATEGORIES.values() for w in words}))
WORD_CATEGORY = {w: c for c, words in CATEGORIES.items() for w in words}
CATEGORY_NAMES = tuple(sorted(CATEGORIES))
OTHER_WORDS = {c: tuple(w for w in ALL_WORDS if WORD_CATEGORY[w] != c) for c in CATEGORIES}  # words of other categories
LETTERS = tuple(string.ascii_lowercase)
TASKS = ("list", "sort", "filter", "count")
SPLITS = ("sft", "preference", "unlabeled", "val", "rm_val")
PROMPT_PARTS = {0: "val", 1: "val", 2: "rm_val"}  # crc32 mod 8, as in rmopt.toy.world; the rest is "train"
SPLIT_PART = {"val": "val", "rm_val": "rm_val"}  # every other split draws from "train"

# The prompt space.
LIST_COUNTS = range(6, 13)  # items a list answer has
SORT_COUNTS = range(6, 13)  # letters to sort
FILTER_REMOVED = range(2, 5)  # members of the named category in a filter input (to remove)
FILTER_LENGTHS = range(9, 13)  # words in a filter input, of at least three categories
COUNT_STARTS = range(0, 31)  # first number of an upward count
COUNT_STEPS = range(1, 6)
COUNT_LENGTHS = range(6, 13)
ORDERS = ("", "alphabetical", "reverse alphabetical")

# Gold penalties per offending item, in units of one item's share of the credit (1 / k).
PENALTY_WRONG = 1.0
PENALTY_DUPLICATE = 1.0
PENALTY_EXTRA = 0.75
PENALTY_VIOLATION = 0.5

# SFT near misses: the chance that each item of an answer brings one edit (Binomial(k, sft_noise) edits).
DEFAULT_SFT_NOISE = 0.5

_LIST_RE = re.compile(r"^List (\d+) (\w+)(?: in (alphabetical|reverse alphabetical) order)?(?:, none with the letter ([a-z]))?\.$")
_SORT_RE = re.compile(r"^Sort these letters( backwards)?\.$")
_FILTER_RE = re.compile(r"^Remove the (\w+)\.$")
_COUNT_RE = re.compile(r"^Count (?:(down) )?from (\d+) in steps of (\d+), (\d+) numbers\.$")


@dataclass(frozen=True)
class Task:
    """One parsed instruction: what a right answer is made of.

    ``order`` lists the valid items in their required order (``None``: any order will do);
    ``target`` is one right answer; ``key`` is what the prompt's part of the prompt space is hashed
    from (the same for prompts that share a right answer); ``distractors`` are the wrong items a near
    miss most often slips in (a list member with the excluded letter, a filter word to remove).
    """

    kind: str
    k: int  # items a right answer has
    allowed: frozenset[str]  # items that count towards the answer
    violating: frozenset[str]  # items of the right kind that break a constraint (no credit, a small penalty)
    order: tuple[str, ...] | None
    target: tuple[str, ...]
    separator: str
    key: str
    distractors: frozenset[str] = frozenset()

    def render(self, items) -> str:
        return self.separator.join(items)


def _list_words(category: str, letter: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    words = CATEGORIES[category]
    if letter is None:
        return words, ()
    return tuple(w for w in words if letter not in w), tuple(w for w in words if letter in w)


@functools.lru_cache(maxsize=None)
def list_letters(category: str, k: int) -> tuple[str, ...]:
    """Letters a list prompt may exclude: each rules out at least two members and leaves more than k."""
    words = CATEGORIES[category]
    return tuple(x for x in LETTERS if 2 <= sum(x in w for w in words) and sum(x not in w for w in words) > k)


def _count_sequence(start: int, step: int, k: int, down: bool) -> tuple[str, ...]:
    return tuple(str(start - step * i if down else start + step * i) for i in range(k))


def parse_task(instruction: str, input: str = "") -> Task:
    """Recover the task from its instruction and input; ValueError for anything else."""
    if m := _LIST_RE.match(instruction):
        k, category, order, letter = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; expected one of {sorted(CATEGORIES)}")
        valid, violating = _list_words(category, letter)
        if not 1 <= k <= len(valid):
            raise ValueError(f"{instruction!r} asks for {k} items; {len(valid)} qualify")
        ranked = None if order is None else tuple(sorted(valid, reverse=order.startswith("reverse")))
        target = (ranked or valid)[:k]
        violating = frozenset(violating)
        return Task("list", k, frozenset(valid), violating, ranked, target, ", ", f"list|{category}|{k}", violating)
    if m := _SORT_RE.match(instruction):
        letters = input.split()
        if not letters or len(set(letters)) != len(letters) or not set(letters) <= set(LETTERS):
            raise ValueError(f"sort input must be distinct lowercase letters, got {input!r}")
        target = tuple(sorted(letters, reverse=bool(m.group(1))))
        return Task("sort", len(target), frozenset(target), frozenset(), target, target, " ", "sort|" + "".join(sorted(letters)))
    if m := _FILTER_RE.match(instruction):
        category = m.group(1)
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; expected one of {sorted(CATEGORIES)}")
        words = [w.strip() for w in input.split(",")]
        if len(set(words)) != len(words) or not all(w in WORD_CATEGORY for w in words):
            raise ValueError(f"filter input must be distinct words of the world, got {input!r}")
        target = tuple(w for w in words if WORD_CATEGORY[w] != category)
        removed = frozenset(words) - frozenset(target)
        if not target or not removed:
            raise ValueError(f"filter input {input!r} must hold {category} and other words")
        key = "filter|" + ", ".join(target)  # whatever is removed: the same kept words are the same answer
        return Task("filter", len(target), frozenset(target), frozenset(), target, target, ", ", key, removed)
    if m := _COUNT_RE.match(instruction):
        down, start, step, k = bool(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))
        if step < 1 or k < 2 or (down and start - step * (k - 1) < 0):
            raise ValueError(f"not a valid count: {instruction!r}")
        target = _count_sequence(start, step, k, down)
        key = "count|" + " ".join(sorted(target, key=int))
        return Task("count", k, frozenset(target), frozenset(), target, target, " ", key)
    raise ValueError(f"not a graded toy-world instruction: {instruction!r}")


def split_items(task: Task, answer: str) -> list[str]:
    if task.separator == ", ":
        return [w.strip() for w in answer.split(",") if w.strip()]
    return answer.split()


def order_credit(ranks: list[int], k: int) -> float:
    """The share of a k-item answer in the right order: the longest subsequence of ``ranks`` that
    rises, over k (one item out of place costs one item's share, wherever it went)."""
    tails: list[int] = []
    for r in ranks:
        i = bisect.bisect_left(tails, r)
        tails[i : i + 1] = [r]
    return len(tails) / k


def score_items(task: Task, items: list[str]) -> float:
    """The gold of an answer already split into items (see the module docstring)."""
    if not items:
        return -1.0
    k = task.k
    kept: list[str] = []
    seen: set[str] = set()
    wrong = duplicates = extra = violations = 0
    for w in items:
        if w in task.allowed:
            if w in seen:
                duplicates += 1
            elif len(kept) == k:
                extra += 1
            else:
                kept.append(w)
            seen.add(w)
        elif w in task.violating:
            violations += 1
        else:
            wrong += 1
    credit = len(kept) / k
    if task.order is not None:
        rank = {w: i for i, w in enumerate(task.order)}
        credit = 0.5 * credit + 0.5 * order_credit([rank[w] for w in kept], k)
    penalty = PENALTY_WRONG * wrong + PENALTY_DUPLICATE * duplicates + PENALTY_EXTRA * extra + PENALTY_VIOLATION * violations
    return float(min(1.0, max(-1.0, credit - penalty / k)))


def gold_score(instruction: str, input: str, answer: str) -> float:
    """Score one answer in [-1, 1]: the graded share of the task done right minus penalties."""
    task = parse_task(instruction, input)
    return score_items(task, split_items(task, answer))


class ToyGoldReward:
    """The graded world's gold reward: instructions, inputs and answers in, one float32 per answer out.

    The same interface as :class:`rmopt.toy.world.ToyGoldReward` and the neural gold RMs.
    """

    name = "toy-graded"

    def score(self, instructions, inputs, answers, batch_size: int | None = None) -> np.ndarray:
        if not (len(instructions) == len(inputs) == len(answers)):
            raise ValueError(
                f"instructions, inputs and answers differ in length: "
                f"{len(instructions)}, {len(inputs)}, {len(answers)}"
            )
        return np.array([gold_score(i, x, a) for i, x, a in zip(instructions, inputs, answers, strict=True)], np.float32)


# --- the prompt space -------------------------------------------------------------------------------


def prompt_part(instruction: str, input: str = "") -> str:
    """The part of the prompt space a prompt belongs to: ``val``, ``rm_val`` or ``train``.

    A fixed hash (crc32 mod 8) of the prompt's :attr:`Task.key`, so prompts that share a right
    answer (the same letters to sort, the same numbers to count up or down, the same words kept by a
    filter, the order and letter variants of one list) are in one part, and no prompt is in two.
    """
    return PROMPT_PARTS.get(zlib.crc32(parse_task(instruction, input).key.encode()) % 8, "train")


def _pick(rng: np.random.Generator, options):
    """One element of a sequence (faster than ``rng.choice`` for one scalar)."""
    return options[int(rng.integers(len(options)))]


def _draw_prompt(rng: np.random.Generator, kind: str) -> tuple[str, str]:
    if kind == "list":
        category = _pick(rng, CATEGORY_NAMES)
        k = _pick(rng, LIST_COUNTS)
        order = _pick(rng, ORDERS)
        letters = list_letters(category, k)
        text = f"List {k} {category}" + (f" in {order} order" if order else "")
        if letters and rng.random() < 0.5:
            text += f", none with the letter {_pick(rng, letters)}"
        return text + ".", ""
    if kind == "sort":
        letters = rng.choice(LETTERS, size=_pick(rng, SORT_COUNTS), replace=False)
        return "Sort these letters" + (" backwards." if rng.random() < 0.5 else "."), " ".join(letters)
    if kind == "filter":
        category = _pick(rng, CATEGORY_NAMES)
        n_removed, length = _pick(rng, FILTER_REMOVED), _pick(rng, FILTER_LENGTHS)
        others = OTHER_WORDS[category]
        while True:  # the kept words span at least two categories, so no kept answer is a list answer
            kept = [str(w) for w in rng.choice(others, size=length - n_removed, replace=False)]
            if len({WORD_CATEGORY[w] for w in kept}) >= 2:
                break
        words = kept + [str(w) for w in rng.choice(CATEGORIES[category], size=n_removed, replace=False)]
        return f"Remove the {category}.", ", ".join(str(w) for w in rng.permutation(words))
    start, step, k = _pick(rng, COUNT_STARTS), _pick(rng, COUNT_STEPS), _pick(rng, COUNT_LENGTHS)
    if rng.random() < 0.5:  # the same numbers counted down from the top
        return f"Count down from {start + step * (k - 1)} in steps of {step}, {k} numbers.", ""
    return f"Count from {start} in steps of {step}, {k} numbers.", ""


def _prompt(rng: np.random.Generator, part: str, tasks=TASKS) -> tuple[str, str]:
    """A prompt of a uniformly drawn task kind (of ``tasks``) from one part of the prompt space (:func:`prompt_part`).

    The kind is drawn first and the prompt redrawn within it, so every part keeps the same task mix.
    """
    kind = _pick(rng, tasks)
    while True:
        instruction, input = _draw_prompt(rng, kind)
        if prompt_part(instruction, input) == part:
            return instruction, input


def _right_items(task: Task, rng: np.random.Generator | None) -> list[str]:
    if task.kind == "list":
        rng = rng or np.random.default_rng(0)
        items = rng.choice(sorted(task.allowed), size=task.k, replace=False).tolist()
        return sorted(items, key=task.order.index) if task.order else items
    return list(task.target)


def correct_answer(instruction: str, input: str, rng: np.random.Generator | None = None) -> str:
    """A right answer; for ``list`` tasks a random choice of valid members (in order if asked)."""
    task = parse_task(instruction, input)
    return task.render(_right_items(task, rng))


# --- SFT near misses --------------------------------------------------------------------------------


def _wrong_item(task: Task, items: list[str], input: str, rng: np.random.Generator) -> str:
    """A plausible wrong item: a word of another category, a letter not in the input, a number near
    the sequence's, or (filter) a word the input does not hold."""
    if task.kind == "sort":
        return _pick(rng, [x for x in LETTERS if x not in task.allowed])
    if task.kind == "count":
        values = sorted(int(v) for v in task.target)
        step = values[1] - values[0]
        near = {int(v) + d for v in items if v.isdigit() for d in (-1, 1, step, -step)} or {values[-1] + step}
        pool = sorted(v for v in near if v >= 0 and str(v) not in task.allowed)
        return str(_pick(rng, pool)) if pool else str(values[-1] + step)
    if task.kind == "filter":  # keeping a word to remove is the "slip" edit
        return _pick(rng, [w for w in ALL_WORDS if w not in task.allowed and w not in task.distractors])
    return _pick(rng, OTHER_WORDS[WORD_CATEGORY[next(iter(task.allowed))]])


def _edit(task: Task, items: list[str], input: str, rng: np.random.Generator) -> list[str]:
    """One near-miss edit of an answer."""
    items = list(items)
    ops = ["drop", "replace", "insert", "repeat"]
    if task.order is not None:
        ops += ["swap", "swap", "move"]
    if task.distractors:
        ops.append("slip")
    op = _pick(rng, ops)
    if not items:
        op = "insert"
    if op == "drop" and len(items) > 1:
        del items[rng.integers(len(items))]
    elif op == "replace":
        items[rng.integers(len(items))] = _wrong_item(task, items, input, rng)
    elif op == "insert":
        surplus = sorted(task.allowed - set(items)) if task.kind == "list" else []
        new = _pick(rng, surplus) if surplus and rng.random() < 0.5 else _wrong_item(task, items, input, rng)
        items.insert(rng.integers(len(items) + 1), new)
    elif op == "repeat":
        i = rng.integers(len(items))
        items.insert(i + int(rng.integers(2)), items[i])
    elif op == "swap" and len(items) > 1:
        i = rng.integers(len(items) - 1)
        items[i], items[i + 1] = items[i + 1], items[i]
    elif op == "move" and len(items) > 1:
        item = items.pop(rng.integers(len(items)))
        items.insert(rng.integers(len(items) + 1), item)
    elif op == "slip":  # a distractor in place of an item (list) or kept among them (filter)
        new = _pick(rng, sorted(task.distractors))
        if task.kind == "filter":
            items.insert(rng.integers(len(items) + 1), new)
        else:
            items[rng.integers(len(items))] = new
    return items


def near_miss(instruction: str, input: str, rng: np.random.Generator, noise: float, task: Task | None = None) -> str:
    """A right answer with near-miss edits, each of its k items carrying one with probability ``noise``
    (Binomial(k, noise) edits): the SFT output distribution."""
    task = task or parse_task(instruction, input)
    items = _right_items(task, rng)
    for _ in range(int(rng.binomial(task.k, min(1.0, noise)))):
        items = _edit(task, items, input, rng)
    return task.render(items)


def make_example(rng: np.random.Generator, noise: float, part: str = "train", tasks=TASKS) -> dict[str, str]:
    instruction, input = _prompt(rng, part, tasks)
    return {"instruction": instruction, "input": input, "output": near_miss(instruction, input, rng, noise)}


def check_tasks(tasks) -> tuple[str, ...]:
    """The task kinds to draw prompts from: a non-empty selection of :data:`TASKS`."""
    from rmopt.errors import RmoptError

    tasks = tuple(TASKS if tasks is None else tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise RmoptError(f"toy tasks {list(tasks)!r}: expected a non-empty list of {list(TASKS)}")
    return tasks


def generate_split(size: int, seed: int, noise: float = 0.0, part: str = "train", tasks=TASKS) -> list[dict[str, str]]:
    """``size`` examples (instruction, input, output) from one part of the prompt space; ``noise`` is
    the mean number of near-miss edits per item of each output (0: right answers); ``tasks`` the kinds drawn."""
    rng, tasks = np.random.default_rng(seed), check_tasks(tasks)
    return [make_example(rng, noise, part, tasks) for _ in range(size)]


def generate_splits(sizes: dict[str, int], seed: int = 0, sft_noise: float = DEFAULT_SFT_NOISE, tasks=TASKS) -> dict[str, list]:
    """The splits of :func:`generate_dataset` as lists of rows (no ``datasets`` import)."""
    return {
        name: generate_split(
            sizes[name], seed=seed * 1000 + i, noise=sft_noise if name == "sft" else 0.0, part=SPLIT_PART.get(name, "train"),
            tasks=tasks,
        )
        for i, name in enumerate(SPLITS)
        if sizes.get(name, 0) > 0
    }


def generate_dataset(sizes: dict[str, int], seed: int = 0, sft_noise: float = DEFAULT_SFT_NOISE, tasks=TASKS):
    """A ``datasets.DatasetDict`` with AlpacaFarm-like splits; only ``sft`` has near-miss outputs.

    ``val`` (evaluation) and ``rm_val`` (the reward models' held-out pairs) hold prompts of their own
    parts of the prompt space, which no other split contains.
    """
    import datasets

    return datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows) for name, rows in generate_splits(sizes, seed, sft_noise, tasks).items()}
    )


def corpus(n: int = 4000, seed: int = 12345) -> list[str]:
    """Text for training the toy tokenizer: every word, letter and number of the world, in prompt context."""
    rows = generate_split(n, seed, noise=DEFAULT_SFT_NOISE)
    numbers = [str(i) for i in range(0, max(COUNT_STARTS) + max(COUNT_STEPS) * (max(COUNT_LENGTHS) - 1) + 2)]
    words = list(ALL_WORDS) + list(LETTERS) + numbers
    text = [f"{r['instruction']}\n{r['input']}{r['output']}" for r in rows]
    return text + [" ".join(words), ", ".join(words)]


# --- calibration (python -m rmopt.toy.graded) -------------------------------------------------------

DEMO_SIZES = {"sft": 8000, "preference": 4000, "unlabeled": 2000, "val": 4000, "rm_val": 1000}


ORACLE_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def oracle_best_of_n(prompts: int = 200, N: int = 512, noise: float = DEFAULT_SFT_NOISE, seed: int = 0, ns=ORACLE_NS):
    """The oracle's best-of-n (proxy = gold) on N near misses per prompt, for ``prompts`` val prompts.

    A proxy-free estimate of the headroom the SFT output distribution leaves: returns the expected
    maximum gold at each n (:func:`rmopt.bon.unbiased_best_of_n`), overall and per task kind.
    """
    from rmopt.bon import unbiased_best_of_n

    rng = np.random.default_rng(seed)
    rows = generate_split(prompts, seed=seed + 7, part="val")
    tasks = [parse_task(r["instruction"], r["input"]) for r in rows]
    gold = np.array(
        [[score_items(t, split_items(t, near_miss(r["instruction"], r["input"], rng, noise, t))) for _ in range(N)] for r, t in zip(rows, tasks, strict=True)],
        np.float32,
    )
    kinds = np.array([t.kind for t in tasks])
    curves = {"all": unbiased_best_of_n(gold, gold, ns)["gold_score"]}
    curves.update({k: unbiased_best_of_n(gold[kinds == k], gold[kinds == k], ns)["gold_score"] for k in TASKS if (kinds == k).any()})
    return list(ns), curves


def gain_after(ns, curve, n: int = 16) -> float:
    """The oracle's gain from n to the largest n as a share of its whole gain from n = 1."""
    curve = dict(zip(ns, curve, strict=True))
    whole = curve[max(ns)] - curve[1]
    return float((curve[max(ns)] - curve[n]) / whole) if whole > 0 else float("nan")


def calibration(noise: float = DEFAULT_SFT_NOISE, prompts: int = 200, N: int = 512) -> dict:
    """(a) the share of SFT outputs at the gold's maximum, (b) the oracle's best-of-n headroom (its gain
    after n = 16 as a share of its gain from 1 to N), (c) distinct prompts per split at the demo's sizes."""
    splits = generate_splits(DEMO_SIZES, seed=0, sft_noise=noise)
    sft = splits["sft"]
    g = ToyGoldReward().score([r["instruction"] for r in sft], [r["input"] for r in sft], [r["output"] for r in sft])
    ns, curves = oracle_best_of_n(prompts, N, noise)
    return {
        "sft_noise": noise,
        "a_sft_at_max": float((g >= 1.0).mean()),
        "sft_gold_mean": float(g.mean()),
        "sft_gold_std": float(g.std()),
        "sft_gold_distinct_values": int(len(np.unique(g))),
        "b_oracle_gain_after_16": {k: round(gain_after(ns, c), 3) for k, c in curves.items()},
        "oracle_n": ns,
        "oracle_gold": {k: [round(float(x), 3) for x in c] for k, c in curves.items()},
        "c_distinct_prompts": {s: len({(r["instruction"], r["input"]) for r in rows}) for s, rows in splits.items()},
        "rows": {s: len(rows) for s, rows in splits.items()},
    }


if __name__ == "__main__":
    import json

    from rmopt.errors import ArgumentParser

    parser = ArgumentParser(description=calibration.__doc__)
    parser.add_argument("--noise", type=float, default=DEFAULT_SFT_NOISE)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--N", type=int, default=512)
    args = parser.parse_args()
    print(json.dumps(calibration(args.noise, args.prompts, args.N)))
