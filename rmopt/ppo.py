"""``rmopt-ppo``: PPO of an SFT policy against one proxy RM or an ensemble; ``rmopt-ppo-gold``: gold scores.

    rmopt-ppo experiment=toy model.name_or_path=models/toy-sft 'proxy_rm_path="models/toy-rm_seed{seed}"' \\
        seeds=[1] output_dir=runs/ppo-single trainer.max_steps=300
    rmopt-ppo-gold run_dir=runs/ppo-single            # gold-score every eval file, results + figure
    rmopt-ppo-gold 'run_dir=runs/ppo/*'               # several runs: also one overlay figure

A run folder holds ``eval/step_NNNNNN.json`` (answers to held-out prompts with proxy scores and KL
from the initial policy; gold scores once scored), ``results.json`` and ``ppo.png`` (gold and proxy
against KL and steps), ``policy/`` (HF folder + ``value_head.safetensors``) and ``checkpoints/``.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from rmopt.errors import RmoptError, cli_errors
from rmopt.models import is_sharded
from rmopt.stage import CONFIG_PATH, already_done, build_trainer, prepare, resolve_ckpt_path, save_run_config
from rmopt.sweep import run_job

VALUE_HEAD_FILE = "value_head.safetensors"


def settings_from(cfg: DictConfig):
    from dataclasses import fields

    from rmopt.modules.ppo import PPOSettings

    algorithm = cfg.get("algorithm") or {"name": "ppo"}
    from_algorithm = {"algorithm": algorithm.get("name", "ppo"),
                      **{k: algorithm[k] for k in ("group_size", "scale_rewards", "beta") if k in algorithm}}
    return PPOSettings(**{f.name: cfg[f.name] for f in fields(PPOSettings) if f.name in cfg and f.name not in from_algorithm},
                       **from_algorithm)


def build_policy(cfg: DictConfig):
    """(tokenizer, policy with value head, reference) from ``cfg.model``, sharing the frozen trunk."""
    from rmopt.value_head import PolicyWithValueHead, build_reference, freeze_bottom

    source = hydra.utils.instantiate(cfg.model)
    tokenizer = source.load_tokenizer()
    lm = source.load_causal_lm(tokenizer)
    frozen = freeze_bottom(lm, int(cfg.num_layers_unfrozen))
    reference = build_reference(lm, frozen)
    return tokenizer, PolicyWithValueHead(lm), reference


def build_module(cfg: DictConfig, ensemble=None, data=None):
    """The PPOModule of ``cfg`` (policy, reference, proxy ensemble, objective, prompts)."""
    from rmopt.ensemble import RewardEnsemble
    from rmopt.modules.ppo import PPOModule

    if cfg.model.get("name_or_path") is None:
        raise RmoptError("model.name_or_path is not set; expected the SFT policy folder, e.g. model.name_or_path=models/toy-sft")
    objective = hydra.utils.instantiate(cfg.objective)  # checks the objective's weight before loading models
    tokenizer, policy, reference = build_policy(cfg)
    if ensemble is None:
        ensemble = RewardEnsemble.load(
            cfg.proxy_rm_path, cfg.seeds, normalise=bool(cfg.normalise), max_length=int(cfg.max_length)
        )
    data = data if data is not None else hydra.utils.instantiate(cfg.data)
    val = data.instructions("val")
    return PPOModule(
        policy,
        reference,
        tokenizer,
        ensemble,
        objective,
        data.instructions(cfg.prompt_split),
        val.select(range(min(int(cfg.eval_prompts), len(val)))),
        settings_from(cfg),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        output_dir=cfg.output_dir,
        seed=int(cfg.seed),
    )


def train(cfg: DictConfig, ensemble=None) -> dict[str, float]:
    """Run PPO; write eval files, checkpoints, the final policy + value head, results and figure.

    ``ensemble`` replaces the proxy RMs of ``cfg`` (anything with RewardEnsemble's ``score_ids``).
    """
    import warnings

    if int(cfg.trainer.max_steps) < 1:
        raise RmoptError(f"trainer.max_steps={cfg.trainer.max_steps} is not valid for PPO; expected the number of PPO steps, e.g. 3000")
    if already_done(cfg, cfg.output_dir, marker="results.json"):
        return {}
    prepare(cfg)
    warnings.filterwarnings("ignore", message=".*(pre-optimization state|module\\(s\\) in eval mode).*")
    output_dir = Path(cfg.output_dir)
    ckpt_dir = output_dir / "checkpoints"
    trainer = build_trainer(cfg, ckpt_dir)
    if is_sharded(trainer.strategy):
        raise RmoptError(
            f"trainer strategy {type(trainer.strategy).__name__} is not supported by rmopt-ppo: its several updates "
            "per PPO step cannot run inside one sharded forward; expected trainer=cpu, gpu or ddp"
        )
    data = hydra.utils.instantiate(cfg.data)
    module = build_module(cfg, ensemble, data)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, ckpt_dir, cfg.get("resume", False))
    if ckpt_path is None:  # a fresh run: an earlier run's eval files and results must not mix with this one's
        for stale in [*(output_dir / "eval").glob("step_*.json"), output_dir / "results.json"]:
            stale.unlink(missing_ok=True)
    save_run_config(cfg, output_dir)
    trainer.fit(module, ckpt_path=ckpt_path)
    if not trainer.is_global_zero:  # under ddp every process holds the same policy: one writes
        return {"step": float(module.global_step)}
    save_policy(output_dir / "policy", module.policy, module.tokenizer)
    if cfg.gold_eval:
        score_gold(output_dir, load_gold(cfg, data), cfg.get("gold_batch_size"))
    results = write_results(output_dir)
    last = results["points"][-1]
    print(f"PPO policy saved to {output_dir / 'policy'}; results in {output_dir / 'results.json'}")
    print(curve_text(results["points"]))
    return {"step": float(module.global_step), **{k: v for k, v in last.items() if isinstance(v, float)}}


def save_policy(folder: Path, policy, tokenizer) -> None:
    """The trained policy as an HF folder, the value head beside it (``value_head.safetensors``)."""
    from safetensors.torch import save_file

    from rmopt.utils import save_hf_folder

    policy.eval()
    save_hf_folder(folder, policy.lm, tokenizer)
    tmp = folder / f".{VALUE_HEAD_FILE}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()}, str(tmp))
    os.replace(tmp, folder / VALUE_HEAD_FILE)


def load_value_head(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / VALUE_HEAD_FILE))


# ---------------------------------------------------------------------------------------- gold


def load_gold(cfg: DictConfig, data=None):
    """The gold scorer: ``cfg.gold`` when set (conf/gold/*.yaml), else the data source's own (toy world)."""
    from rmopt.gold import build_gold

    if data is None:
        data = hydra.utils.instantiate(cfg.data)
    return build_gold(cfg.get("gold"), data)


def eval_files(run_dir: str | os.PathLike) -> list[Path]:
    files = sorted((Path(run_dir) / "eval").glob("step_*.json"))
    if not files:
        raise RmoptError(f"run folder {str(run_dir)!r} has no eval/step_*.json; expected a folder written by rmopt-ppo")
    return files


def score_gold(run_dir: str | os.PathLike, gold, batch_size: int | None = None, overwrite: bool = False) -> int:
    """Add gold scores to every eval file of a run (each rewritten atomically); files already scored are skipped.

    The gold scorer gets the decoded text (instruction, input, answer) and builds its own input
    format and tokenization. Returns how many files were scored now.
    """
    from rmopt.utils import atomic_write_json

    done = 0
    for path in eval_files(run_dir):
        record = json.loads(path.read_text())
        rows = record["rows"]
        if not overwrite and "gold" in record and all("gold" in r for r in rows):
            continue
        kwargs = {"batch_size": batch_size} if batch_size else {}
        scores = gold.score([r["instruction"] for r in rows], [r["input"] for r in rows], [r["answer"] for r in rows], **kwargs)
        for row, value in zip(rows, scores, strict=True):
            row["gold"] = float(value)
        record["gold"], record["gold_se"] = prompt_mean_and_se(rows, "gold")
        record["gold_scorer"] = getattr(gold, "name", None) or type(gold).__name__
        atomic_write_json(path, record)
        done += 1
    return done


# ---------------------------------------------------------------------------------------- results


def prompt_mean_and_se(rows: list[dict], key: str) -> tuple[float, float]:
    """Mean of ``key`` over an eval file's rows and its standard error over prompts (of each prompt's mean)."""
    from rmopt.stats import group_means, mean_and_se

    _, per_prompt = group_means([r[key] for r in rows], [r.get("prompt", i) for i, r in enumerate(rows)])
    return mean_and_se(per_prompt)


def per_prompt_values(run_dir: str | os.PathLike) -> dict[str, list[list[float]]] | None:
    """Each eval file's per-prompt means, [points, P] each: ``gold_score`` (NaN until scored),
    ``proxy_score`` and ``kl``; None for eval files without prompt indices (older runs)."""
    from rmopt.stats import group_means

    out = {"gold_score": [], "proxy_score": [], "kl": []}
    for path in eval_files(run_dir):
        r = json.loads(path.read_text())
        rows = r["rows"]
        if not rows or "prompt" not in rows[0] or "kl_per_prompt" not in r:
            return None
        prompts = [row["prompt"] for row in rows]
        out["proxy_score"].append(group_means([row["proxy"] for row in rows], prompts)[1].tolist())
        scored = all("gold" in row for row in rows)
        gold = group_means([row["gold"] for row in rows], prompts)[1].tolist() if scored else [float("nan")] * len(set(prompts))
        out["gold_score"].append(gold)
        out["kl"].append(r["kl_per_prompt"])
    return out


def run_points(run_dir: str | os.PathLike) -> list[dict]:
    """One point per eval file: step, KL, proxy (combined, each member, spread) and gold if scored, each
    mean with its standard error over prompts."""
    nan = float("nan")
    points = []
    for path in eval_files(run_dir):
        r = json.loads(path.read_text())
        points.append(
            {
                "step": r["step"],
                "kl": r["kl"],
                "kl_se": r.get("kl_se", nan),
                "kl_k1": r.get("kl_k1", nan),
                "proxy_score": r["proxy"],
                "proxy_score_se": r.get("proxy_se", nan),
                "proxy_members": r["proxy_members"],
                "proxy_member_std": r["proxy_member_std"],
                "gold_score": r.get("gold", nan),
                "gold_score_se": r.get("gold_se", nan),
            }
        )
    return sorted(points, key=lambda p: p["step"])


def _curve(points: list[dict]) -> dict[str, list]:
    keys = ("step", "kl", "kl_se", "proxy_score", "proxy_score_se", "gold_score", "gold_score_se")
    return {k: [p.get(k, float("nan")) for p in points] for k in keys}


def write_results(run_dir: str | os.PathLike) -> dict:
    """``results.json`` (the table of points) and ``ppo.png`` (gold and proxy against KL and steps) of one run."""
    from rmopt.report import plot_curves
    from rmopt.utils import atomic_write_json

    run_dir = Path(run_dir)
    points = run_points(run_dir)
    results = {"run": str(run_dir), "points": points}
    atomic_write_json(run_dir / "results.json", results)
    plot_curves({run_dir.name: _curve(points)}, ["kl", "step"], run_dir / "ppo.png", title=f"PPO: {run_dir.name}")
    return results


def write_overlay(run_dirs: list[Path], output_dir: Path) -> Path:
    """All runs on one figure (``ppo_overlay.png``) and one table (``ppo_results.json``) in ``output_dir``."""
    from rmopt.report import plot_curves
    from rmopt.utils import atomic_write_json

    runs = {str(d): run_points(d) for d in run_dirs}
    names = _short_names(run_dirs)
    atomic_write_json(output_dir / "ppo_results.json", {"runs": [{"run": k, "points": v} for k, v in runs.items()]})
    curves = {name: _curve(points) for name, points in zip(names, runs.values(), strict=True)}
    return plot_curves(curves, ["kl", "step"], output_dir / "ppo_overlay.png", title="PPO")


def _short_names(run_dirs: list[Path]) -> list[str]:
    """Folder names, or paths relative to the common parent when names repeat."""
    names = [d.name for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(d.resolve()) for d in run_dirs]))
    return [str(d.resolve().relative_to(common)) for d in run_dirs]


def curve_text(points: list[dict]) -> str:
    """The points as a table, each mean +- its standard error over prompts."""
    nan = float("nan")
    lines = [f"  {'step':>6} {'kl':>15} {'proxy':>17} {'gold':>17}"]
    for p in points:
        lines.append(
            f"  {p['step']:>6} {p['kl']:7.3f} +-{p.get('kl_se', nan):5.3f} {p['proxy_score']:8.4f} +-{p.get('proxy_score_se', nan):6.4f} "
            f"{p['gold_score']:8.4f} +-{p.get('gold_score_se', nan):6.4f}"
        )
    return "\n".join(lines)


def find_runs(patterns) -> list[Path]:
    """Run folders (holding eval/) from paths or glob patterns, in sorted order."""
    if isinstance(patterns, str):
        patterns = [patterns]
    runs: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern))) or [str(pattern)]
        for m in matches:
            if (Path(m) / "eval").is_dir():
                runs.append(Path(m))
            elif not glob.has_magic(str(pattern)):
                raise RmoptError(f"run_dir {m!r} is not a PPO run folder (no eval/ inside)")
    if not runs:
        raise RmoptError(f"run_dir {list(patterns)} matches no PPO run folder (a folder with eval/ inside)")
    return runs


def gold(cfg: DictConfig) -> dict:
    """Gold-score one or several PPO runs; per-run results + figure, and an overlay for several runs."""
    prepare(cfg)
    patterns = [p for p in [cfg.get("run_dir"), *(cfg.get("run_dirs") or [])] if p]
    if not patterns:
        raise RmoptError("run_dir is not set; expected a PPO output folder, e.g. run_dir=runs/ppo-single or 'run_dir=runs/ppo/*'")
    runs = find_runs(patterns)
    scorer = load_gold(cfg)  # loaded once for every run
    for run in runs:
        n = score_gold(run, scorer, cfg.get("gold_batch_size"), overwrite=bool(cfg.get("overwrite", False)))
        results = write_results(run)
        if n == 0:
            print(f"already done: {run} (every eval file has gold scores; overwrite=true to redo)")
        print(f"{run}: gold-scored {n} new eval file(s)\n{curve_text(results['points'])}")
    out = {"runs": [str(r) for r in runs]}
    if len(runs) > 1:
        output_dir = Path(cfg.output_dir) if cfg.get("output_dir") else Path(os.path.commonpath([str(r) for r in runs]))
        out["overlay"] = str(write_overlay(runs, output_dir))
        print(f"overlay of {len(runs)} runs: {out['overlay']}")
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="ppo")
def _main(cfg: DictConfig) -> float | None:
    metrics = run_job(train, cfg)
    return None if metrics is None else metrics.get("proxy_score", float("nan"))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="ppo_gold")
def _gold_main(cfg: DictConfig) -> None:
    run_job(gold, cfg)


main = cli_errors(_main)
gold_main = cli_errors(_gold_main)

if __name__ == "__main__":
    main()
