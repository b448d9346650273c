"""Study: how strongly should UWO penalise disagreement?

Question: UWO scores an answer mean - lambda * Var over the (standardised) members. How do the
best-of-n gold curve and the gold score at the largest n change with lambda (0 = the plain mean;
the paper's default for best-of-n is 0.5)? Uses the demo's stored proxy scores (no rescoring);
a few seconds.

Run:  python experiments/uwo_weight.py --demo runs/demo-quick [--weights 0 0.1 0.25 0.5 1 2 4]
Writes uwo_weight.json and uwo_weight.png (gold vs n per lambda; final and peak gold vs lambda).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import (  # noqa: E402
    gold_stats,
    load_bon_store,
    mean_curve,
    objective_curve,
    parse_args,
    print_table,
    save_figure,
    stats_row,
    study_main,
    write_json,
)

STUDY = "uwo_weight"
WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def uwo_weight_curves(scores, gold, ns, weights=WEIGHTS) -> dict:
    """{weight: UWO curve}, plus the references "wco" and "single" (members averaged) under string keys."""
    out = {float(w): objective_curve(scores, gold, ns, "uwo", float(w)) for w in weights}
    out["wco"] = objective_curve(scores, gold, ns, "wco")
    out["single"] = mean_curve([objective_curve(s, gold, ns, "single") for s in scores])
    return out


def summarise(curves: dict) -> list[dict]:
    rows = []
    for key, curve in curves.items():
        s = gold_stats(curve)
        rows.append(stats_row(s, "gold_final", "gold_max", "n_at_max", "drop", "proxy_final", "n_final",
                              weight=key if isinstance(key, str) else float(key)))
    return rows


def figure(curves: dict, path: Path, title: str) -> Path:
    weights = [k for k in curves if not isinstance(k, str)]
    rows = [r for r in summarise(curves) if not isinstance(r["weight"], str)]
    refs = {r["weight"]: r for r in summarise(curves) if isinstance(r["weight"], str)}
    ref_style = {"linestyle": "--", "color": "gray"}
    panels = [
        {"title": "UWO: gold vs n", "xlabel": "n", "ylabel": "gold score", "log_x": True,
         "lines": [{"x": curves[w]["n"], "y": curves[w]["gold_score"], "se": curves[w].get("gold_score_se"), "label": f"lambda={w:g}"}
                   for w in weights]
         + [{"x": curves["wco"]["n"], "y": curves["wco"]["gold_score"], "label": "wco", "style": {"linestyle": ":", "color": "k"}},
            {"x": curves["single"]["n"], "y": curves["single"]["gold_score"], "label": "single (avg)", "style": ref_style}]},
        {"title": "gold vs lambda (symlog x)", "xlabel": "lambda", "ylabel": "gold score", "symlog_x": 0.1,
         "lines": [{"x": [r["weight"] for r in rows], "y": [r["gold_final"] for r in rows], "label": f"at n={rows[0]['n_final']}"},
                   {"x": [r["weight"] for r in rows], "y": [r["gold_max"] for r in rows], "label": "peak"},
                   {"x": [rows[0]["weight"], rows[-1]["weight"]], "y": [refs["wco"]["gold_final"]] * 2, "label": "wco at largest n",
                    "style": {"linestyle": ":", "color": "k", "marker": ""}}]},
    ]
    return save_figure(panels, path, title, ncols=2)


def main() -> None:
    def extra(parser):
        parser.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS), help="UWO lambdas")

    args = parse_args(__doc__, STUDY, extra)
    if any(not w >= 0 for w in args.weights):
        raise SystemExit(f"error: --weights {args.weights}; expected numbers >= 0")
    store = load_bon_store(args.demo / "bon")
    print(f"UWO over {len(store.names)} standardised members {store.names}, {store.gold.shape[0]} prompts x N={store.gold.shape[1]}")
    curves = uwo_weight_curves(store.scores, store.gold, store.ns, args.weights)
    rows = summarise(curves)
    png = figure(curves, args.out / f"{STUDY}.png", f"UWO weight sweep (BoN, {store.gold.shape[0]}x{store.gold.shape[1]})")
    js = write_json(args.out / f"{STUDY}.json", {
        "demo": str(args.demo), "members": store.names, "summary": rows,
        "curves": {(k if isinstance(k, str) else f"{k:g}"): c for k, c in curves.items()},
    })
    print_table(rows, ["weight", "gold_final", "gold_max", "n_at_max", "drop", "proxy_final"],
                f"UWO gold at n={rows[0]['n_final']} and at the peak, by lambda (wco, single: references):")
    print(f"wrote {js}\n      {png}")


if __name__ == "__main__":
    study_main(main)
