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

from rmopt import hub
from rmopt.errors import RmoptError
from rmopt.hub import DATA_FILE_KINDS, data_file_kind, looks_like_local_path

INSTRUCTION_COLUMNS = ("instruction", "input", "output")
PREFERENCE_COLUMNS = ("instruction", "input", "answers", "preference")

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

# A hub set published with a loading script (tatsu-lab/alpaca_farm), which `datasets` 4+ refuses, is read
# from the hub's Parquet export of it (this branch: <config>/<split>/NNNN.parquet) or, failing that,
# from the data files on its main branch (alpaca_farm: alpaca_instructions/<split>.json, <config>.json).
PARQUET_EXPORT = "refs/convert/parquet"
_SCRIPT_REFUSED = ("dataset scripts are no longer supported", "trust_remote_code")


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


def _is_saved_dataset(folder: str) -> bool:
    return any(
        os.path.exists(os.path.join(folder, f))
        for f in ("dataset_dict.json", "dataset_info.json", "state.json")
    )


def _one_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _load_file(path: str):
    import datasets

    kind = data_file_kind(path)
    if kind is None:
        raise RmoptError(
            f"data file {path!r} has an unknown extension; expected .json, .jsonl, .parquet or .csv"
        )
    try:
        return datasets.load_dataset(kind, data_files=path, split="train")
    except Exception as e:  # parse errors come in many types
        raise RmoptError(f"cannot read data file {path!r}: {_one_line(e)}") from e


def _data_files(folder: str) -> list[str]:
    """Every data file under ``folder`` (hidden files and folders skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".") and data_file_kind(f)]
    return found


def _has_card_configs(folder: str) -> bool:
    """Whether the folder's README.md declares its configs/splits (then `datasets` reads it as declared)."""
    card = os.path.join(folder, "README.md")
    if not os.path.isfile(card):
        return False
    text = open(card, encoding="utf-8", errors="replace").read()
    return text.startswith("---") and "\nconfigs:" in text.split("\n---", 1)[0]


def _datasets_inference(folder: str) -> tuple[bool, list[set[str]]]:
    """What `datasets` itself makes of a folder of data files: whether it finds split names in the file or
    folder names (train, validation, test, ...), and the files (real paths) of each split it makes."""
    from datasets.data_files import DEFAULT_PATTERNS_ALL, DataFilesDict, get_data_patterns

    patterns = get_data_patterns(folder)
    inferred = DataFilesDict.from_patterns(patterns, base_path=folder)
    return patterns != DEFAULT_PATTERNS_ALL, [
        {os.path.realpath(f) for f in split} for split in inferred.values()
    ]


def _layout_splits(folder: str, files: list[str]) -> dict[str, list[str]] | None:
    parents = {os.path.dirname(f) for f in files}
    folder = os.path.normpath(folder)
    if all(os.path.dirname(p) == folder for p in parents) and folder not in parents:  # a subfolder per split
        splits: dict[str, list[str]] = {}
        for f in files:
            name = os.path.basename(os.path.dirname(f))
            splits.setdefault(name[len("partial-") :] if name.startswith("partial-") else name, []).append(f)
        return splits
    if parents == {folder} and len(files) >= 2:  # a file per split
        stems = [os.path.basename(f).rsplit(".", 1)[0] for f in files]
        if all("-" in s for s in stems) and len({s.split("-", 1)[0] for s in stems}) == 1:
            stems = [s.split("-", 1)[1] for s in stems]  # <name>-<split>
        if len(set(stems)) == len(stems):
            return dict(zip(stems, ([f] for f in files), strict=True))
    return None


