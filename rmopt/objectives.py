"""Ensemble objectives: turn k reward-model scores per sample into one score.

Every function takes a [k, ...] array with the ensemble members on axis 0 and returns the combined
score of shape [...]. NumPy arrays (or anything ``np.asarray`` accepts) give NumPy arrays; torch
tensors give torch tensors on the same device, so the same code serves best-of-n and PPO.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from rmopt.errors import RmoptError

OBJECTIVES = ("mean", "wco", "uwo", "single")


def _is_tensor(x) -> bool:
    """True for a torch tensor; never imports torch (if it was not imported, x cannot be a tensor)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _as_members(x):
    """Validate and return x as a float array or tensor with at least one member on axis 0."""
    if _is_tensor(x):
        if not (x.is_floating_point() or x.is_complex()):
            x = x.to(sys.modules["torch"].get_default_dtype())
    else:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"ensemble scores must be numeric, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("ensemble scores need the members on axis 0; got a 0-d scalar")
    if x.shape[0] == 0:
        raise ValueError(f"ensemble scores have no members: shape {tuple(x.shape)}")
    return x


def _same_kind(result, like):
    """NumPy reductions over a 1-D input return a NumPy scalar; keep the documented ndarray type."""
    return result if _is_tensor(like) else np.asarray(result)


def mean(x):
    """Mean over members: the plain ensemble average."""
    x = _as_members(x)
    return _same_kind(x.mean(0), x)


def wco(x):
    """Worst-case optimisation: the minimum over members, so any one sceptical member vetoes a sample."""
    x = _as_members(x)
    result = x.amin(0) if _is_tensor(x) else np.min(x, axis=0)
    return _same_kind(result, x)


def population_variance(x):
    """Variance across members, dividing by k (not k - 1); see `uwo` for why this one choice."""
    x = _as_members(x)
    centred = x - x.mean(0)
    return _same_kind((centred * centred).mean(0), x)


def _check_uwo_weight(weight) -> float:
    if weight is None:
        raise ValueError("uwo needs a variance weight (lambda); got None")
    value = float(weight)
    if math.isnan(value) or value < 0 or math.isinf(value):
        raise ValueError(f"uwo weight must be a finite number >= 0, got {weight!r}")
    return value


def uwo(x, weight: float):
    """Uncertainty-weighted optimisation: mean - weight * Var across members.

    Var is the *population* variance, (1/k) sum_i (R_i - mean)^2. The released research code used it
    for best-of-n but the unbiased (k - 1) variance for PPO; this project uses the population
    variance everywhere (best-of-n and PPO), so one weight means the same thing in both.
    """
    weight = _check_uwo_weight(weight)
    x = _as_members(x)
    return _same_kind(x.mean(0) - weight * population_variance(x), x)


def single(x):
    """The score of a one-member 'ensemble'; refuses k != 1 so a bigger ensemble is never silently cut."""
    x = _as_members(x)
    if x.shape[0] != 1:
        raise ValueError(f"objective 'single' needs exactly 1 member, got k={x.shape[0]}")
    return _same_kind(x[0], x)


def combine(name: str, x, weight: float | None = None):
    """Apply the objective called `name` to x. `weight` is the uwo variance weight, ignored by the others."""
    if name == "mean":
        return mean(x)
    if name == "wco":
        return wco(x)
    if name == "uwo":
        return uwo(x, weight)
    if name == "single":
        return single(x)
    raise ValueError(f"unknown ensemble objective {name!r}; valid objectives: {', '.join(OBJECTIVES)}")


def normalise(x, means, stds):
    """Standardise each member's scores by its own mean and std (each shape [k]) before combining.

    Members trained with different seeds can sit on different scales; without this, min and variance
    would mostly measure the offsets between members rather than their disagreement about a sample.
    """
    x = _as_members(x)
    k = x.shape[0]
    if _is_tensor(x):
        torch = sys.modules["torch"]
        means = torch.as_tensor(means, dtype=x.dtype, device=x.device)
        stds = torch.as_tensor(stds, dtype=x.dtype, device=x.device)
    else:
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        means = np.asarray(means, dtype=dtype)
        stds = np.asarray(stds, dtype=dtype)
    if tuple(means.shape) != (k,) or tuple(stds.shape) != (k,):
        raise ValueError(
            f"means and stds must have shape ({k},) for k={k} members, "
            f"got {tuple(means.shape)} and {tuple(stds.shape)}"
        )
    if not all(float(s) > 0 for s in stds.tolist()):  # written so that NaN fails too
        raise ValueError(f"every member's std must be > 0, got {stds.tolist()}")
    member_axis_shape = (k,) + (1,) * (x.ndim - 1)
    return (x - means.reshape(member_axis_shape)) / stds.reshape(member_axis_shape)


class Objective:
    """A named objective with its weight, built from ``conf/objective/*.yaml``; call it on [k, ...] scores."""

    def __init__(self, name: str, weight: float | None = None):
        # Built from the user's config (objective=..., objective.weight=...): its mistakes are user errors.
        if name not in OBJECTIVES:
            raise RmoptError(f"unknown objective {name!r}; expected one of {list(OBJECTIVES)}")
        if name == "uwo":
            try:
                weight = _check_uwo_weight(weight)
            except (TypeError, ValueError) as e:
                raise RmoptError(f"objective.weight: {e}") from None
        self.name, self.weight = name, weight

    def __call__(self, x):
        return combine(self.name, x, self.weight)

    def __repr__(self) -> str:
        return f"Objective({self.name!r}, weight={self.weight})" if self.name == "uwo" else f"Objective({self.name!r})"
