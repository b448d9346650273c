"""Where a world's data comes from: instruction splits and gold-labelled preference pairs.

``conf/data/*.yaml`` instantiates one of these. Every stage asks the source for what it needs:
SFT the instruction splits, ``rmopt-pairs``/BoN/PPO the prompts, ``rmopt-rm`` the preference pairs.

Data sets are read with ``datasets`` from a local file (JSON, JSONL, Parquet, CSV), a saved
``datasets`` folder, a folder of data files, or a Hugging Face hub name: the same code reads the
published sets and their local copies. A user's own data set only needs a data config naming its
path and, if its columns have other names, a ``columns`` mapping (see ``conf/data/custom.yaml``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from rmopt.errors import RmoptError

INSTRUCTION_COLUMNS = ("instruction", "input", "output")
PREFERENCE_COLUMNS = ("instruction", "input", "answers", "preference")
GOLD_GENS_COLUMNS = ("instruction", "input", "answers", "gold_scores")

DATA_FILE_KINDS = {"json": "json", "jsonl": "json", "parquet": "parquet", "csv": "csv"}

# Split names that mean the same thing across published sets (asked for -> also tried).
SPLIT_ALIASES = {"val": ("validation", "valid", "dev"), "validation": ("val", "valid", "dev")}

# How preference pairs are stored; each is converted to answers [2] + preference 0/1.
# pairs: answers (2 strings) + preference 0/1 (the published gold-labelled pairs); alpaca_human:
# AlpacaFarm's human preferences, output_1/output_2 + preference 1 or 2; chosen_rejected: the
# preferred answer and the other one.
PREFERENCE_KINDS = {
    "pairs": ("answers", "preference"),
    "alpaca_human": ("output_1", "output_2", "preference"),
    "chosen_rejected": ("chosen", "rejected"),
}


def require_columns(dataset, columns, name: str) -> None:
    """A data set must have the columns a stage reads; name the first one missing."""
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise RmoptError(
            f"data set {name!r} has no column {missing[0]!r}; expected columns {list(columns)} "
            f"(it has {list(dataset.column_names)}; map other names with the data config's instructions_columns or preference_columns)"
        )
    if len(dataset) == 0:
        raise RmoptError(f"data set {name!r} is empty")


def looks_like_local_path(path: str) -> bool:
    """Whether a name that does not exist was meant as a local path rather than a hub name (``owner/name``)."""
    if path.startswith((".", "/", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path:
        return True
    if os.path.basename(path).rsplit(".", 1)[-1].lower() in DATA_FILE_KINDS and "." in os.path.basename(path):
        return True  # a data file name (hub names have no extension)
    first = path.split("/", 1)[0]
    return "/" in path and os.path.isdir(first)


def _is_saved_dataset(folder: str) -> bool:
    return any(
        os.path.exists(os.path.join(folder, f))
        for f in ("dataset_dict.json", "dataset_info.json", "state.json")
    )


def _load_file(path: str):
    import datasets

    ext = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
    kind = DATA_FILE_KINDS.get(ext)
    if kind is None:
        raise RmoptError(
            f"data file {path!r} has an unknown extension; expected .json, .jsonl, .parquet or .csv"
        )
    try:
        return datasets.load_dataset(kind, data_files=path, split="train")
    except Exception as e:  # parse errors come in many types
        raise RmoptError(
            f"cannot read data file {path!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e


def _load_folder(path: str):
    import datasets

    try:
        if _is_saved_dataset(path):
            return datasets.load_from_disk(path)
        # a folder of data files; split names come from the file names (train.json, validation.parquet, ...)
        return datasets.load_dataset(path)
    except Exception as e:
        raise RmoptError(
            f"cannot read data folder {path!r} (expected a saved `datasets` folder or data files): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e


def _load_hub(name: str, subset: str | None):
    import datasets

    from rmopt.models import hub_reachable

    if not hub_reachable():
        if datasets.config.HF_HUB_OFFLINE:  # offline mode never touches the network: try the local cache
            try:
                return datasets.load_dataset(name, subset) if subset else datasets.load_dataset(name)
            except Exception:
                pass
        raise RmoptError(
            f"data set {name!r} is not a local file or folder and the Hugging Face hub is unreachable "
            f"(offline); download it where the hub is reachable or pass a local path"
        )
    try:
        return datasets.load_dataset(name, subset) if subset else datasets.load_dataset(name)
    except Exception as e:  # the hub raises many types; one line is what the user needs
        raise RmoptError(
            f"cannot load data set {name!r} from the hub: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from e


_SLICE = re.compile(r"^(?P<name>[^\[\]]+)(\[(?P<start>-?\d*%?):(?P<stop>-?\d*%?)\])?$")


def select_split(ds, split: str, name: str):
    """``split`` of a ``DatasetDict`` (or a single ``Dataset``), with an optional slice: ``train[:1000]``, ``preference[90%:]``.

    A single ``Dataset`` (one data file) stands for every split name; a missing ``val`` falls back
    to ``validation`` (and back), so local files and published sets answer to the same names.
    """
    import datasets

    match = _SLICE.match(split.replace(" ", ""))
    if match is None:
        raise RmoptError(f"split {split!r} of data set {name!r} is not a name or name[start:stop]")
    split_name = match["name"]
    if isinstance(ds, datasets.DatasetDict):
        for candidate in (split_name, *SPLIT_ALIASES.get(split_name, ())):
            if candidate in ds:
                ds = ds[candidate]
                break
        else:
            raise RmoptError(f"data set {name!r} has no split {split_name!r}; it has {sorted(ds)}")
    if match["start"] or match["stop"]:
        n = len(ds)

        def bound(text, default):
            if not text:
                return default
            value = int(text[:-1]) * n // 100 if text.endswith("%") else int(text)
            return value + n if value < 0 else min(value, n)

        start, stop = bound(match["start"], 0), bound(match["stop"], n)
        ds = ds.select(range(start, max(start, stop)))
    return ds


def load_local_or_hub(path: str, split: str | None = None, subset: str | None = None):
    """A JSON/JSONL/Parquet/CSV file, a saved ``datasets`` folder, a folder of data files, or a hub name.

    An existing file is read by its extension; an existing folder with ``load_from_disk`` (or as a
    folder of data files; with ``subset``, its subfolder of that name if there is one); a missing path
    that looks local is an error; anything else is a hub name (``subset`` = the hub config name).
    ``split`` picks a split (see :func:`select_split`); without it, what was loaded is returned.
    """
    if not path:
        raise RmoptError("data path is empty; expected a file, a folder or a hub name")
    path = str(path)
    local = os.path.expanduser(path)
    if os.path.isfile(local):
        ds = _load_file(local)
    elif os.path.isdir(local):
        if subset and os.path.isdir(os.path.join(local, subset)):
            local = os.path.join(local, subset)
        ds = _load_folder(local)
    elif looks_like_local_path(path):
        raise RmoptError(f"data path {path!r} does not exist")
    else:
        ds = _load_hub(path, subset)
    return select_split(ds, split, path) if split is not None else ds


def rename_columns(ds, columns: dict[str, str | None] | None, name: str):
    """Give a data set the column names the stages read: ``columns`` maps expected name -> its name.

    A null value fills the column with empty strings (an ``input`` column a set does not have).
    """
    if not columns:
        return ds
    columns = dict(columns)
    for expected, theirs in columns.items():
        if theirs is None:
            if expected in ds.column_names:
                ds = ds.remove_columns(expected)
            ds = ds.add_column(expected, [""] * len(ds))
        elif theirs != expected:
            if theirs not in ds.column_names:
                raise RmoptError(
                    f"data set {name!r} has no column {theirs!r} (mapped to {expected!r} in `columns`); "
                    f"it has {list(ds.column_names)}"
                )
            if expected in ds.column_names:
                ds = ds.remove_columns(expected)
            ds = ds.rename_column(theirs, expected)
    return ds


def to_preference_pairs(ds, kind: str, name: str):
    """Convert preference data of ``kind`` (see ``PREFERENCE_KINDS``) to answers [2] + preference 0/1."""
    if kind not in PREFERENCE_KINDS:
        raise RmoptError(
            f"preference kind {kind!r} of data set {name!r} is unknown; expected one of {list(PREFERENCE_KINDS)}"
        )
    require_columns(ds, ("instruction", "input", *PREFERENCE_KINDS[kind]), name)
    keep = ["instruction", "input", "answers", "preference"]
    if kind == "pairs":
        counts = [len(a) for a in ds["answers"]]
        bad = next((j for j, c in enumerate(counts) if c != 2), None)
        if bad is not None:
            raise RmoptError(f"data set {name!r} row {bad} has {counts[bad]} answers; expected 2")
        prefs = ds["preference"]
        bad = next((j for j, p in enumerate(prefs) if p not in (0, 1)), None)
        if bad is not None:
            raise RmoptError(f"data set {name!r} row {bad} has preference {prefs[bad]!r}; expected 0 or 1")
        return ds.select_columns(keep)
    if kind == "alpaca_human":
        prefs = ds["preference"]
        bad = next((j for j, p in enumerate(prefs) if p not in (1, 2)), None)
        if bad is not None:
            raise RmoptError(f"data set {name!r} row {bad} has preference {prefs[bad]!r}; expected 1 or 2")

        def convert(batch):
            return {
                "answers": [[a, b] for a, b in zip(batch["output_1"], batch["output_2"], strict=True)],
                "preference": [int(p) - 1 for p in batch["preference"]],
            }

        removed = [c for c in ds.column_names if c not in ("instruction", "input")]
    else:  # chosen_rejected

        def convert(batch):
            return {
                "answers": [[a, b] for a, b in zip(batch["chosen"], batch["rejected"], strict=True)],
                "preference": [0] * len(batch["chosen"]),
            }

        removed = [c for c in ds.column_names if c not in ("instruction", "input")]
    return ds.map(convert, batched=True, remove_columns=removed).select_columns(keep)


def _mapped_split(splits, split: str) -> str:
    """The data set's split for the one a stage asks for (``val`` and ``validation`` are one name)."""
    for name in (split, *SPLIT_ALIASES.get(split, ())):
        if name in splits:
            return splits[name]
    return split


