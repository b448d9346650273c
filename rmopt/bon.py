"""Best-of-n: the unbiased estimator of proxy and gold score against n, and its KL.

Pure NumPy (no I/O), so it can be tested and benchmarked on its own; the stage that reads answers,
scores them and writes the curves is :mod:`rmopt.bon_pipeline` (``rmopt-bon``).
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import numpy as np

# n values of the paper's best-of-n curves; the largest fits the 12,600 answers per prompt.
DEFAULT_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 6144, 8192, 12500)


def kl_bon(n):
    """KL(best-of-n || base policy) as plotted: log n - (n - 1) / n (an upper bound, Beirami et al. 2024)."""
    n_array = np.asarray(n, dtype=np.float64)
    if np.any(~(n_array >= 1)):
        raise ValueError(f"kl_bon needs n >= 1, got {n!r}")
    kl = np.log(n_array) - (n_array - 1) / n_array
    return float(kl) if kl.ndim == 0 else kl


def _check_n(n, N: int) -> int:
    """n as a Python int, refusing non-integers and n outside 1..N."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        if isinstance(n, numbers.Real) and float(n).is_integer():
            n = int(n)
        else:
            raise ValueError(f"n must be an integer, got {n!r}")
    n = int(n)
    if not 1 <= n <= N:
        raise ValueError(f"n={n} is outside 1..N={N}")
    return n


def _check_ns(ns, N: int) -> list[int]:
    ns = [ns] if np.ndim(ns) == 0 else list(np.asarray(ns).ravel())
    if not ns:
        raise ValueError("ns is empty; give at least one n")
    return [_check_n(n, N) for n in ns]


def _bon_weight_matrix(N: int, ns: list[int]) -> np.ndarray:
    """Row j: the weight of each of the N sorted answers (ascending) in E[best of ns[j]].

    Uses the recurrence w_N = n / N, w_i = w_{i+1} * (i - n + 1) / i, run downwards as a reversed
    cumulative product: every factor is <= 1, so nothing overflows (1 / C(N, n) would underflow for
    mid-size n at N = 12,600), small weights underflow harmlessly to 0, and rounding grows only like
    N * eps. Factors with i < n are 0, which zeroes the weights of answers that can never be best.
    """
    i = np.arange(1, N, dtype=np.float64)  # 1..N-1, the i in the factor linking w_i to w_{i+1}
    n = np.asarray(ns, dtype=np.float64)[:, None]
    factors = np.maximum(i - n + 1, 0.0) / i  # [len(ns), N - 1]
    tail_products = np.cumprod(factors[:, ::-1], axis=1)[:, ::-1]  # prod_{j=i}^{N-1} factor_j
    top = n / N  # w_N = C(N-1, n-1) / C(N, n)
    return np.concatenate([top * tail_products, top], axis=1)


def bon_weights(N: int, n: int) -> np.ndarray:
    """Weights [N] of the ascending-sorted answers in E[best of n of N]: C(i-1, n-1) / C(N, n) for i >= n.

    The i-th smallest answer is the best of a random n-subset exactly when the subset holds it and
    n - 1 of the i - 1 answers below it; the weights sum to 1 (hockey-stick identity).
    """
    if isinstance(N, bool) or not isinstance(N, numbers.Integral) or N < 1:
        raise ValueError(f"N must be an integer >= 1, got {N!r}")
    return _bon_weight_matrix(int(N), [_check_n(n, int(N))])[0]


