"""Best-of-n peak memory at full size, one process per side (run with the project's python).

    write: P prompts x N answers in the published tlc4418/gold_labelled_gens layout: a folder with
           README.md and validation/split_<k>.json, 10 shards, each a JSON array of rows
           {instruction, answers[N], gold_scores[N]} (no input column, as published)
    ours:  rmopt-bon's path: rmopt.data.gold_gens.load_gold_gens on that folder (datasets reads the JSON
           shards into its Arrow cache on first use, memory-mapped after) + float32 proxy scores +
           bon_curves; run cold (empty cache: the first load of the set) and warm
    lists: the JSON shards read into Python lists (answers, proxy and gold scores), one copy per seed,
           as the released code held them
Prints {"peak_rss_mib", "seconds", ...} as JSON (peak RSS: VmHWM, this process alone).
"""

import json
import os
import resource
import sys
import time

import numpy as np

a = json.loads(sys.argv[1])
P, N, path, mode = a["P"], a["N"], a["path"], a["mode"]
start = time.perf_counter()
NS = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 6144, 8192, 12500) if n <= N]
WORDS = [f"w{j}" for j in range(500)]
SHARDS = 10


def shard_files():
    folder = os.path.join(path, "validation")
    return sorted((os.path.join(folder, f) for f in os.listdir(folder)), key=lambda f: int(f.rsplit("_", 1)[1][:-5]))


out = {}
if mode == "write":
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(path, "validation"), exist_ok=True)
    with open(os.path.join(path, "README.md"), "w") as f:
        f.write("# gold-labelled generations (synthetic, the published layout)\n")
    per_shard = -(-P // SHARDS)
    for k, s in enumerate(range(0, P, per_shard), start=1):
        rows = []
        for p in range(s, min(P, s + per_shard)):
            w = rng.integers(0, len(WORDS), size=(N, 6))
            rows.append({
                "instruction": f"instruction {p}",
                "answers": [" ".join(WORDS[j] for j in w[i]) for i in range(N)],
                "gold_scores": rng.standard_normal(N, dtype=np.float32).astype(float).tolist(),
            })
        with open(os.path.join(path, "validation", f"split_{k}.json"), "w") as f:
            json.dump(rows, f)
        del rows
    out["bytes"] = sum(os.path.getsize(f) for f in shard_files())
elif mode == "ours":
    os.environ["HF_DATASETS_CACHE"] = a["cache"]  # before datasets is imported
    from rmopt.bon_pipeline import bon_curves
    from rmopt.data.gold_gens import load_gold_gens

    gens = load_gold_gens(path, N)
    assert (gens.P, gens.N) == (P, N), (gens.P, gens.N)
    out["load_seconds"] = time.perf_counter() - start
    proxy = np.random.default_rng(1).standard_normal((a["seeds"], P, N), dtype=np.float32)
    bon_curves(proxy, [f"rm{j}" for j in range(a["seeds"])], gens.gold, NS, ensembles=False)
elif mode == "lists":
    from rmopt.bon import unbiased_best_of_n

    rng = np.random.default_rng(1)
    held = []
    for _seed in range(a["seeds"]):
        answers, gold = [], []
        for file in shard_files():
            with open(file) as f:
                for row in json.load(f):
                    answers.append(row["answers"])
                    gold.append(row["gold_scores"])
        proxy = [list(map(float, rng.standard_normal(N, dtype=np.float32))) for _ in range(P)]
        held.append((answers, proxy, gold))
    for _answers, proxy, gold in held:
        unbiased_best_of_n(np.array(proxy), np.array(gold), NS)
else:
    raise SystemExit(f"unknown mode {mode!r}")

def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM (Linux), which starts afresh at exec; ru_maxrss would also count
    the high-water mark the forking parent (the bench, with torch loaded) had before exec."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


peak = peak_rss_mib()
print(json.dumps({"peak_rss_mib": peak, "seconds": time.perf_counter() - start, **out}))