def hub_layout_splits(folder: str) -> dict[str, list[str]] | None:
    """Split name -> data files of a folder in one of the hub's layouts, named as the hub names them.

    - one subfolder per split, holding that split's files: the hub's Parquet export of a config
      (``sft/0000.parquet``; ``partial-train/`` is ``train``) or shards (``validation/split_1.json``);
      the split is the subfolder's name (`datasets` alone would keep only the folders it knows, and
      call ``eval/`` ``test``);
    - one data file per split, named after it (two or more files): ``sft.json``, ``preference.json``
      (AlpacaFarm's own files) or the export's older ``<name>-<split>.parquet`` (``alpaca_farm-sft.parquet``).

    None when the folder is in neither, when `datasets` already reads every file into split names of
    its own from the file names (``train.parquet`` + ``validation.parquet``,
    ``data/train-00000-of-00001.parquet``), or when the README declares the configs: `datasets` then
    reads it as usual.
    """
    files = _data_files(folder)
    if not files or _has_card_configs(folder):
        return None
    named, inferred = _datasets_inference(folder)
    splits = _layout_splits(folder, files)
    if not named or set().union(*inferred) < {os.path.realpath(f) for f in files}:
        return splits  # no split names, or some files left out
    by_folder = splits is not None and all(os.path.dirname(f) != os.path.normpath(folder) for f in files)
    if by_folder and sorted(map(sorted, inferred)) == sorted(
        sorted(map(os.path.realpath, v)) for v in splits.values()
    ):
        return splits  # `datasets` splits by the same folders: keep the folders' own names
    return None


def _load_folder(path: str):
    import datasets

    try:
        if _is_saved_dataset(path):
            return datasets.load_from_disk(path)
        files = _data_files(path)
        if (
            len(files) == 1
            and os.path.dirname(files[0]) == os.path.normpath(path)
            and not _has_card_configs(path)
            and not _datasets_inference(path)[0]
        ):
            return _load_file(files[0])  # one data file without a split name: read as that file's path is
        splits = hub_layout_splits(path)
        if splits is None:
            # a folder of data files; split names from the file names (train.json, validation.parquet, ...)
            return datasets.load_dataset(path)
        kinds = {data_file_kind(f) for split in splits.values() for f in split}
        if len(kinds) != 1:
            raise RmoptError(f"data folder {path!r} mixes data file kinds {sorted(kinds)}; expected one")
        return datasets.load_dataset(kinds.pop(), data_files=splits)
    except RmoptError:
        raise
    except Exception as e:
        raise RmoptError(
            f"cannot read data folder {path!r} (expected a saved `datasets` folder or data files): {_one_line(e)}"
        ) from e


def _load_local(path: str, subset: str | None):
    """A local file or folder; with ``subset``, the folder's subfolder or data file of that name if it has one."""
    if os.path.isfile(path):
        return _load_file(path)
    if subset:
        if os.path.isdir(os.path.join(path, subset)):
            return _load_folder(os.path.join(path, subset))
        for (
            ext
        ) in DATA_FILE_KINDS:  # a config stored as one file beside the others (alpaca_human_preference.json)
            if os.path.isfile(os.path.join(path, f"{subset}.{ext}")):
                return _load_file(os.path.join(path, f"{subset}.{ext}"))
    return _load_folder(path)


def _hub_load_dataset(name: str, subset: str | None):
    import datasets

    return datasets.load_dataset(name, subset) if subset else datasets.load_dataset(name)


def _refuses_script(error: Exception) -> bool:
    return any(s in str(error).lower() for s in _SCRIPT_REFUSED)


def _load_hub_files(name: str, subset: str | None):
    """A hub set's files as the hub lays them out, for sets `datasets` will not load by name (a loading
    script) or, offline, from the hub cache: the Parquet export first, then the main branch's data files.
    None if neither has the files."""
    config = subset or "default"
    exts = list(DATA_FILE_KINDS)
    tries = [
        (PARQUET_EXPORT, [f"{config}/*/*.parquet"]),  # <config>/<split>/NNNN.parquet
        (PARQUET_EXPORT, [f"{config}/*.parquet"]),  # older export names: <config>/<name>-<split>.parquet
        (None, [f"{subset}/*.{e}" for e in exts] + [f"{subset}.{e}" for e in exts])
        if subset
        else (None, [f"*.{e}" for e in exts] + [f"*/*.{e}" for e in exts]),
    ]
    for revision, patterns in tries:
        try:
            root = hub.hub_snapshot(name, revision, patterns)
        except Exception:  # not on the hub, not in the cache, or no such branch
            continue
        folder = os.path.join(root, config) if revision == PARQUET_EXPORT else root
        if os.path.isdir(folder) and _data_files(folder):
            return _load_local(folder, None if revision == PARQUET_EXPORT else subset)
    return None


