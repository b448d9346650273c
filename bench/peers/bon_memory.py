"""Best-of-n peak memory at full size, one process per side (run with the project's python).

    write: a gold-labelled generations Parquet file of P prompts x N answers (the published schema)
    ours:  rmopt-bon's path: load_gold_gens (memory-mapped Arrow) + float32 proxy scores + bon_curves
    lists: answers, proxy and gold scores held as Python lists, one copy per seed, as the released code did
Prints {"peak_rss_mib", "seconds"} as JSON.
"""

import json
import resource
import sys
import time

import numpy as np

a = json.loads(sys.argv[1])
P, N, path, mode = a["P"], a["N"], a["path"], a["mode"]
start = time.perf_counter()
NS = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 6144, 8192, 12500) if n <= N]
WORDS = [f"w{j}" for j in range(500)]

if mode == "write":
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    writer = None
    for s in range(0, P, 10):
        rows = min(10, P - s)
        w = rng.integers(0, len(WORDS), size=(rows, N, 6))
        answers = [[" ".join(WORDS[k] for k in w[r, j]) for j in range(N)] for r in range(rows)]
        table = pa.table({
            "instruction": [f"instruction {s + r}" for r in range(rows)],
            "input": [""] * rows,
            "answers": answers,
            "gold_scores": [list(map(float, rng.standard_normal(N, dtype=np.float32))) for _ in range(rows)],
        })
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
elif mode == "ours":
    from rmopt.bon_pipeline import bon_curves, load_gold_gens

    gens = load_gold_gens(path, N)
    proxy = np.random.default_rng(1).standard_normal((a["seeds"], P, N), dtype=np.float32)
    bon_curves(proxy, [f"rm{j}" for j in range(a["seeds"])], gens.gold, NS, ensembles=False)
elif mode == "lists":
    import pyarrow.parquet as pq

    from rmopt.bon import unbiased_best_of_n

    rng = np.random.default_rng(1)
    held = []
    for _seed in range(a["seeds"]):
        table = pq.read_table(path)
        answers = table.column("answers").to_pylist()
        gold = table.column("gold_scores").to_pylist()
        proxy = [list(map(float, rng.standard_normal(N, dtype=np.float32))) for _ in range(P)]
        held.append((answers, proxy, gold))
        del table
    for _answers, proxy, gold in held:
        unbiased_best_of_n(np.array(proxy), np.array(gold), NS)
else:
    raise SystemExit(f"unknown mode {mode!r}")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_rss_mib": peak, "seconds": time.perf_counter() - start}))
