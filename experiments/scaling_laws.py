"""Study: do the demo's curves follow the Gao et al. (2022) scaling forms?

Question: with d = sqrt(KL), Gao et al. fit best-of-n gold gain d (alpha - beta d) and RL gold gain
d (alpha - beta log d). This fits the best-of-n form to every best-of-n curve of a demo (gold gain
over n = 1 against KL_bon(n)) and the RL form to every PPO run (gold gain over step 0 against the
measured KL), reports alpha, beta, the fit's R^2 and where the fitted curve peaks, and draws the
fitted curves over the data. A larger beta / a lower peak KL means earlier overoptimization.

Run:  python experiments/scaling_laws.py --demo runs/demo-quick [--out runs/demo-quick/studies/scaling_laws]
Writes scaling_laws.json and scaling_laws.png (seconds). Any folder with the demo's layout works
(bon/<name>/bon_sampled_results.json, ppo/<name>/results.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.common import parse_args, print_table, save_figure, study_main, write_json  # noqa: E402
from rmopt.errors import RmoptError  # noqa: E402
from rmopt.scaling import bon_form, bon_peak, fit_bon, fit_rl, kl_to_d, r_squared, rl_form, rl_peak  # noqa: E402

STUDY = "scaling_laws"
FORMS = {"bon": (fit_bon, bon_form, bon_peak), "rl": (fit_rl, rl_form, rl_peak)}


def fit_curve(kl, gold, form: str) -> dict:
    """Fit one curve: gain = gold - gold at its smallest KL (the start). Returns the fit and its points."""
    kl, gold = np.asarray(kl, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    keep = np.isfinite(gold)
    kl, gold = kl[keep], gold[keep]
    if kl.size == 0:
        raise RmoptError("a curve has no gold-scored point")
    start = int(np.argmin(kl))
    gain = gold - gold[start]
    fit, evaluate, peak = FORMS[form]
    alpha, beta = fit(kl, gain)
    top = peak(alpha, beta)
    return {
        "form": form, "alpha": alpha, "beta": beta,
        "r2": r_squared(gain, evaluate(kl_to_d(kl), alpha, beta)),
        "peak_kl": None if top is None else top[0], "peak_gain": None if top is None else top[1],
        "gold_start": float(gold[start]), "kl": kl.tolist(), "gain": gain.tolist(),
    }


def bon_curves(bon_dir: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(Path(bon_dir).glob("*/bon_sampled_results.json")):
        rows = json.loads(path.read_text())
        out[path.parent.name] = {"kl": [r["kl_bon"] for r in rows], "gold": [r["gold_score"] for r in rows]}
    return out


def ppo_curves(ppo_dir: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(Path(ppo_dir).glob("*/results.json")):
        points = json.loads(path.read_text())["points"]
        out[path.parent.name] = {"kl": [p["kl"] for p in points],
                                 "gold": [float("nan") if p.get("gold_score") is None else p["gold_score"] for p in points]}
    return out


def fit_all(demo: Path) -> dict[str, dict[str, dict]]:
    """{"bon": {name: fit}, "rl": {name: fit}}; a curve that cannot be fitted gets {"error": ...}."""
    out = {}
    for form, curves in (("bon", bon_curves(demo / "bon")), ("rl", ppo_curves(demo / "ppo"))):
        out[form] = {}
        for name, c in curves.items():
            try:
                out[form][name] = fit_curve(c["kl"], c["gold"], form)
            except RmoptError as e:
                out[form][name] = {"form": form, "error": str(e)}
    if not out["bon"] and not out["rl"]:
        raise RmoptError(f"{str(demo)!r} has no bon/*/bon_sampled_results.json and no ppo/*/results.json")
    return out


def figure(fits: dict, path: Path, title: str) -> Path:
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    panels = []
    for form, label in (("bon", "best-of-n: d (alpha - beta d)"), ("rl", "PPO: d (alpha - beta log d)")):
        good = {n: f for n, f in fits[form].items() if "error" not in f}
        if not good:
            continue
        lines = []
        for j, (name, f) in enumerate(good.items()):
            color = colors[j % len(colors)]
            d = kl_to_d(f["kl"])
            grid = np.linspace(0.0, d.max() * 1.05, 100)
            lines.append({"x": d.tolist(), "y": f["gain"], "label": None,
                          "style": {"linestyle": "", "marker": "o", "color": color, "markersize": 4}})
            evaluate = FORMS[form][1]
            lines.append({"x": grid.tolist(), "y": evaluate(grid, f["alpha"], f["beta"]).tolist(),
                          "label": f"{name}: a={f['alpha']:.3f} b={f['beta']:.3f}",
                          "style": {"marker": "", "color": color, "linestyle": "--" if name.startswith("seed") else "-"}})
        panels.append({"title": label, "xlabel": "d = sqrt(KL)", "ylabel": "gold gain over start", "lines": lines})
    return save_figure(panels, path, title, ncols=len(panels))


def main() -> None:
    args = parse_args(__doc__, STUDY)
    fits = fit_all(args.demo)
    png = figure(fits, args.out / f"{STUDY}.png", f"Gao et al. forms fitted to {args.demo.name}")
    js = write_json(args.out / f"{STUDY}.json", {"demo": str(args.demo), "fits": fits})
    rows = [{"form": form, "curve": name, **{k: f.get(k) for k in ("alpha", "beta", "r2", "peak_kl", "peak_gain")},
             "points": len(f.get("kl", [])), "error": f.get("error", "")}
            for form, by_name in fits.items() for name, f in by_name.items()]
    print_table([{k: ("-" if v is None else v) for k, v in r.items()} for r in rows],
                ["form", "curve", "alpha", "beta", "r2", "peak_kl", "peak_gain", "points", "error"],
                "fitted Gao et al. forms (gain = gold - gold at KL 0; peak of the fitted curve):")
    print(f"wrote {js}\n      {png}")


if __name__ == "__main__":
    study_main(main)
