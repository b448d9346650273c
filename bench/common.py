"""What every benchmark shares: thread pinning, timing, the peer venv, the shared model/data assets, results files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / "peers"
TRL_VENV = BENCH_DIR / "venv-trl"
# TRL 0.29.1 is the last line with a PPO trainer (trl.experimental.ppo); it has RewardTrainer and SFTTrainer too.
TRL_PACKAGES = ("torch==2.13.0", "transformers==5.24.0", "trl==0.29.1", "datasets", "accelerate", "numpy", "requests")

# Model shapes (random init, the toy tokenizer): toy-small is conf/model/toy-small.yaml.
MODELS = {
    "toy-small": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
        max_position_embeddings=128, rotary_pct=0.25, hidden_dropout=0.0, attention_dropout=0.0,
        use_parallel_residual=True,
    ),
    "pythia-70m-shape": dict(
        hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
        max_position_embeddings=2048, rotary_pct=0.25, hidden_dropout=0.0, attention_dropout=0.0,
        use_parallel_residual=True,
    ),
    "tiny": dict(  # tests only
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, rotary_pct=0.25, hidden_dropout=0.0, attention_dropout=0.0,
        use_parallel_residual=True,
    ),
}


def pin_threads() -> None:
    """One thread everywhere: two threads on these small machines are erratic."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch

    torch.set_num_threads(1)


@dataclass
class Result:
    """One benchmark: ``ratio`` > 1 means rmopt is better (for times: peer / ours; for rates: ours / peer)."""

    name: str
    ours: float | None
    peer: float | None
    unit: str
    ratio: float | None
    setup: str
    target: str = ""
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        d = asdict(self)
        if not d["extra"]:
            d.pop("extra")
        return d


def ratio_of(ours, peer, higher_is_better: bool) -> float | None:
    if ours is None or peer is None or ours <= 0 or peer <= 0:
        return None
    return ours / peer if higher_is_better else peer / ours


def median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def matmul_flops(size: int = 1024, reps: int = 5) -> float:
    """FLOP/s of a large fp32 matrix product on one thread: the machine's practical peak."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


# ---------------------------------------------------------------------------------------------- peer venv


def trl_python(create: bool = True) -> Path | None:
    """The peer venv's python (bench/venv-trl), created on first use; None if it cannot be had."""
    py = TRL_VENV / "bin" / "python"
    if py.exists() and _imports_trl(py):
        return py
    if not create:
        return None
    print(f"creating the TRL peer venv in {TRL_VENV} ({', '.join(TRL_PACKAGES)}) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(TRL_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *TRL_PACKAGES], check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"could not create the TRL venv ({e}); TRL peers are skipped", flush=True)
        return None
    return py if _imports_trl(py) else None


def _imports_trl(py: Path) -> bool:
    code = "import trl, transformers; from trl.experimental.ppo import PPOTrainer; from trl import GRPOTrainer"
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}
    return subprocess.run([str(py), "-c", code], capture_output=True, env=env).returncode == 0


