"""Gao et al. forms and their fits: hand-computed values, exact recovery, recovery under noise."""

import math

import numpy as np
import pytest

from rmopt.errors import RmoptError
from rmopt.scaling import bon_form, bon_peak, fit_bon, fit_rl, kl_to_d, r_squared, rl_form, rl_peak


def test_forms_by_hand():
    # d = 2: 2 * (1.5 - 0.25 * 2) = 2.0
    assert bon_form(2.0, 1.5, 0.25) == pytest.approx(2.0)
    # d = e: e * (1 - 0.5 * 1) = e / 2
    assert rl_form(math.e, 1.0, 0.5) == pytest.approx(math.e / 2)
    # d = 1: log 1 = 0, so the RL form is alpha
    assert rl_form(1.0, 0.7, 3.0) == pytest.approx(0.7)
    # d = 0: both forms are 0, no log(0) warning or nan
    with np.errstate(all="raise"):
        assert bon_form(0.0, 1.0, 1.0) == 0.0
        assert rl_form(0.0, 1.0, 1.0) == 0.0
        np.testing.assert_allclose(rl_form(np.array([0.0, 1.0, 4.0]), 1.0, 1.0), [0.0, 1.0, 4 - 4 * math.log(4)])
    np.testing.assert_allclose(bon_form(np.array([0.0, 1.0, 3.0]), 2.0, 0.5), [0.0, 1.5, 1.5])


def test_peaks_by_hand():
    # bon: d (2 - 0.5 d) peaks at d = 2 (KL 4) with gain 2
    assert bon_peak(2.0, 0.5) == pytest.approx((4.0, 2.0))
    # rl: d (1 - 0.5 log d) peaks at d = exp(1) (KL e^2) with gain 0.5 e
    assert rl_peak(1.0, 0.5) == pytest.approx((math.e**2, 0.5 * math.e))
    assert bon_peak(1.0, 0.0) is None and rl_peak(1.0, -1.0) is None


def test_kl_to_d_clips_tiny_negative_kl():
    np.testing.assert_allclose(kl_to_d([-1e-6, 0.0, 4.0]), [0.0, 0.0, 2.0])


@pytest.mark.parametrize("fit, form", [(fit_bon, bon_form), (fit_rl, rl_form)])
def test_fit_recovers_exact_coefficients(fit, form):
    kl = np.array([0.0, 0.3, 0.9, 1.5, 2.8, 4.1, 5.2, 6.5])
    for alpha, beta in [(0.8, 0.2), (-0.1, 0.05), (1.3, -0.4)]:
        gain = form(kl_to_d(kl), alpha, beta)
        a, b = fit(kl, gain)
        assert a == pytest.approx(alpha, abs=1e-10) and b == pytest.approx(beta, abs=1e-10)


@pytest.mark.parametrize("fit, form", [(fit_bon, bon_form), (fit_rl, rl_form)])
def test_fit_recovers_coefficients_under_noise(fit, form):
    rng = np.random.default_rng(0)
    kl = np.repeat(np.linspace(0.0, 9.0, 40), 5)
    alpha, beta = 0.6, 0.15
    clean = form(kl_to_d(kl), alpha, beta)
    gain = clean + rng.normal(0.0, 0.01, size=kl.size)
    a, b = fit(kl, gain)
    assert a == pytest.approx(alpha, abs=0.02) and b == pytest.approx(beta, abs=0.02)
    assert r_squared(gain, form(kl_to_d(kl), a, b)) > 0.95


def test_fit_is_least_squares():
    # Perturbing the fitted coefficients never lowers the squared error.
    kl = np.array([0.5, 1.0, 2.0, 3.0, 5.0])
    gain = np.array([0.2, 0.35, 0.3, 0.1, -0.2])
    a, b = fit_bon(kl, gain)
    sse = ((bon_form(kl_to_d(kl), a, b) - gain) ** 2).sum()
    for da, db in [(1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)]:
        assert ((bon_form(kl_to_d(kl), a + da, b + db) - gain) ** 2).sum() > sse


def test_fit_refuses_degenerate_input():
    with pytest.raises(RmoptError, match="at least 2 points"):
        fit_bon([0.0, 1.0], [0.0, 0.5])  # one point with KL > 0
    with pytest.raises(RmoptError, match="one gain per KL"):
        fit_rl([0.0, 1.0, 2.0], [0.0, 0.5])
    with pytest.raises(RmoptError, match="finite"):
        fit_bon([0.0, 1.0, float("nan")], [0.0, 0.5, 0.2])
