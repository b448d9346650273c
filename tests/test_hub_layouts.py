"""The published sets in the hub's own layouts, offline: local fixtures laid out file for file as the
hub repositories are, read through the same code as the hub names.

Layouts (from the hub's file listings):
- tatsu-lab/alpaca_farm, main: a loading script (alpaca_farm.py, refused by `datasets` 4+) beside its
  data files, alpaca_instructions/{preference,sft,unlabeled,val}.json and one file per other config
  (alpaca_human_preference.json, alpaca_gpt4_preference.json, alpaca_noisy_multi_preference.json,
  alpaca_farm_evaluation.json), each a JSON array of rows;
- its Parquet export (branch refs/convert/parquet): <config>/<split>/0000.parquet
  (alpaca_instructions/sft/0000.parquet, alpaca_human_preference/preference/0000.parquet, ...), with
  index.duckdb files beside some; older revisions named them <config>/alpaca_farm-<split>.parquet;
- tlc4418/gold_labelled_gens, main: README.md and validation/split_<k>.json (one split, validation),
  rows without an input column.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import compose

from rmopt.errors import RmoptError

INSTRUCTION_SPLITS = {"sft": 12, "preference": 8, "unlabeled": 6, "val": 5}
PREFERENCE_CONFIGS = ("alpaca_human_preference", "alpaca_gpt4_preference", "alpaca_noisy_multi_preference")


def _instructions(split, n, tag=""):
    return [
        {"instruction": f"{tag}{split} task {i}.", "input": "" if i % 2 else f"x{i}", "output": f"answer {i}"}
        for i in range(n)
    ]


def _human(n, tag=""):
    return [
        {
            "instruction": f"{tag}q{i}",
            "input": "",
            "output_1": f"a{i}",
            "output_2": f"b{i}",
            "preference": 1 + (i % 3 == 0),
            "raw_preference": 0.5,
        }
        for i in range(n)
    ]


def _parquet(rows, path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _json_array(rows, path, indent=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=indent))


@pytest.fixture(scope="module")
def farm_main(tmp_path_factory):
    """tatsu-lab/alpaca_farm as its main branch holds it (rows tagged 'main:')."""
    root = tmp_path_factory.mktemp("alpaca_farm-main")
    (root / "alpaca_farm.py").write_text("import datasets  # the loading script `datasets` 4+ refuses\n")
    (root / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n")
    for split, n in INSTRUCTION_SPLITS.items():
        _json_array(
            _instructions(split, n, "main:"), root / "alpaca_instructions" / f"{split}.json", indent=4
        )
    for config in PREFERENCE_CONFIGS:
        _json_array(_human(20, "main:"), root / f"{config}.json")
    _json_array(_instructions("eval", 3, "main:"), root / "alpaca_farm_evaluation.json")
    return root


@pytest.fixture(scope="module")
def farm_export(tmp_path_factory):
    """Its Parquet export, branch refs/convert/parquet (rows tagged 'export:', one row fewer per split)."""
    root = tmp_path_factory.mktemp("alpaca_farm-export")
    for split, n in INSTRUCTION_SPLITS.items():
        _parquet(
            _instructions(split, n - 1, "export:"), root / "alpaca_instructions" / split / "0000.parquet"
        )
    (root / "alpaca_instructions" / "sft" / "index.duckdb").write_bytes(b"DUCK")
    for config in PREFERENCE_CONFIGS:
        _parquet(_human(19, "export:"), root / config / "preference" / "0000.parquet")
    _parquet(_instructions("eval", 2, "export:"), root / "alpaca_farm_evaluation" / "eval" / "0000.parquet")
    return root


@pytest.fixture(scope="module")
def farm_export_old(tmp_path_factory):
    """The export as older revisions named it: <config>/alpaca_farm-<split>.parquet."""
    root = tmp_path_factory.mktemp("alpaca_farm-export-old")
    for split, n in INSTRUCTION_SPLITS.items():
        _parquet(
            _instructions(split, n, "old:"), root / "alpaca_instructions" / f"alpaca_farm-{split}.parquet"
        )
    _parquet(_human(20, "old:"), root / "alpaca_human_preference" / "alpaca_farm-preference.parquet")
    return root


def _gens_rows(prompts, answers, start=0):
    return [
        {
            "instruction": f"g{p}",
            "answers": [f"{p}-{a}" for a in range(answers)],
            "gold_scores": [float(p * 10 + a) for a in range(answers)],
        }
        for p in range(start, start + prompts)
    ]


@pytest.fixture(scope="module")
def gens_main(tmp_path_factory):
    """tlc4418/gold_labelled_gens as its main branch holds it: validation/split_<k>.json, no input column."""
    root = tmp_path_factory.mktemp("gold_labelled_gens")
    (root / "README.md").write_text("---\nlicense: mit\n---\n# gold-labelled generations\n")
    for k in range(3):
        _json_array(
            _gens_rows(2, 5, start=2 * k), root / "validation" / f"split_{k + 1}.json", indent=4 * (k == 0)
        )
    return root


def _check_farm(data, tag, less=0):
    sizes = [len(data.instructions(s)) for s in INSTRUCTION_SPLITS]
    assert sizes == [n - less for n in INSTRUCTION_SPLITS.values()]
    row = data.instructions("val")[2]
    assert row == {"instruction": f"{tag}val task 2.", "input": "x2", "output": "answer 2"}
    assert data.instructions("sft")[0]["instruction"] == f"{tag}sft task 0."
    train, val = data.preferences("train"), data.preferences("val")  # preference[:95%], preference[95%:]
    total = 20 - less
    assert (len(train), len(val)) == (total * 95 // 100, total - total * 95 // 100)
    assert train[3] == {"instruction": f"{tag}q3", "input": "", "answers": ["a3", "b3"], "preference": 1}


def _farm_data(instructions_path, path=None, subset="alpaca_human_preference"):
    import hydra

    cfg = compose(
        "sft",
        [
            "data=alpaca_human_preference",
            f"data.instructions_path={instructions_path}",
            f"data.path={path or instructions_path}",
            f"data.preference_subset={subset}",
        ],
    )
    return hydra.utils.instantiate(cfg.data)


def test_datasets_alone_reads_the_export_as_one_validation_split(farm_export):
    """Why rmopt reads the layouts itself: `datasets` keeps only the folder it takes for `validation`."""
    import datasets

    ds = datasets.load_dataset(str(farm_export / "alpaca_instructions"))
    assert sorted(ds) == ["validation"] and ds["validation"].num_rows == INSTRUCTION_SPLITS["val"] - 1


def test_local_parquet_export_loads_with_the_hub_split_names(farm_export):
    from rmopt.data.sources import load_local_or_hub

    ds = load_local_or_hub(str(farm_export), subset="alpaca_instructions")
    assert sorted(ds) == sorted(INSTRUCTION_SPLITS)
    _check_farm(_farm_data(farm_export), "export:", less=1)
    for config in PREFERENCE_CONFIGS:
        assert sorted(load_local_or_hub(str(farm_export), subset=config)) == ["preference"]
    assert sorted(load_local_or_hub(str(farm_export), subset="alpaca_farm_evaluation")) == ["eval"]


def test_local_main_branch_json_files_load_with_the_hub_split_names(farm_main):
    from rmopt.data.sources import load_local_or_hub

    ds = load_local_or_hub(str(farm_main), subset="alpaca_instructions")
    assert sorted(ds) == sorted(INSTRUCTION_SPLITS)
    _check_farm(_farm_data(farm_main), "main:")
    noisy = _farm_data(farm_main, subset="alpaca_noisy_multi_preference").preferences("train")
    assert noisy[0]["answers"] == ["a0", "b0"] and noisy[0]["preference"] == 1


def test_older_export_names_load_too(farm_export_old):
    from rmopt.data.sources import load_local_or_hub

    assert sorted(load_local_or_hub(str(farm_export_old), subset="alpaca_instructions")) == sorted(
        INSTRUCTION_SPLITS
    )
    _check_farm(_farm_data(farm_export_old), "old:")


def test_usual_folders_keep_their_datasets_split_names(tmp_path):
    from rmopt.data.sources import hub_layout_splits, load_local_or_hub

    rows = [{"instruction": "a", "input": "", "answers": ["x", "y"], "preference": 0}]
    for split in ("train", "validation"):
        _parquet(rows * 3, tmp_path / "flat" / f"{split}.parquet")
        _parquet(rows * 2, tmp_path / "pushed" / "data" / f"{split}-00000-of-00001.parquet")
    for folder in ("flat", "pushed"):
        assert hub_layout_splits(str(tmp_path / folder)) is None
        assert sorted(load_local_or_hub(str(tmp_path / folder))) == ["train", "validation"]
    _json_array(rows * 4, tmp_path / "one" / "mine.json")  # one file, no split name: that file, any split
    assert len(load_local_or_hub(str(tmp_path / "one"), split="train[:50%]")) == 2


class FakeHub:
    """The hub's snapshot_download over local fixture trees, one per revision, with the hub's own
    pattern filter; records what was asked for."""

    def __init__(self, tmp_path, trees):
        self.tmp, self.trees, self.asked = tmp_path, trees, []

    def __call__(self, name, revision, patterns):
        from huggingface_hub.utils import filter_repo_objects

        self.asked.append((name, revision, list(patterns)))
        if revision not in self.trees:
            raise FileNotFoundError(f"no revision {revision!r}")  # as a missing branch
        tree = self.trees[revision]
        files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
        snapshot = self.tmp / "snapshots" / f"{len(self.asked)}"
        for rel in filter_repo_objects(files, allow_patterns=patterns):
            assert not rel.endswith(".py"), "downloaded the loading script"
            (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tree / rel, snapshot / rel)
        snapshot.mkdir(parents=True, exist_ok=True)
        return str(snapshot)


def _script_refused(name, subset):
    raise RuntimeError("Dataset scripts are no longer supported, but found alpaca_farm.py")


@pytest.fixture
def online_hub(monkeypatch):
    monkeypatch.setattr("rmopt.hub.hub_reachable", lambda: True)
    monkeypatch.setattr("rmopt.data.sources._hub_load_dataset", _script_refused)


def test_hub_script_set_is_read_from_its_parquet_export(
    farm_main, farm_export, tmp_path, monkeypatch, online_hub
):
    from rmopt.data.sources import PARQUET_EXPORT

    fake = FakeHub(tmp_path, {None: farm_main, PARQUET_EXPORT: farm_export})
    monkeypatch.setattr("rmopt.hub.hub_snapshot", fake)
    _check_farm(_farm_data("tatsu-lab/alpaca_farm"), "export:", less=1)
    asked = {(rev, tuple(p)) for _, rev, p in fake.asked}
    assert (PARQUET_EXPORT, ("alpaca_instructions/*/*.parquet",)) in asked
    assert all(name == "tatsu-lab/alpaca_farm" for name, _, _ in fake.asked)


def test_hub_script_set_without_export_is_read_from_its_files(
    farm_main, farm_export_old, tmp_path, monkeypatch, online_hub
):
    from rmopt.data.sources import PARQUET_EXPORT

    monkeypatch.setattr("rmopt.hub.hub_snapshot", FakeHub(tmp_path, {None: farm_main}))
    _check_farm(_farm_data("tatsu-lab/alpaca_farm"), "main:")
    # an export under its older names is still preferred to the main branch's files
    monkeypatch.setattr(
        "rmopt.hub.hub_snapshot",
        FakeHub(tmp_path / "old", {None: farm_main, PARQUET_EXPORT: farm_export_old}),
    )
    _check_farm(_farm_data("tatsu-lab/alpaca_farm"), "old:")


def test_hub_script_set_with_neither_is_one_line(tmp_path, monkeypatch, online_hub):
    from rmopt.data.sources import load_local_or_hub

    monkeypatch.setattr("rmopt.hub.hub_snapshot", FakeHub(tmp_path, {}))
    with pytest.raises(
        RmoptError, match="cannot load data set 'tatsu-lab/alpaca_farm' from the hub: Dataset scripts"
    ):
        load_local_or_hub("tatsu-lab/alpaca_farm", subset="alpaca_instructions", split="sft")


def test_published_gens_in_hub_layout_load_without_input(gens_main):
    from rmopt.data.gold_gens import gold_gens_dataset, load_gold_gens
    from rmopt.data.sources import load_local_or_hub

    assert sorted(load_local_or_hub(str(gens_main))) == ["validation"]
    ds = gold_gens_dataset(str(gens_main))
    assert ds.num_rows == 6 and ds[3]["input"] == "" and ds[3]["instruction"] == "g3"
    gens = load_gold_gens(str(gens_main), big_n=4, num_prompts=5)
    assert (gens.P, gens.N) == (5, 4) and gens.gold[4].tolist() == [40.0, 41.0, 42.0, 43.0]
    instructions, inputs, answers = gens.chunk(3, 5)
    assert inputs == [""] * 8 and answers[:4] == ["3-0", "3-1", "3-2", "3-3"] and instructions[4] == "g4"
    data = _farm_data(gens_main)  # HubData.gold_gens_dataset reads the same way
    data.gold_gens = str(gens_main)
    assert data.gold_gens_dataset()["input"] == [""] * 6


def test_published_gens_name_offline_comes_from_the_hub_cache(gens_main, tmp_path, monkeypatch):
    """Offline, a hub name datasets cannot find is read from the hub cache's snapshot in the hub layout."""
    from rmopt.data.gold_gens import load_gold_gens

    def offline(name, subset):
        raise ConnectionError("Couldn't reach 'tlc4418/gold_labelled_gens' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr("rmopt.hub.hub_reachable", lambda: False)
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("rmopt.data.sources._hub_load_dataset", offline)
    monkeypatch.setattr("rmopt.hub.hub_snapshot", FakeHub(tmp_path, {None: gens_main}))
    gens = load_gold_gens("tlc4418/gold_labelled_gens", big_n=5)
    assert (gens.P, gens.N) == (6, 5) and gens.gold[5, 4] == 54.0


def test_paper_settings_as_the_released_code():
    pairs = compose("rm", ["data=gold_labelled_pairs"]).data
    assert dict(pairs.preference_splits) == {"train": "train[:46000]", "val": "validation[:2000]"}
    assert compose("bon", ["experiment=paper"]).max_length == 776  # 520 prompt + 256 answer
    for stage in ("sft", "rm", "ppo"):
        assert compose(stage, ["experiment=paper"]).max_length == 520


def test_gold_labelled_pairs_take_the_first_train_and_validation_rows(tmp_path):
    import hydra

    rows = [
        {"instruction": f"i{j}", "input": "", "answers": ["x", "y"], "preference": j % 2} for j in range(5)
    ]
    for split in ("train", "validation"):
        _parquet(rows, tmp_path / "pairs" / f"{split}.parquet")
    cfg = compose(
        "rm",
        [
            "data=gold_labelled_pairs",
            f"data.path={tmp_path / 'pairs'}",
            'data.preference_splits.train="train[:3]"',  # the same slicing as train[:46000], at this size
            'data.preference_splits.val="validation[:2]"',
        ],
    )
    data = hydra.utils.instantiate(cfg.data)
    assert data.preferences("train")["instruction"] == ["i0", "i1", "i2"]
    assert data.preferences("validation")["instruction"] == ["i0", "i1"]


def test_module_layering():
    """The estimator does not import the stage; models and data sources do not import each other."""
    checks = [
        ("rmopt.bon", ["rmopt.bon_pipeline"]),
        ("rmopt.models", ["rmopt.data.sources", "rmopt.data.gold_gens"]),
        ("rmopt.data.sources, rmopt.data.gold_gens", ["rmopt.models", "rmopt.bon_pipeline"]),
    ]
    for imported, absent in checks:
        code = f"import sys\nimport {imported}\nprint([m for m in {absent!r} if m in sys.modules])"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.strip() == "[]", (imported, proc.stdout, proc.stderr)


def test_rmopt_bon_entry_point_is_the_stage_module():
    import importlib
    import re
    from pathlib import Path

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    module, attr = re.search(r'^rmopt-bon = "([\w.]+):(\w+)"$', pyproject, re.M).groups()
    assert module == "rmopt.bon_pipeline" and callable(getattr(importlib.import_module(module), attr))