def _check_scores(proxy, gold) -> tuple[np.ndarray, np.ndarray]:
    proxy = np.asarray(proxy)
    gold = np.asarray(gold)
    if proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold shapes differ: proxy {proxy.shape} vs gold {gold.shape}")
    if proxy.ndim != 2 or proxy.shape[0] == 0 or proxy.shape[1] == 0:
        raise ValueError(f"proxy and gold must be [prompts, answers] with both > 0, got {proxy.shape}")
    for name, scores in (("proxy", proxy), ("gold", gold)):
        if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
            raise ValueError(f"{name} scores must be real numbers, got dtype {scores.dtype}")
    if np.issubdtype(proxy.dtype, np.floating):
        nan_count = int(np.isnan(proxy).sum())
        if nan_count:
            prompt, answer = np.argwhere(np.isnan(proxy))[0]
            raise ValueError(
                f"proxy has {nan_count} NaN score(s) (first at prompt {prompt}, answer {answer}); "
                "NaN has no place in the ordering"
            )
    return proxy, gold


def _stable_row_order(scores: np.ndarray) -> np.ndarray:
    """``np.argsort(scores, axis=1, kind="stable")``, computed faster.

    float32 (and float16) scores: each score's bits become an order-preserving unsigned key (sign bit
    flipped for positives, all bits for negatives; -0.0 made +0.0 first so it ties with 0.0), the
    answer's index goes in the low 32 bits, and one plain sort of these unique 64-bit keys gives the
    stable order (ties ordered by index) at about a third of the cost of a stable argsort.
    Other dtypes: a plain argsort, then a stable one for the rows that hold ties.
    """
    if scores.dtype in (np.float32, np.float16) and scores.shape[1] < 2**32:
        bits = (scores.astype(np.float32) + np.float32(0.0)).view(np.uint32)
        bits = bits ^ ((np.uint32(0) - (bits >> np.uint32(31))) | np.uint32(0x80000000))
        keys = bits.astype(np.uint64)
        keys <<= np.uint64(32)
        keys |= np.arange(scores.shape[1], dtype=np.uint64)
        keys.sort(axis=1)
        return (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)
    order = np.argsort(scores, axis=1)
    ranked = np.take_along_axis(scores, order, axis=1)
    tied = np.flatnonzero((ranked[:, 1:] == ranked[:, :-1]).any(axis=1))
    if tied.size:
        order[tied] = np.argsort(scores[tied], axis=1, kind="stable")
    return order


def unbiased_best_of_n(proxy, gold, ns=DEFAULT_NS) -> dict[str, np.ndarray]:
    """Expected proxy and gold score of best-of-n, for each n, averaged over prompts.

    proxy, gold: [P, N] scores of the same N answers per prompt; proxy picks, gold is measured. For an
    ensemble, pass the combined objective as proxy: the gold curve then follows *that* ordering.
    Each row is sorted ascending by proxy with a stable sort, so among tied proxy scores the answer
    with the highest index ranks highest (is the one picked). The estimate is exact for sampling n
    of the N answers without replacement: E[x at n] = sum_i C(i-1, n-1) / C(N, n) x_(i).

    Returns {"n", "proxy_score", "gold_score"}, each an array of len(ns) (scores in float64).
    """
    proxy, gold = _check_scores(proxy, gold)
    N = proxy.shape[1]
    ns = _check_ns(ns, N)
    order = _stable_row_order(proxy)
    # The weights do not depend on the prompt, so average each rank over prompts first.
    proxy_by_rank = np.take_along_axis(proxy, order, axis=1).mean(axis=0, dtype=np.float64)
    gold_by_rank = np.take_along_axis(gold, order, axis=1).mean(axis=0, dtype=np.float64)
    weights = _bon_weight_matrix(N, ns)
    return {
        "n": np.asarray(ns, dtype=np.int64),
        "proxy_score": weights @ proxy_by_rank,
        "gold_score": weights @ gold_by_rank,
    }


