"""The demo's summary (`summary.json`), headline figure and report (`report.md`), from the stages' outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rmopt.summary import bon_summary, ppo_summary
from rmopt.utils import atomic_write_json, atomic_write_text

ENSEMBLES = ("mean", "wco", "uwo")
COLORS = {"mean": "tab:blue", "wco": "tab:red", "uwo": "tab:green"}


def _kind(name: str) -> str:
    """'seed3' -> 'single'; 'uwo_0.5' -> 'uwo'."""
    return "single" if name.startswith("seed") else name.split("_")[0]


def ppo_runs(out: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((out / "ppo").iterdir()) if (p / "results.json").exists()}


def headline_figure(out: Path, path: Path) -> Path:
    """Gold score against KL for best-of-n and PPO: single RMs in grey, ensembles in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for path_json in sorted((out / "bon").glob("*/bon_sampled_results.json")):
        name = path_json.parent.name
        rows = json.loads(path_json.read_text())
        _line(axes[0], name, [r["kl_bon"] for r in rows], [r["gold_score"] for r in rows])
    axes[0].set(title="Best-of-n", xlabel="KL_bon = log n - (n-1)/n  (nats)", ylabel="gold score")
    for name, run in ppo_runs(out).items():
        points = json.loads((run / "results.json").read_text())["points"]
        _line(axes[1], name, [p["kl"] for p in points], [p["gold_score"] for p in points])
    axes[1].set(title="PPO", xlabel="KL(policy || initial policy)  (nats)", ylabel="gold score")
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        keep = {label: h for h, label in zip(handles, labels, strict=True)}
        ax.legend(keep.values(), keep.keys(), fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Gold score as the proxy is optimized harder: single reward models vs ensembles")
    from rmopt.report import save_png

    return save_png(fig, path)


def _line(ax, name, xs, ys):
    kind = _kind(name)
    if kind == "single":
        ax.plot(xs, ys, color="0.6", lw=1, marker=".", label="single RM")
    else:
        ax.plot(xs, ys, color=COLORS.get(kind, "k"), lw=2, marker="o", ms=3, label=name)


def _group(summary: dict[str, dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for name, s in summary.items():
        groups.setdefault(_kind(name), []).append(s)
    return groups


def verdict(summary: dict[str, dict], x: str) -> list[str]:
    """Plain sentences about what the numbers show, written from the numbers alone."""
    groups = _group(summary)
    lines = []
    singles = groups.get("single", [])
    if singles:
        drop = float(np.mean([s["drop"] for s in singles]))
        rose = float(np.mean([s["gold_max"] - s["gold_start"] for s in singles]))
        proxy_up = all(s.get("proxy_final", 0) > s.get("proxy_start", 0) for s in singles)
        lines.append(
            f"Single reward models ({len(singles)}): gold rose by {rose:+.3f} on average to its peak, then fell by "
            f"{drop:.3f} by the end; proxy score {'rose for every one' if proxy_up else 'did not always rise'}."
            + (" That is overoptimization." if drop > 0.02 and proxy_up else " Little or no overoptimization here.")
        )
        for kind in ENSEMBLES:
            for s in groups.get(kind, []):
                rel = "less than" if s["drop"] < drop - 0.01 else ("about as much as" if s["drop"] <= drop + 0.01 else "more than")
                lines.append(
                    f"{kind.upper()} ensemble: peak gold {s['gold_max']:.3f} at {x} = {_fmt(s[f'{x}_at_max'])}, final "
                    f"{s['gold_final']:.3f} at {x} = {_fmt(s[f'{x}_final'])}; it fell {s['drop']:.3f}, {rel} a single RM "
                    f"on average (final gold {s['gold_final'] - float(np.mean([t['gold_final'] for t in singles])):+.3f} vs "
                    f"singles, which ended at {x} = {_fmt(float(np.mean([t[f'{x}_final'] for t in singles])))} on average)."
                )
    return lines


def _fmt(v) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def _table(summary: dict[str, dict], x: str) -> str:
    head = f"| reward | gold start | gold max | {x} at max | gold final | final {x} | drop |\n|---|---|---|---|---|---|---|\n"
    return head + "\n".join(
        f"| {name} | {s['gold_start']:.3f} | {s['gold_max']:.3f} | {_fmt(s[f'{x}_at_max'])} | {s['gold_final']:.3f} | "
        f"{_fmt(s[f'{x}_final'])} | {s['drop']:.3f} |"
        for name, s in summary.items()
    )


def write_report(out: Path, settings: dict) -> dict:
    out = Path(out)
    summary = {"settings": settings, "bon": bon_summary(out / "bon"), "ppo": ppo_summary(ppo_runs(out))}
    atomic_write_json(out / "summary.json", summary)
    headline_figure(out, out / "overoptimization.png")
    s = settings
    text = f"""# Overoptimization in the toy world

Made by `experiments/demo.py` (its last invocation took {s['minutes']} minutes; stages already done are
skipped): policy and reward-model base `{s['model']}`
(SFT {s['sft_steps']} steps), {s['pairs']} preference prompts labelled by the gold reward with label noise
{s['label_noise']}, {len(s['members'])} reward models (seeds {s['members']}, {'each on its own bootstrap resample' if s['bootstrap'] else 'sharing their data'},
{s['rm_steps']} steps), members standardised by their held-out statistics before combining, UWO weight {s['uwo_weight']}.
Best-of-n over {s['bon_prompts']} prompts x {s['big_n']} answers; PPO {s['ppo_steps']} steps (learning rate
{s.get('ppo_lr')}) with KL coefficient {s['kl_coef']}, evaluated at the sampling temperature 1 on 128 held-out prompts.

![gold score against KL](overoptimization.png)

## Best-of-n

{chr(10).join('- ' + line for line in verdict(summary['bon'], 'n'))}

{_table(summary['bon'], 'n')}

Per-member and ensemble curves against n and KL: [bon/bon.png](bon/bon.png).

## PPO

{chr(10).join('- ' + line for line in verdict(summary['ppo'], 'kl'))}

{_table(summary['ppo'], 'kl')}

Runs end at different KL: read the figure at equal KL, since a run that moves the policy less far loses less gold
whatever its reward. A conservative objective is expected to move it less far: that is part of how it protects gold.

All runs against KL and steps: [ppo/ppo_overlay.png](ppo/ppo_overlay.png).

## Which knobs matter

- **Reward-model quality.** Proxies that rank held-out pairs better keep gold rising to larger n before it falls:
  label noise (`--label-noise`, 0.25 is the paper's setting) and fewer pairs make the proxies weaker and the fall
  earlier.
- **Member diversity.** Members that share data, initialisation and noisy labels make correlated mistakes, and an
  ensemble of them helps little. Training each member on its own bootstrap resample (`ensemble.bootstrap=true`,
  the demo's default; `--no-bootstrap` gives the paper's setup) makes their errors less alike.
- **Scale of members' scores.** Members' scores have different scales; WCO and UWO compare them directly, so
  the demo standardises each member by its held-out mean and std first (`normalise=true`).
- **KL penalty.** PPO with `kl_coef=0` lets the policy drift furthest; `--kl-coef 0.01` (the paper's other setting)
  holds it closer to the SFT policy.

`summary.json` holds these numbers; `experiments/` has a study per question (ensemble size, label noise, KL
penalty, UWO weight, scaling-law fits).
"""
    atomic_write_text(out / "report.md", text)
    return summary