def run_peer(python: Path, script: str, args: dict, timeout: int = 600) -> dict:
    """Run bench/peers/<script> under ``python`` with JSON ``args``; it prints one JSON line last."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "WANDB_DISABLED": "true",
           "PYTHONPATH": str(BENCH_DIR.parent)}
    proc = subprocess.run(
        [str(python), str(PEERS_DIR / script), json.dumps(args)], capture_output=True, text=True, env=env, timeout=timeout
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"peer {script} failed (exit {proc.returncode}): " + " | ".join(tail))
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------- assets


@dataclass
class Assets:
    """A random-init model pair saved as HF folders (causal LM, reward model), the toy data, their paths."""

    root: Path
    model: str
    lm_dir: Path
    rm_dir: Path
    pairs_dir: Path
    sft_json: Path
    prompts_json: Path
    params: int


def make_assets(root: Path, model: str = "toy-small", pairs: int = 512, sft_rows: int = 512, seed: int = 0) -> Assets:
    """Save the shared inputs once: both sides load the very same weights, tokenizer and data."""
    import datasets
    import torch

    from rmopt.models import ModelSource
    from rmopt.prompts import format_answer, format_prompt
    from rmopt.toy.world import generate_dataset

    root.mkdir(parents=True, exist_ok=True)
    source = ModelSource(config=dict(MODELS[model]), tokenizer="toy")
    tok = source.load_tokenizer()
    torch.manual_seed(seed)
    lm = source.load_causal_lm(tok)
    torch.manual_seed(seed + 1)
    rm = source.load_reward_model(tok)
    lm_dir, rm_dir = root / "lm", root / "rm"
    lm.save_pretrained(lm_dir)
    tok.save_pretrained(lm_dir)
    rm.save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)

    data = generate_dataset({"sft": sft_rows, "preference": pairs + 64, "val": 64}, seed=seed)
    pref = data["preference"]
    rows = []
    outputs = pref["output"]
    for j, (i, x, o) in enumerate(zip(pref["instruction"], pref["input"], outputs, strict=True)):
        rejected = outputs[(j + 1) % len(outputs)]
        rows.append({"instruction": i, "input": x, "answers": [o, rejected], "preference": 0})
    pairs_dir = root / "pairs"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:pairs]), "validation": datasets.Dataset.from_list(rows[pairs:])}
    ).save_to_disk(str(pairs_dir))
    sft = data["sft"]
    sft_json = root / "sft.json"
    sft_json.write_text(json.dumps(
        [{"prompt": format_prompt(i, x), "completion": format_answer(o), "instruction": i, "input": x, "output": o}
         for i, x, o in zip(sft["instruction"], sft["input"], sft["output"], strict=True)]
    ))
    prompts_json = root / "prompts.json"
    val = data["val"]
    prompts_json.write_text(json.dumps(
        [{"instruction": i, "input": x, "output": o, "prompt": format_prompt(i, x)}
         for i, x, o in zip(val["instruction"], val["input"], val["output"], strict=True)]
    ))
    params = sum(p.numel() for p in lm.parameters())
    return Assets(root, model, lm_dir, rm_dir, pairs_dir, sft_json, prompts_json, params)


# ---------------------------------------------------------------------------------------------- output


def machine_line() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, 1 torch thread")


def write_results(results: list[Result], out_dir: Path, header: dict, update: bool = False) -> tuple[Path, Path]:
    """bench/results.json (the list of records) and bench/RESULTS.md (a table), atomically.

    ``update``: replace only these rows (by name) in the files already there, keeping the other rows, their
    order and the old header, with ``header``'s entries that differ from it added as "update (rows)" lines
    (each update's own: a later update of other rows does not overwrite them).
    """
    from rmopt.utils import atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "RESULTS.md"
    if update and json_path.exists():
        old = [Result(**r) for r in json.loads(json_path.read_text())]
        new = {r.name: r for r in results}
        merged = [new.pop(r.name, r) for r in old] + list(new.values())
        old_header = read_header(md_path) if md_path.exists() else {}
        base = {k: v for k, v in old_header.items() if not k.startswith(("updated (", "update ("))}
        rows = ", ".join(r.name for r in results)
        kept = _without_rows(old_header, {r.name for r in merged}, {r.name for r in results})
        header = {**kept, **{f"updated ({rows})" if k == "made" else f"update ({rows}): {k}": v
                             for k, v in header.items() if base.get(k) != v}}
        results = merged
    atomic_write_json(json_path, [r.record() for r in results])
    atomic_write_text(md_path, markdown(results, header))
    return json_path, md_path


def _without_rows(header: dict, names: set[str], remeasured: set[str]) -> dict:
    """``header`` with the re-measured rows taken out of its earlier "updated (rows)" and "update (rows): key"
    lines (a line left with no rows goes): those rows' settings are now the new update's lines."""
    out = {}
    for key, value in header.items():
        if key.startswith("updated (") and key.endswith(")"):
            inside, head, tail = key[len("updated ("):-1], "updated (", ")"
        elif key.startswith("update (") and "): " in key:
            inside, rest = key[len("update ("):].split("): ", 1)
            head, tail = "update (", "): " + rest
        else:
            out[key] = value
            continue
        rows = _row_names(inside, names)
        if rows is None:  # not a list of this file's rows: keep the line as it is
            out[key] = value
        elif left := [r for r in rows if r not in remeasured]:
            out[head + ", ".join(left) + tail] = value
    return out


def _row_names(inside: str, names: set[str]) -> list[str] | None:
    """``"a, b, c"`` as row names (a name may itself hold ", "); None if it is not one."""
    rows, pending = [], []
    for part in inside.split(", "):
        pending.append(part)
        if ", ".join(pending) in names:
            rows.append(", ".join(pending))
            pending = []
    return None if pending or not rows else rows


def render_results(out_dir: Path) -> Path:
    """Rewrite ``out_dir``/RESULTS.md from its results.json and header (after bench/NOTES.md changed)."""
    from rmopt.utils import atomic_write_text

    json_path, md_path = out_dir / "results.json", out_dir / "RESULTS.md"
    if not json_path.is_file():
        raise FileNotFoundError(f"no results.json in {out_dir}; run the benchmarks there first")
    results = [Result(**r) for r in json.loads(json_path.read_text())]
    header = read_header(md_path) if md_path.exists() else {}
    atomic_write_text(md_path, markdown(results, header))
    return md_path


def read_header(md_path: Path) -> dict:
    """The ``- **key**: value`` lines at the top of a RESULTS.md written by :func:`markdown`."""
    header = {}
    for line in md_path.read_text().splitlines()[2:]:
        if not line.startswith("- **"):
            break
        key, _, value = line[4:].partition("**: ")
        header[key] = value
    return header


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def markdown(results: list[Result], header: dict) -> str:
    lines = ["# rmopt benchmarks", ""]
    for key, value in header.items():
        lines.append(f"- **{key}**: {value}")
    lines += [
        "",
        "ratio > 1 means rmopt is better (times: peer / ours; rates: ours / peer). Medians over the repetitions.",
        "",
        "| benchmark | ours | peer | unit | ratio | target | setup |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        setup = r.setup.replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {r.name} | {_fmt(r.ours)} | {_fmt(r.peer)} | {r.unit} | {_fmt(r.ratio)} | {r.target} | {setup} |"
        )
    extras = [r for r in results if r.extra]
    if extras:
        lines += ["", "## Details", ""]
        for r in extras:
            lines.append(f"- **{r.name}**: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in r.extra.items()))
    notes = Path(__file__).with_name("NOTES.md")  # what made the difference, kept by hand
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    return "\n".join(lines) + "\n"
