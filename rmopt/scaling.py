"""Gao et al. (2022) functional forms of gold reward against KL, and their least-squares fits.

With d = sqrt(KL) (KL of the optimised policy from the initial one) and the gold *gain* over the
initial policy (gold - gold at KL 0):

    best-of-n:  gain(d) = d (alpha - beta d)
    RL (PPO):   gain(d) = d (alpha - beta log d)

Both are linear in (alpha, beta), so the fits are ordinary linear least squares without intercept:
columns [d, -d^2] for best-of-n and [d, -d log d] for RL (d log d -> 0 as d -> 0, so a point at
KL 0 contributes 0 = 0 and never produces log 0). Pure NumPy; no I/O.
"""

from __future__ import annotations

import numpy as np

from rmopt.errors import RmoptError


def _d_log_d(d: np.ndarray) -> np.ndarray:
    """d * log d with the limit 0 at d = 0."""
    out = np.zeros_like(d, dtype=np.float64)
    positive = d > 0
    out[positive] = d[positive] * np.log(d[positive])
    return out


def _as_d(d) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    if np.any(~np.isfinite(d)) or np.any(d < 0):
        raise RmoptError(f"d = sqrt(KL) must be finite and >= 0; got {d.ravel()[:5].tolist()}...")
    return d


def bon_form(d, alpha: float, beta: float):
    """Best-of-n gold gain d (alpha - beta d); d = sqrt(KL). Scalar in, float out; array in, array out."""
    d = _as_d(d)
    out = d * (alpha - beta * d)
    return float(out) if out.ndim == 0 else out


def rl_form(d, alpha: float, beta: float):
    """RL gold gain d (alpha - beta log d) = alpha d - beta d log d, which is 0 at d = 0."""
    d = _as_d(d)
    out = alpha * d - beta * _d_log_d(np.atleast_1d(d)).reshape(d.shape)
    return float(out) if out.ndim == 0 else out


def kl_to_d(kl) -> np.ndarray:
    """d = sqrt(KL); KL estimates a hair below 0 (sampling noise of an estimator) count as 0."""
    kl = np.asarray(kl, dtype=np.float64)
    if np.any(~np.isfinite(kl)):
        raise RmoptError(f"KL values must be finite; got {kl.tolist()}")
    return np.sqrt(np.clip(kl, 0.0, None))


def _fit(kl, gain, second_column, form: str) -> tuple[float, float]:
    kl = np.asarray(kl, dtype=np.float64).ravel()
    gain = np.asarray(gain, dtype=np.float64).ravel()
    if kl.shape != gain.shape:
        raise RmoptError(f"{form} fit: {kl.size} KL values but {gain.size} gains; expected one gain per KL")
    if np.any(~np.isfinite(gain)):
        raise RmoptError(f"{form} fit: gains must be finite; got {gain.tolist()}")
    d = kl_to_d(kl)
    X = np.stack([d, -second_column(d)], axis=1)
    if np.linalg.matrix_rank(X) < 2:
        raise RmoptError(
            f"{form} fit needs at least 2 points with distinct KL > 0 (and, for the RL form, d != 1 alone); "
            f"got KL {kl.tolist()}"
        )
    (alpha, beta), *_ = np.linalg.lstsq(X, gain, rcond=None)
    return float(alpha), float(beta)


def fit_bon(kl, gain) -> tuple[float, float]:
    """Least-squares (alpha, beta) of gain = d (alpha - beta d), d = sqrt(KL)."""
    return _fit(kl, gain, lambda d: d * d, "best-of-n")


def fit_rl(kl, gain) -> tuple[float, float]:
    """Least-squares (alpha, beta) of gain = d (alpha - beta log d), d = sqrt(KL)."""
    return _fit(kl, gain, _d_log_d, "RL")


def bon_peak(alpha: float, beta: float) -> tuple[float, float] | None:
    """(KL, gain) at the maximum of the best-of-n form: d* = alpha / (2 beta); None if beta <= 0 (no peak)."""
    if beta <= 0:
        return None
    d = alpha / (2 * beta)
    return (d * d, alpha * alpha / (4 * beta)) if d > 0 else (0.0, 0.0)


def rl_peak(alpha: float, beta: float) -> tuple[float, float] | None:
    """(KL, gain) at the maximum of the RL form: d* = exp(alpha / beta - 1), gain* = beta d*; None if beta <= 0."""
    if beta <= 0:
        return None
    d = float(np.exp(alpha / beta - 1))
    return d * d, beta * d


def r_squared(gain, fitted) -> float:
    """Coefficient of determination of a fit (1 - SS_res / SS_tot); nan when the gains are all equal."""
    gain = np.asarray(gain, dtype=np.float64)
    ss_tot = float(((gain - gain.mean()) ** 2).sum())
    ss_res = float(((gain - np.asarray(fitted, dtype=np.float64)) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