def _load_hub(name: str, subset: str | None):
    import datasets

    online = hub.hub_reachable()
    if not online and not datasets.config.HF_HUB_OFFLINE:
        raise RmoptError(
            f"data set {name!r} is not a local file or folder and the Hugging Face hub is unreachable "
            f"(offline); download it where the hub is reachable or pass a local path"
        )
    try:
        return _hub_load_dataset(name, subset)  # offline mode never touches the network: the local cache
    except Exception as e:  # the hub raises many types; one line is what the user needs
        error = e
    if _refuses_script(error) or not online:
        ds = _load_hub_files(name, subset)
        if ds is not None:
            return ds
    if not online:
        raise RmoptError(
            f"data set {name!r} is not a local file or folder and the Hugging Face hub is unreachable "
            f"(offline); download it where the hub is reachable or pass a local path"
        )
    raise RmoptError(
        f"cannot load data set {name!r} from the hub: {_one_line(error) or repr(error)}"
    ) from error


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

    An existing file is read by its extension; an existing folder with ``load_from_disk``, in one of
    the hub's layouts (:func:`hub_layout_splits`) or as a folder of data files (with ``subset``: its
    subfolder or data file of that name if it has one); a missing path that looks local is an error;
    anything else is a hub name (``subset`` = the hub config name; a set with a loading script is read
    from the hub's Parquet export or its data files). ``split`` picks a split (see
    :func:`select_split`); without it, what was loaded is returned.
    """
    if not path:
        raise RmoptError("data path is empty; expected a file, a folder or a hub name")
    path = str(path)
    local = os.path.expanduser(path)
    if os.path.exists(local):
        ds = _load_local(local, subset)
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
        default_factory=lambda: {"sft": 8000, "preference": 4000, "unlabeled": 2000, "val": 4000, "rm_val": 1000}
    )
    seed: int = 0
    sft_noise: float = 0.5
    path: str | None = None
    pairs_val_split: str = "rm_val"  # rmopt-pairs' default held-out split (conf/pairs.yaml reads it)
    world: str = "graded"  # which toy world (rmopt.toy.WORLDS): graded (default) or simple
    tasks: list[str] | None = None  # graded world: the task kinds to draw (None: all of rmopt.toy.graded.TASKS)

    def __post_init__(self):
        from rmopt.toy import get_world

        get_world(self.world)  # an unknown world is a one-line error now, not at first use
        if self.tasks is not None:
            if self.world != "graded":
                raise RmoptError(f"data.tasks is a graded-world setting; data.world is {self.world!r}")
            from rmopt.toy.graded import check_tasks

            self.tasks = list(check_tasks(self.tasks))
        self._splits = None

    def instructions(self, split: str):
        if self._splits is None:
            from rmopt.toy import get_world

            extra = {} if self.tasks is None else {"tasks": self.tasks}
            self._splits = get_world(self.world).generate_dataset(dict(self.sizes), seed=self.seed, sft_noise=self.sft_noise, **extra)
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
        from rmopt.toy import get_world

        return get_world(self.world).ToyGoldReward()


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
        from rmopt.data.gold_gens import gold_gens_dataset

        if not self.gold_gens:
            raise RmoptError("data.gold_gens is not set: point it at a gold-labelled generations set")
        return gold_gens_dataset(self.gold_gens)