def best_of_n_per_prompt(proxy, gold, ns=DEFAULT_NS, chunk: int = 256) -> dict[str, np.ndarray]:
    """The best-of-n estimator of each prompt on its own: proxy and gold score [len(ns), P] for each n.

    The same estimate as :func:`unbiased_best_of_n` before the average over prompts (its mean over
    prompts equals that function's result up to rounding); their spread over prompts gives the
    standard error of each curve point. Prompts are processed ``chunk`` at a time (bounded memory).
    """
    proxy, gold = _check_scores(proxy, gold)
    P, N = proxy.shape
    ns = _check_ns(ns, N)
    weights = _bon_weight_matrix(N, ns)  # [K, N]
    out_proxy, out_gold = np.empty((len(ns), P)), np.empty((len(ns), P))
    for start in range(0, P, chunk):
        rows = slice(start, min(start + chunk, P))
        order = _stable_row_order(proxy[rows])
        out_proxy[:, rows] = weights @ np.take_along_axis(proxy[rows], order, axis=1).astype(np.float64).T
        out_gold[:, rows] = weights @ np.take_along_axis(gold[rows], order, axis=1).astype(np.float64).T
    return {"n": np.asarray(ns, dtype=np.int64), "proxy_score": out_proxy, "gold_score": out_gold}


def _exact_integers(rows: list[list[float]]) -> tuple[list[list[int]], int]:
    """Floats as integers over one shared power-of-two denominator, so sums of them stay exact."""
    ratios = [[float(v).as_integer_ratio() for v in row] for row in rows]
    denominator = max(den for row in ratios for _, den in row)  # all powers of two: the largest is the lcm
    return [[num * (denominator // den) for num, den in row] for row in ratios], denominator


def exact_best_of_n_reference(proxy, gold, ns=DEFAULT_NS) -> dict[str, np.ndarray]:
    """Slow reference with exact big-integer binomials, as the released research code computed them.

    Pure Python, sharing no code with `unbiased_best_of_n`: Python's stable `sorted` orders each
    prompt's answers, `math.comb` gives C(i-1, n-1) and C(N, n) exactly, and the scores become exact
    integers over a common power-of-two denominator, so the whole estimate is an exact rational,
    rounded to float once. For tests and benchmarks only: the binomials cost seconds per n at N = 12,600.
    """
    proxy_rows = np.asarray(proxy, dtype=np.float64).tolist()
    gold_rows = np.asarray(gold, dtype=np.float64).tolist()
    N = len(proxy_rows[0])
    proxy_ints, proxy_denominator = _exact_integers(proxy_rows)
    gold_ints, gold_denominator = _exact_integers(gold_rows)
    # Sum over prompts of the score at each ascending proxy rank (rank r = 0 is the lowest).
    proxy_by_rank, gold_by_rank = [0] * N, [0] * N
    for proxy_row, proxy_int_row, gold_int_row in zip(proxy_rows, proxy_ints, gold_ints, strict=True):
        ranked = sorted(range(N), key=proxy_row.__getitem__)
        for rank, answer in enumerate(ranked):
            proxy_by_rank[rank] += proxy_int_row[answer]
            gold_by_rank[rank] += gold_int_row[answer]
    prompts = len(proxy_rows)
    ns = [int(n) for n in np.atleast_1d(ns)]
    proxy_scores, gold_scores = [], []
    for n in ns:
        if not 1 <= n <= N:
            raise ValueError(f"n={n} is outside 1..N={N}")
        # C(i-1, n-1) subsets of size n have the i-th smallest answer as their best (0 for i < n).
        best_counts = [math.comb(i - 1, n - 1) for i in range(1, N + 1)]
        subsets = math.comb(N, n)
        proxy_total = sum(c * s for c, s in zip(best_counts, proxy_by_rank, strict=True))
        gold_total = sum(c * s for c, s in zip(best_counts, gold_by_rank, strict=True))
        proxy_scores.append(float(Fraction(proxy_total, subsets * prompts * proxy_denominator)))
        gold_scores.append(float(Fraction(gold_total, subsets * prompts * gold_denominator)))
    return {
        "n": np.asarray(ns, dtype=np.int64),
        "proxy_score": np.asarray(proxy_scores, dtype=np.float64),
        "gold_score": np.asarray(gold_scores, dtype=np.float64),
    }
