"""Gold-scored generations: many answers per prompt, each with its gold score, for best-of-n.

The schema is the published ``tlc4418/gold_labelled_gens``: one row per prompt with ``instruction``,
``input``, ``answers`` (N strings) and ``gold_scores`` (N floats). On the hub that set is one split,
``validation``, stored as JSON shards (``validation/split_<k>.json``, each a JSON array of rows) and
without an ``input`` column (an absent input is empty, as the released code read it). ``rmopt-bon``
writes the answers it generates in the same schema (a saved ``datasets`` folder). Any of: a hub name,
a local copy in the hub's layout, a JSON/JSONL/Parquet file, a ``datasets`` folder.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from rmopt.data.sources import load_local_or_hub, require_columns
from rmopt.errors import RmoptError

GOLD_GENS_COLUMNS = ("instruction", "input", "answers", "gold_scores")
GOLD_GENS_SPLIT = "validation"  # the published set's one split


def _positive_int(value, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise RmoptError(f"{name}={value!r}; expected a positive integer") from None
    if number < 1 or number != float(value):
        raise RmoptError(f"{name}={value!r}; expected a positive integer")
    return number


def gold_gens_dataset(path: str):
    """The gold-labelled generations at ``path`` as one ``datasets.Dataset`` in the schema above.

    A set with several splits must have ``validation`` (the published name) or ``train``; a missing
    ``input`` column is added, empty.
    """
    import datasets

    ds = load_local_or_hub(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) == 1:
            ds = next(iter(ds.values()))
        elif GOLD_GENS_SPLIT in ds or "train" in ds:
            ds = ds[GOLD_GENS_SPLIT if GOLD_GENS_SPLIT in ds else "train"]
        else:
            raise RmoptError(
                f"gold_gens {str(path)!r} has splits {sorted(ds)}; expected one split (or {GOLD_GENS_SPLIT!r})"
            )
    if "input" not in ds.column_names and len(ds):
        ds = ds.add_column("input", [""] * len(ds))
    require_columns(ds, GOLD_GENS_COLUMNS, str(path))
    return ds


class GoldGens:
    """The first ``big_n`` answers of the first P prompts of a gold-labelled generations table.

    ``table`` is a (memory-mapped) Arrow table; ``gold`` the [P, N] float32 gold scores.
    """

    def __init__(self, table, big_n: int, source: str):
        import pyarrow.compute as pc

        self.table, self.N, self.source = table, int(big_n), source
        self.P = table.num_rows
        answer_counts = pc.list_value_length(table.column("answers")).to_numpy(zero_copy_only=False)
        gold_counts = pc.list_value_length(table.column("gold_scores")).to_numpy(zero_copy_only=False)
        differ = np.flatnonzero(answer_counts != gold_counts)
        if differ.size:
            j = int(differ[0])
            raise RmoptError(
                f"gold_gens {source!r} row {j} has {answer_counts[j]} answers but {gold_counts[j]} gold_scores; "
                "expected one gold score per answer"
            )
        short = np.flatnonzero(answer_counts < self.N)
        if short.size:
            j = int(short[0])
            raise RmoptError(
                f"big_n={self.N} but gold_gens {source!r} row {j} has only {answer_counts[j]} answers; "
                f"set big_n <= {int(answer_counts.min())}"
            )
        gold = pc.list_flatten(pc.list_slice(table.column("gold_scores"), 0, self.N))
        gold = gold.to_numpy(zero_copy_only=False) if hasattr(gold, "to_numpy") else np.asarray(gold)
        self.gold = np.asarray(gold, dtype=np.float32).reshape(self.P, self.N)
        if np.isnan(self.gold).any():
            p, a = np.argwhere(np.isnan(self.gold))[0]
            raise RmoptError(f"gold_gens {source!r} has a missing/NaN gold score at row {p}, answer {a}")

    def chunk(self, start: int, stop: int) -> tuple[list[str], list[str], list[str]]:
        """(instruction, input, answer) of every answer of prompts [start, stop), prompt-major."""
        import pyarrow.compute as pc

        part = self.table.slice(start, stop - start)
        instructions = part.column("instruction").to_pylist()
        inputs = [x or "" for x in part.column("input").to_pylist()]
        answers = pc.list_flatten(pc.list_slice(part.column("answers"), 0, self.N)).to_pylist()
        return (
            [i for i in instructions for _ in range(self.N)],
            [x for x in inputs for _ in range(self.N)],
            [a or "" for a in answers],
        )

    def key(self) -> str:
        """A fingerprint of the answers used: shape plus a hash of a sample of texts and of the gold scores."""
        h = hashlib.sha1(f"{self.P}x{self.N}".encode())
        h.update(self.gold.tobytes())
        for start in sorted({0, self.P // 2, self.P - 1}):
            instructions, inputs, answers = self.chunk(start, start + 1)
            h.update(json.dumps([instructions[0], inputs[0], answers[:: max(1, self.N // 16)]]).encode())
        return h.hexdigest()


def load_gold_gens(path: str, big_n: int, num_prompts: int | None = None) -> GoldGens:
    """A gold-labelled generations set (see :func:`gold_gens_dataset`) as GoldGens: its first
    ``num_prompts`` prompts (all if None), the first ``big_n`` answers of each."""
    ds = gold_gens_dataset(path)
    table = ds.with_format("arrow")[:]  # zero-copy view of the (memory-mapped) Arrow table
    if num_prompts is not None:
        num_prompts = _positive_int(num_prompts, "num_prompts")
        if num_prompts > table.num_rows:
            raise RmoptError(
                f"num_prompts={num_prompts} but gold_gens {str(path)!r} has only {table.num_rows} prompts"
            )
        table = table.slice(0, num_prompts)
    return GoldGens(table, big_n, str(path))
