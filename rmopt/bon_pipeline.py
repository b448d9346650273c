"""The best-of-n stage, ``rmopt-bon`` (``python -m rmopt.bon_pipeline``): answers -> gold and proxy
scores -> curves -> files. The estimator itself is :mod:`rmopt.bon` (pure NumPy).

1. Answers with gold scores: a data set in the published ``tlc4418/gold_labelled_gens`` schema
   (instruction, input, answers[N], gold_scores[N]; read by :mod:`rmopt.data.gold_gens`), or
   generated here from a policy and gold-scored, then saved in that schema
   (``<output_dir>/gold_gens/``, a ``datasets`` folder) and reused.
2. Proxy scores of every member for every answer, computed once and stored as Parquet
   (``<output_dir>/proxy_scores.parquet``: prompt, answer, one float32 column per member) with a JSON
   of which member folders made them; a changed member is scored again, the others are reused.
3. Curves from the stored scores (no model needed): each member, and the ensembles (mean, WCO, UWO per
   weight) whose gold curve follows the ensemble's own ordering.

Answers are streamed from the Arrow table in chunks; scores are float32 [P, N] arrays, so the
published 1000 x 12,600 set needs well under 1 GiB besides the memory-mapped table.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rmopt.bon import DEFAULT_NS, best_of_n_per_prompt, kl_bon
from rmopt.data.gold_gens import GOLD_GENS_COLUMNS, GoldGens, _positive_int, load_gold_gens  # noqa: F401 (part of this API)
from rmopt.errors import RmoptError

RESULTS_FILE = "bon_sampled_results.json"
PER_PROMPT_FILE = "bon_per_prompt.json"  # beside it: each prompt's estimate at each n (for paired differences)
SCORES_FILE = "proxy_scores.parquet"
SCORES_META = "proxy_scores.json"
GENS_DIR = "gold_gens"
GENS_META = "gold_gens.json"
RUN_FILE = "bon_run.json"
WARM_NAME = "warm"  # warm=true: the curve of the members' weight average, <output_dir>/warm/
WARM_MODEL_DIR = "warm_rm"  # ... and the averaged reward model itself
FIGURE_FILE = "bon.png"
ENSEMBLE_OBJECTIVES = ("mean", "wco", "uwo")
PART_ANSWERS = 200_000  # answers per stored part while scoring or generating (the unit of resumption)
GENERATE_ANSWERS = 50_000  # answers per stored part while generating (token id lists are held per part)
TOKENIZE_ANSWERS = 8192  # answers tokenized at once (token id lists are the big Python objects)


# ---------------------------------------------------------------------------------------------
# ns, members, objectives


def resolve_ns(ns, big_n: int) -> list[int]:
    """The n values: the user's (each must be <= N) or the paper's defaults up to N, plus N itself."""
    big_n = _positive_int(big_n, "big_n")
    if ns is None:
        out = [n for n in DEFAULT_NS if n <= big_n]
        return out if out and out[-1] == big_n else [*out, big_n]
    values = [ns] if isinstance(ns, (int, float, str)) else list(ns)
    if not values:
        raise RmoptError("ns is empty; give at least one n, e.g. ns=[1,2,4], or ns=null for the defaults")
    out = []
    for n in values:
        try:
            n_int = int(n)
        except (TypeError, ValueError):
            raise RmoptError(f"ns has {n!r}; expected integers") from None
        if n_int != float(n):
            raise RmoptError(f"ns has {n!r}; expected integers")
        if n_int < 1:
            raise RmoptError(f"ns has n={n_int}; every n must be >= 1")
        if n_int > big_n:
            raise RmoptError(
                f"ns has n={n_int} but there are only N={big_n} answers per prompt (big_n); use n <= {big_n}"
            )
        out.append(n_int)
    return sorted(set(out))


def ensemble_names(
    objectives: Sequence[str], uwo_weights: Sequence[float]
) -> list[tuple[str, str, float | None]]:
    """(result name, objective, weight) of each ensemble: ``mean``, ``wco``, ``uwo_0.5``, ..."""
    out = []
    for name in objectives:
        if name not in ENSEMBLE_OBJECTIVES:
            raise RmoptError(
                f"unknown ensemble objective {name!r}; expected some of {list(ENSEMBLE_OBJECTIVES)}"
            )
        if name == "uwo":
            if not uwo_weights:
                raise RmoptError(
                    "objective uwo needs at least one weight in uwo_weights, e.g. uwo_weights=[0.5]"
                )
            for w in uwo_weights:
                w = float(w)
                if not (w >= 0 and np.isfinite(w)):
                    raise RmoptError(f"uwo_weights has {w!r}; expected finite numbers >= 0")
                out.append((f"uwo_{w:g}", "uwo", w))
        else:
            out.append((name, name, None))
    return out


# ---------------------------------------------------------------------------------------------
# curves from stored scores (pure: no models, no files)


def bon_curves(
    member_scores: np.ndarray,
    member_names: Sequence[str],
    gold: np.ndarray,
    ns: Sequence[int],
    ensembles: bool = True,
    objectives: Sequence[str] = ENSEMBLE_OBJECTIVES,
    uwo_weights: Sequence[float] = (0.5,),
) -> dict[str, dict[str, list]]:
    """Best-of-n curves of every member and ensemble from stored scores.

    member_scores: [k, P, N] proxy scores; gold: [P, N]. An ensemble's objective is applied to the
    member scores of each answer first, and that combined score orders the answers for the gold curve.
    Returns {name: {"n", "proxy_score", "gold_score", "kl_bon"}} (lists).
    """
    from rmopt.objectives import combine

    member_scores = np.asarray(member_scores)
    gold = np.asarray(gold)
    if member_scores.ndim != 3 or member_scores.shape[0] != len(member_names):
        raise RmoptError(
            f"member scores must be [k={len(member_names)}, P, N]; got shape {member_scores.shape}"
        )
    if member_scores.shape[1:] != gold.shape:
        raise RmoptError(f"proxy scores [P, N] = {member_scores.shape[1:]} but gold scores are {gold.shape}")
    N = gold.shape[1]
    for n in ns:
        if not 1 <= int(n) <= N:
            raise RmoptError(f"n={n} is outside 1..N={N} (answers per prompt)")
    combos = ensemble_names(objectives, uwo_weights) if ensembles else []
    curves = {name: bon_curve(member_scores[i], gold, ns) for i, name in enumerate(member_names)}
    for name, objective, weight in combos:
        curves[name] = bon_curve(combine(objective, member_scores, weight), gold, ns)
    return curves


def bon_curve(proxy: np.ndarray, gold: np.ndarray, ns) -> dict[str, list]:
    """One curve: the mean over prompts of the per-prompt estimator at each n, its standard error over
    prompts, and (under ``per_prompt``) the per-prompt values themselves."""
    from rmopt.stats import standard_error

    try:
        result = best_of_n_per_prompt(proxy, gold, ns)
    except ValueError as e:
        raise RmoptError(str(e)) from None
    P = proxy.shape[0]
    se = {k: standard_error(result[k], axis=1) if P > 1 else np.full(len(result["n"]), np.nan) for k in SCORES}
    return {
        "n": [int(n) for n in result["n"]],
        **{k: [float(v) for v in result[k].mean(axis=1)] for k in SCORES},
        **{f"{k}_se": [float(v) for v in se[k]] for k in SCORES},
        "kl_bon": [float(v) for v in np.atleast_1d(kl_bon(result["n"]))],
        "per_prompt": {k: result[k].tolist() for k in SCORES},
    }


SCORES = ("proxy_score", "gold_score")
RECORD_KEYS = ("n", "proxy_score", "proxy_score_se", "gold_score", "gold_score_se", "kl_bon")


def curve_records(curve: dict[str, list]) -> list[dict]:
    """The seed README's results schema, each score with its standard error over prompts:
    [{"n", "proxy_score", "proxy_score_se", "gold_score", "gold_score_se", "kl_bon"}]."""
    return [dict(zip(RECORD_KEYS, values, strict=True)) for values in zip(*(curve[k] for k in RECORD_KEYS), strict=True)]


def write_results(curves: dict[str, dict[str, list]], output_dir: str | os.PathLike) -> list[Path]:
    """``<name>/bon_sampled_results.json`` for every curve, and ``<name>/bon_per_prompt.json`` beside it."""
    from rmopt.utils import atomic_write_json

    paths = []
    for name, curve in curves.items():
        path = Path(output_dir) / name / RESULTS_FILE
        if "per_prompt" in curve:
            atomic_write_json(path.parent / PER_PROMPT_FILE, {"n": curve["n"], **curve["per_prompt"]})
        atomic_write_json(path, curve_records(curve))
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# generation (the answers with gold scores are read by rmopt.data.gold_gens)


def folder_fingerprint(path: str | os.PathLike) -> dict:
    """Which model a folder holds, cheaply: its absolute path and the size and mtime of its files."""
    path = Path(path)
    if not path.exists():  # a hub name: the name is all we know without asking the hub
        return {"path": str(path), "files": {}}
    files = {}
    for f in sorted(path.iterdir()) if path.is_dir() else []:
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".model", ".txt"):
            st = f.stat()
            files[f.name] = [st.st_size, st.st_mtime_ns]
    return {"path": str(path.resolve()), "files": files}


def generate_gold_gens(cfg, data, gold, output_dir: Path, device: str) -> Path:
    """Sample N answers per val prompt from ``model.name_or_path``, gold-score them, save in the published schema.

    Reused when ``<output_dir>/gold_gens.json`` says the same policy and settings made it; work is
    stored in parts, so an interrupted generation resumes at the part it stopped in.
    """
    import pyarrow as pa

    from rmopt.utils import atomic_write_json

    policy = str(cfg.model.name_or_path)
    if not os.path.isdir(policy) and (policy.startswith((".", "/", "~")) or policy.count("/") != 1):
        raise RmoptError(
            f"model.name_or_path {policy!r} does not exist; expected the SFT policy folder (or hub name) to sample from"
        )
    prompts = data.instructions("val")
    P = len(prompts) if cfg.num_prompts is None else _positive_int(cfg.num_prompts, "num_prompts")
    if P > len(prompts):
        raise RmoptError(f"num_prompts={P} but the val split has only {len(prompts)} prompts")
    N = _positive_int(cfg.big_n, "big_n")
    meta = {
        "policy": folder_fingerprint(policy),
        "num_prompts": P,
        "big_n": N,
        "seed": int(cfg.seed),
        "temperature": float(cfg.temperature),
        "top_p": float(cfg.top_p),
        "max_new_tokens": int(cfg.max_new_tokens),
        "gold": getattr(gold, "name", type(gold).__name__),
    }
    folder, meta_file = output_dir / GENS_DIR, output_dir / GENS_META
    if folder.is_dir() and meta_file.exists() and json.loads(meta_file.read_text()) == meta:
        print(f"reusing generated answers in {folder}")
        return folder
    parts = output_dir / f".{GENS_DIR}.parts"
    _reset_parts(parts, meta)
    instructions = prompts[:P]["instruction"]
    inputs = [x or "" for x in prompts[:P]["input"]]
    per_part = max(1, GENERATE_ANSWERS // N)
    starts = list(range(0, P, per_part))
    todo = [s for s in starts if not (parts / f"part-{s:07d}.parquet").exists()]
    if todo:
        model, tokenizer = _load_policy(policy, cfg.model.get("dtype", "float32"), device)
        from rmopt.generation import encode_prompts

        prompt_ids = encode_prompts(tokenizer, instructions, inputs)
        with _progress(cfg, sum(min(per_part, P - s) for s in todo) * N, "generating answers") as bar:
            for start in todo:
                stop = min(P, start + per_part)
                texts = _sample_part(cfg, model, tokenizer, prompt_ids[start:stop], N, start, device, bar)
                rep_instructions = [i for i in instructions[start:stop] for _ in range(N)]
                rep_inputs = [x for x in inputs[start:stop] for _ in range(N)]
                scores = np.asarray(
                    gold.score(rep_instructions, rep_inputs, texts, **_gold_kwargs(cfg)), dtype=np.float32
                )
                table = pa.table(
                    {
                        "instruction": instructions[start:stop],
                        "input": inputs[start:stop],
                        "answers": [texts[j * N : (j + 1) * N] for j in range(stop - start)],
                        "gold_scores": pa.array(
                            [scores[j * N : (j + 1) * N] for j in range(stop - start)],
                            type=pa.list_(pa.float32()),
                        ),
                    }
                )
                _write_parquet(table, parts / f"part-{start:07d}.parquet")
        del model
    _combine_parts_to_dataset([parts / f"part-{s:07d}.parquet" for s in starts], folder, parts)
    atomic_write_json(meta_file, meta)
    shutil.rmtree(parts, ignore_errors=True)
    print(f"saved {P} prompts x {N} gold-scored answers to {folder}")
    return folder


def _load_policy(path: str, dtype: str, device: str):
    from rmopt.models import ModelSource

    source = ModelSource(name_or_path=path, dtype=dtype)
    tokenizer = source.load_tokenizer()
    model = source.load_causal_lm(tokenizer).to(device).eval()
    return model, tokenizer


def _sample_part(cfg, model, tokenizer, prompt_ids, N: int, start: int, device: str, bar) -> list[str]:
    """N answers to each prompt, many (prompt, sample) rows per batch; seeded by part so resumption matches."""
    import torch

    from rmopt.generation import decode_answers, sample_ids

    generator = torch.Generator(device=device).manual_seed(int(cfg.seed) * 1_000_003 + start)
    rows = [ids for ids in prompt_ids for _ in range(N)]
    batch = _positive_int(cfg.generation_batch_size, "generation_batch_size")
    answer_ids: list[list[int]] = []
    for b in range(0, len(rows), batch):
        chunk = rows[b : b + batch]
        answer_ids += sample_ids(
            model,
            chunk,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            max_new_tokens=int(cfg.max_new_tokens),
            temperature=float(cfg.temperature),
            top_p=float(cfg.top_p),
            generator=generator,
        )
        bar.update(len(chunk))
    texts, _ = decode_answers(tokenizer, answer_ids)
    return texts


def _combine_parts_to_dataset(part_files: list[Path], folder: Path, parts: Path) -> None:
    import datasets

    from rmopt.utils import atomic_dir

    cache = parts / "cache"
    ds = datasets.Dataset.from_parquet([str(p) for p in part_files], cache_dir=str(cache))
    with atomic_dir(folder) as tmp:
        ds.save_to_disk(str(tmp))
    del ds


# ---------------------------------------------------------------------------------------------
# proxy scores, stored once


def member_names(seeds: Sequence, paths: Sequence[str]) -> list[str]:
    return (
        [f"seed{s}" for s in seeds]
        if len(set(map(str, seeds))) == len(paths)
        else [f"member{j}" for j in range(len(paths))]
    )


def stored_proxy_scores(
    gens: GoldGens,
    paths: Sequence[str],
    names: Sequence[str],
    output_dir: Path,
    *,
    max_length: int,
    batch_size: int,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """[k, P, N] float32 proxy scores of every member, from the store where a member's entry matches.

    The store (``proxy_scores.parquet`` + ``proxy_scores.json``) holds one column per member; its JSON
    records each member's folder fingerprint, the answers' fingerprint and max_length. Members whose
    entry is missing or stale are scored (all of them in one pass over the answers) and stored.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rmopt.utils import atomic_write_json

    scores_file, meta_file = output_dir / SCORES_FILE, output_dir / SCORES_META
    data_key = gens.key()
    fingerprints = {name: folder_fingerprint(p) for name, p in zip(names, paths, strict=True)}
    meta = json.loads(meta_file.read_text()) if meta_file.exists() and scores_file.exists() else {}
    if meta.get("data") != data_key or meta.get("max_length") != max_length or meta.get("P") != gens.P:
        meta = {
            "data": data_key,
            "max_length": max_length,
            "P": gens.P,
            "N": gens.N,
            "members": {},
            "columns": {},
        }
    stored = {}
    if meta["members"]:
        stored_table = pq.read_table(scores_file)
        for name, fp in fingerprints.items():
            if meta["members"].get(name) == fp:
                cols = meta["columns"][name]
                stored[name] = [stored_table.column(c).to_numpy().reshape(gens.P, gens.N) for c in cols]
        del stored_table
    missing = [j for j, name in enumerate(names) if name not in stored]
    if stored:
        print(
            f"reusing stored proxy scores of {', '.join(n for n in names if n in stored)} from {scores_file}"
        )
    if missing:
        fresh = score_members(
            gens,
            [paths[j] for j in missing],
            [names[j] for j in missing],
            output_dir,
            max_length=max_length,
            batch_size=batch_size,
            device=device,
            progress=progress,
            data_key=data_key,
        )
        for name, arrays in fresh.items():
            stored[name] = arrays
            meta["members"][name] = fingerprints[name]
        # Store every member that is known (old matching ones and new ones); stale columns are dropped.
        keep = [n for n in meta["members"] if n in stored]
        meta["members"] = {n: meta["members"][n] for n in keep}
        columns, arrays = {}, {}
        for n in keep:
            heads = stored[n]
            cols = [n] if len(heads) == 1 else [f"{n}_head{h}" for h in range(len(heads))]
            columns[n] = cols
            for c, a in zip(cols, heads, strict=True):
                arrays[c] = pa.array(np.ascontiguousarray(a, dtype=np.float32).ravel())
        index = np.arange(gens.P * gens.N, dtype=np.int64)
        table = pa.table(
            {
                "prompt": pa.array((index // gens.N).astype(np.int32)),
                "answer": pa.array((index % gens.N).astype(np.int32)),
                **arrays,
            }
        )
        meta["columns"] = columns
        _write_parquet(table, scores_file)
        atomic_write_json(meta_file, meta)
    heads, out_names = [], []
    for name in names:
        for h, a in enumerate(stored[name]):
            heads.append(a)
            out_names.append(name if len(stored[name]) == 1 else f"{name}_head{h}")
    return np.stack(heads).astype(np.float32, copy=False), out_names


def score_members(
    gens: GoldGens,
    paths: Sequence[str],
    names: Sequence[str],
    output_dir: Path,
    *,
    max_length: int,
    batch_size: int,
    device: str,
    progress: bool,
    data_key: str,
) -> dict[str, list[np.ndarray]]:
    """Score every answer with these members (one tokenization per answer for all of them).

    Finished parts go to ``.proxy_scores.parts/`` so an interrupted run resumes. Returns
    {name: [[P, N] float32 per head]}.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rmopt.ensemble import RewardEnsemble, tokenize_pairs

    parts = output_dir / ".proxy_scores.parts"
    _reset_parts(
        parts,
        {
            "data": data_key,
            "max_length": max_length,
            "members": {n: folder_fingerprint(p) for n, p in zip(names, paths, strict=True)},
        },
    )
    per_part = max(1, PART_ANSWERS // gens.N)
    starts = list(range(0, gens.P, per_part))
    todo = [s for s in starts if not (parts / f"part-{s:07d}.parquet").exists()]
    if todo:
        ensemble = RewardEnsemble.load(
            "{seed}", [str(p) for p in paths], normalise=False, max_length=max_length, device=device
        )
        with _progress(
            None, sum(min(per_part, gens.P - s) for s in todo) * gens.N, f"proxy scores ({len(paths)} RMs)", enabled=progress
        ) as bar:
            for start in todo:
                stop = min(gens.P, start + per_part)
                instructions, inputs, answers = gens.chunk(start, stop)
                scores = np.empty((ensemble.k, len(answers)), dtype=np.float32)
                for t in range(0, len(answers), TOKENIZE_ANSWERS):
                    ids = tokenize_pairs(
                        ensemble.tokenizer,
                        instructions[t : t + TOKENIZE_ANSWERS],
                        inputs[t : t + TOKENIZE_ANSWERS],
                        answers[t : t + TOKENIZE_ANSWERS],
                        max_length,
                    )
                    order = sorted(range(len(ids)), key=lambda j: len(ids[j]))  # similar lengths pad little
                    for b in range(0, len(order), batch_size):
                        idx = order[b : b + batch_size]
                        scores[:, [t + j for j in idx]] = (
                            ensemble.score_ids([ids[j] for j in idx]).float().cpu().numpy()
                        )
                        bar.update(len(idx))
                _write_parquet(
                    pa.table({f"h{h}": scores[h] for h in range(ensemble.k)}),
                    parts / f"part-{start:07d}.parquet",
                )
        heads = ensemble.heads
        del ensemble
    else:
        heads = _heads_of(paths)
    columns = [f"h{h}" for h in range(sum(heads))]
    full = np.concatenate(
        [
            np.stack([pq.read_table(parts / f"part-{s:07d}.parquet").column(c).to_numpy() for c in columns])
            for s in starts
        ],
        axis=1,
    ).reshape(len(columns), gens.P, gens.N)
    shutil.rmtree(parts, ignore_errors=True)
    out, h = {}, 0
    for name, count in zip(names, heads, strict=True):
        out[name] = [full[h + j] for j in range(count)]
        h += count
    return out


def _heads_of(paths) -> list[int]:
    heads = []
    for p in paths:
        config = json.loads((Path(p) / "config.json").read_text())
        heads.append(int(config.get("num_labels", len(config.get("id2label", {})) or 1)))
    return heads


# ---------------------------------------------------------------------------------------------
# small helpers


def _reset_parts(parts: Path, meta: dict) -> None:
    """Keep a parts folder only if it was made for the same work (same meta); else start it afresh."""
    from rmopt.utils import atomic_write_json

    meta_file = parts / "meta.json"
    if parts.is_dir() and not (meta_file.exists() and json.loads(meta_file.read_text()) == meta):
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not meta_file.exists():
        atomic_write_json(meta_file, meta)


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def _progress(cfg, total: int, desc: str, enabled: bool | None = None):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = bool(cfg.get("progress", True)) if cfg is not None else True
    bar = tqdm(
        total=total, desc=desc, unit="answer", disable=not enabled, file=sys.stderr, dynamic_ncols=True
    )
    try:
        yield bar
    finally:
        bar.close()


def _gold_kwargs(cfg) -> dict:
    return {"batch_size": int(cfg.gold_batch_size)} if cfg.get("gold_batch_size") else {}


def _normalise(scores: np.ndarray, paths: Sequence[str]) -> np.ndarray:
    from rmopt.ensemble import STATS_FILE
    from rmopt.objectives import normalise

    means, stds = [], []
    for p in paths:
        stats_file = Path(p) / STATS_FILE
        if not stats_file.exists():
            raise RmoptError(f"normalise=true needs {STATS_FILE} in every member folder; {p!r} has none")
        stats = json.loads(stats_file.read_text())
        means += stats["mean"] if isinstance(stats["mean"], list) else [stats["mean"]]
        stds += stats["std"] if isinstance(stats["std"], list) else [stats["std"]]
    return normalise(scores, means, stds).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the stage


def run_bon(cfg) -> dict[str, dict[str, list]]:
    """Everything ``rmopt-bon`` does; returns the curves {name: {"n", "proxy_score", "gold_score", "kl_bon"}}."""
    import hydra
    from omegaconf import OmegaConf

    from rmopt.ensemble import member_paths
    from rmopt.gold import build_gold, resolve_device
    from rmopt.stage import already_done, prepare, save_run_config
    from rmopt.utils import atomic_write_json

    prepare(cfg)
    if OmegaConf.is_missing(cfg, "proxy_rm_path") or not cfg.proxy_rm_path:
        raise RmoptError(
            "proxy_rm_path is required, e.g. 'proxy_rm_path=\"models/toy-rm_seed{seed}\"' seeds=[1,2]"
        )
    seeds = list(cfg.seeds) if OmegaConf.is_list(cfg.seeds) else [cfg.seeds]
    paths = member_paths(str(cfg.proxy_rm_path), seeds)
    names = member_names(seeds, paths)
    big_n = _positive_int(cfg.big_n, "big_n")
    ns = resolve_ns(
        None if cfg.ns is None else OmegaConf.to_object(cfg.ns) if OmegaConf.is_config(cfg.ns) else cfg.ns,
        big_n,
    )
    objectives = list(cfg.objectives) if cfg.ensembles else []
    uwo_weights = [float(w) for w in (cfg.uwo_weights or [])]
    ensemble_names(objectives, uwo_weights)  # check before any expensive work
    device = resolve_device(cfg.device)
    output_dir = Path(cfg.output_dir)  # created once the inputs have passed their checks

    if cfg.gold_gens:
        gens = load_gold_gens(str(cfg.gold_gens), big_n, cfg.num_prompts)
    elif cfg.model.get("name_or_path"):
        data = hydra.utils.instantiate(cfg.data)
        gold = build_gold(cfg.get("gold"), data)
        folder = generate_gold_gens(cfg, data, gold, output_dir, device)
        gens = load_gold_gens(str(folder), big_n)
    else:
        raise RmoptError(
            "no answers: set gold_gens (a gold-labelled generations set) or model.name_or_path (a policy folder to sample from)"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"best-of-n over {gens.P} prompts x N={gens.N} answers, n in {ns[0]}..{ns[-1]} ({len(ns)} values)")

    run_key = {
        "data": gens.key(),
        "members": {n: folder_fingerprint(p) for n, p in zip(names, paths, strict=True)},
        "ns": ns,
        "objectives": objectives,
        "uwo_weights": uwo_weights,
        "normalise": bool(cfg.normalise),
        "max_length": int(cfg.max_length),
        "warm": bool(cfg.get("warm", False)),
    }
    run_file = output_dir / RUN_FILE
    if run_file.exists():
        done = json.loads(run_file.read_text())
        if done.get("key") == run_key and already_done(cfg, output_dir):
            return {name: read_curve(output_dir / name / RESULTS_FILE) for name in done["results"]}

    warm_paths, warm_names = [], []
    if cfg.get("warm"):  # WARM: the members' weights averaged into one more reward model, scored in the same pass
        from rmopt.warm import average_members

        warm_paths, warm_names = [str(average_members(paths, seeds, output_dir / WARM_MODEL_DIR))], [WARM_NAME]
    member_scores, head_names = stored_proxy_scores(
        gens,
        [*paths, *warm_paths],
        [*names, *warm_names],
        output_dir,
        max_length=int(cfg.max_length),
        batch_size=_positive_int(cfg.batch_size, "batch_size"),
        device=device,
        progress=bool(cfg.get("progress", True)),
    )
    if cfg.normalise:
        member_scores = _normalise(member_scores, [*paths, *warm_paths])
    if warm_paths:
        member_scores, warm_scores, head_names = member_scores[:-1], member_scores[-1], head_names[:-1]
    curves = bon_curves(
        member_scores, head_names, gens.gold, ns, bool(cfg.ensembles), objectives, uwo_weights
    )
    if warm_paths:
        curves[WARM_NAME] = bon_curve(warm_scores, gens.gold, ns)
    written = write_results(curves, output_dir)
    figure = _plot(curves, output_dir / FIGURE_FILE, gens)
    if cfg.get("logger") and cfg.logger.get("wandb"):
        from rmopt.report import log_curves_to_wandb

        log_curves_to_wandb(
            curves, ["n", "kl_bon"], cfg.logger.wandb, run_name=f"bon-{output_dir.name}", image=figure
        )
    save_run_config(cfg, output_dir)
    atomic_write_json(run_file, {"key": run_key, "results": sorted(curves)})
    _print_summary(curves, written, figure)
    return curves


def read_curve(path: Path) -> dict[str, list]:
    records = json.loads(path.read_text())
    curve = {k: [r.get(k, float("nan")) for r in records] for k in RECORD_KEYS}
    per_prompt = path.parent / PER_PROMPT_FILE
    if per_prompt.exists():
        stored = json.loads(per_prompt.read_text())
        curve["per_prompt"] = {k: stored[k] for k in SCORES}
    return curve


def _plot(curves, path: Path, gens: GoldGens) -> Path:
    from rmopt.report import plot_curves

    return plot_curves(
        curves, ["n", "kl_bon"], path, title=f"best-of-n: {gens.P} prompts x N={gens.N}", log_x=[True, False]
    )


def _print_summary(curves, written, figure) -> None:
    print(
        f"{'name':<12} {'n':>7} {'proxy':>9} {'gold':>9} {'(SE)':>8}   (at the largest n; gold at n=1 is the policy's mean)"
    )
    for name, curve in curves.items():
        print(
            f"{name:<12} {curve['n'][-1]:>7} {curve['proxy_score'][-1]:>9.4f} {curve['gold_score'][-1]:>9.4f}"
            f" +-{curve['gold_score_se'][-1]:.4f}"
        )
    print(
        f"wrote {len(written)} results files ({Path(written[0]).name}) under {Path(written[0]).parent.parent}"
    )
    print(f"figure: {figure}")


def _hydra_task():
    import hydra

    from rmopt.errors import cli_errors
    from rmopt.stage import CONFIG_PATH

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="bon")
    def _main(cfg) -> None:
        from rmopt.sweep import run_job

        run_job(run_bon, cfg)

    return cli_errors(_main)


def hydra_main() -> None:
    _hydra_task()()


def main() -> None:
    """``rmopt-bon`` / ``python -m rmopt.bon_pipeline``: the Hydra app; a command-line mistake is one line
    and exit code 1, as every user error of every stage."""
    hydra_main()


if __name__ == "__main__":
    main()
