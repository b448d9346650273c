"""Study: how many reward models does an ensemble need?

Question: with the ensemble made of the first k of the demo's 5 members (k = 1..5), how do the
best-of-n gold score at the largest n and the peak gold score of mean, WCO and UWO change with k?
(The paper: 4-5 members are enough.) Uses the stored proxy scores of the demo's best-of-n stage, so
nothing is retrained or rescored; a few seconds.

Run:  python experiments/ensemble_size.py --demo runs/demo-quick [--out runs/demo-quick/studies/ensemble_size]
Writes ensemble_size.json (curves and summary per objective and k) and ensemble_size.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import (  # noqa: E402
    OBJECTIVES,
    demo_settings,
    gold_stats,
    load_bon_store,
    objective_curve,
    parse_args,
    print_table,
    save_figure,
    stats_row,
    study_main,
    write_json,
)

STUDY = "ensemble_size"


def ensemble_size_curves(scores, gold, ns, uwo_weight: float = 0.5, objectives=OBJECTIVES) -> dict:
    """{objective: {k: curve}} for ensembles of the first k members, k = 1..len(scores)."""
    out = {}
    for objective in objectives:
        weight = uwo_weight if objective == "uwo" else None
        out[objective] = {
            k: objective_curve(scores[:k], gold, ns, objective, weight) for k in range(1, len(scores) + 1)
        }
    return out


def summarise(curves: dict) -> list[dict]:
    rows = []
    for objective, by_k in curves.items():
        for k, curve in by_k.items():
            s = gold_stats(curve)
            rows.append(stats_row(s, "gold_final", "gold_max", "n_at_max", "drop", "n_final", objective=objective, k=k))
    return rows


def figure(curves: dict, path: Path, title: str) -> Path:
    panels = []
    for objective, by_k in curves.items():
        panels.append({
            "title": f"{objective}: gold vs n", "xlabel": "n", "ylabel": "gold score", "log_x": True,
            "lines": [{"x": c["n"], "y": c["gold_score"], "se": c.get("gold_score_se"), "label": f"k={k}"} for k, c in by_k.items()],
        })
    rows = summarise(curves)
    for key, label in (("gold_final", "gold at the largest n"), ("gold_max", "peak gold")):
        panels.append({
            "title": f"{label} vs k", "xlabel": "members k", "ylabel": "gold score",
            "lines": [{"x": [r["k"] for r in rows if r["objective"] == o], "y": [r[key] for r in rows if r["objective"] == o],
                       "label": o} for o in curves],
        })
    return save_figure(panels, path, title)


def main() -> None:
    args = parse_args(__doc__, STUDY)
    store = load_bon_store(args.demo / "bon")
    weight = float(demo_settings(args.demo).get("uwo_weight", 0.5))
    print(f"{len(store.names)} members {store.names}, {store.gold.shape[0]} prompts x N={store.gold.shape[1]}, uwo weight {weight}")
    curves = ensemble_size_curves(store.scores, store.gold, store.ns, weight)
    rows = summarise(curves)
    png = figure(curves, args.out / f"{STUDY}.png",
                 f"ensemble size: first k of {store.names} (BoN, {store.gold.shape[0]}x{store.gold.shape[1]})")
    js = write_json(args.out / f"{STUDY}.json", {
        "demo": str(args.demo), "members": store.names, "uwo_weight": weight, "summary": rows,
        "curves": {o: {str(k): c for k, c in by_k.items()} for o, by_k in curves.items()},
    })
    print_table(rows, ["objective", "k", "gold_final", "gold_max", "n_at_max", "drop"],
                f"gold at n={rows[0]['n_final']} (final) and at the peak, ensembles of the first k members:")
    print(f"wrote {js}\n      {png}")


if __name__ == "__main__":
    study_main(main)