def _instructions(path, subset, split, splits, columns, name):
    ds = load_local_or_hub(path, split=_mapped_split(splits, split), subset=subset)
    ds = rename_columns(ds, columns, name)
    require_columns(ds, INSTRUCTION_COLUMNS, f"{name}:{split}")
    return ds


def _preferences(path: str | None, split: str, subset=None, kind="pairs", columns=None, splits=None):
    if not path:
        raise RmoptError(
            "data.path is not set: point it at a preference-pairs folder made by rmopt-pairs, or a hub name"
        )
    splits = dict(splits or {})
    ds = load_local_or_hub(path, split=_mapped_split(splits, split), subset=subset)
    ds = rename_columns(ds, columns, path)
    return to_preference_pairs(ds, kind, f"{path}:{split}")


@dataclass
class ToyData:
    """The toy world's instruction splits, generated on the fly, and its gold-labelled pairs.

    ``path`` is a preference-pairs folder written by ``rmopt-pairs`` (needed by ``rmopt-rm``).
    """

    sizes: dict[str, int] = field(
        default_factory=lambda: {"sft": 8000, "preference": 4000, "unlabeled": 2000, "val": 2000}
    )
    seed: int = 0
    sft_noise: float = 0.5
    path: str | None = None

    def __post_init__(self):
        self._splits = None

    def instructions(self, split: str):
        if self._splits is None:
            from rmopt.toy.world import generate_dataset

            self._splits = generate_dataset(dict(self.sizes), seed=self.seed, sft_noise=self.sft_noise)
        match = _SLICE.match(split.replace(" ", ""))
        if match is None or match["name"] not in self._splits:
            raise RmoptError(
                f"toy data has no split {split!r}; it has {sorted(self._splits)} (sizes {dict(self.sizes)}), "
                "each also as name[start:stop]"
            )
        return select_split(self._splits, split, "toy")

    def preferences(self, split: str):
        return _preferences(self.path, split)

    def gold(self):
        from rmopt.toy.world import ToyGoldReward

        return ToyGoldReward()


@dataclass
class HubData:
    """Instruction splits and preference pairs from files or the Hugging Face hub (AlpacaFarm style).

    Each ``*_path`` is a hub name, a data file, a saved ``datasets`` folder or a folder of data files.
    ``instructions_splits`` / ``preference_splits`` map the split a stage asks for (``sft``,
    ``preference``, ``unlabeled``, ``val``; ``train``/``val`` for pairs) to the data set's own split,
    optionally sliced (``preference[:95%]``). ``instructions_columns`` / ``preference_columns`` map the
    expected column names to the data set's (null: an empty ``input``). ``preference_kind`` says how
    pairs are stored: ``pairs`` (answers [2], preference 0/1), ``alpaca_human`` (output_1, output_2,
    preference 1/2) or ``chosen_rejected``. ``gold_gens``: answers with gold scores in the
    ``tlc4418/gold_labelled_gens`` schema, for ``rmopt-bon gold_gens=${data.gold_gens}``.
    """

    instructions_path: str = "tatsu-lab/alpaca_farm"
    instructions_subset: str | None = "alpaca_instructions"
    path: str | None = None
    preference_subset: str | None = None
    preference_kind: str = "pairs"
    instructions_splits: dict[str, str] = field(default_factory=dict)
    preference_splits: dict[str, str] = field(default_factory=dict)
    instructions_columns: dict[str, Any] = field(default_factory=dict)
    preference_columns: dict[str, Any] = field(default_factory=dict)
    gold_gens: str | None = None

    def __post_init__(self):
        if self.preference_kind not in PREFERENCE_KINDS:
            raise RmoptError(
                f"data.preference_kind={self.preference_kind!r} is unknown; expected one of {list(PREFERENCE_KINDS)}"
            )

    def instructions(self, split: str):
        return _instructions(
            self.instructions_path,
            self.instructions_subset,
            split,
            dict(self.instructions_splits or {}),
            self.instructions_columns,
            self.instructions_path,
        )

    def preferences(self, split: str):
        return _preferences(
            self.path,
            split,
            subset=self.preference_subset,
            kind=self.preference_kind,
            columns=self.preference_columns,
            splits=self.preference_splits,
        )

    def gold_gens_dataset(self):
        """The gold-labelled generations (instruction, input, answers, gold_scores), one split."""
        import datasets

        if not self.gold_gens:
            raise RmoptError("data.gold_gens is not set: point it at a gold-labelled generations set")
        ds = load_local_or_hub(self.gold_gens)
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1 and "train" not in ds:
                raise RmoptError(
                    f"gold_gens {self.gold_gens!r} has splits {sorted(ds)}; expected one split (or 'train')"
                )
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        require_columns(ds, GOLD_GENS_COLUMNS, self.gold_gens)
        return ds
