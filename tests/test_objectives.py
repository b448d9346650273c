"""Ensemble objectives against hand-computed numbers, in NumPy and torch."""

import math
import re

import numpy as np
import pytest
import torch

from rmopt.objectives import (
    OBJECTIVES,
    combine,
    mean,
    normalise,
    population_variance,
    single,
    uwo,
    wco,
)

# Two members (rows) scoring two samples (columns).
MEMBER_SCORES = [[1.0, 2.0], [3.0, 6.0]]
# Per sample: mean [2, 4]; population variance [((1-2)^2 + (3-2)^2)/2, ((2-4)^2 + (6-4)^2)/2] = [1, 4].
EXPECTED = {
    "mean": [2.0, 4.0],
    "wco": [1.0, 2.0],
    "uwo": [2.0 - 0.5 * 1.0, 4.0 - 0.5 * 4.0],
}


@pytest.mark.parametrize("name", ["mean", "wco", "uwo"])
def test_hand_computed_numpy(name):
    result = combine(name, np.array(MEMBER_SCORES), weight=0.5)
    assert isinstance(result, np.ndarray)
    np.testing.assert_allclose(result, EXPECTED[name], rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["mean", "wco", "uwo"])
def test_hand_computed_torch(name):
    result = combine(name, torch.tensor(MEMBER_SCORES, dtype=torch.float64), weight=0.5)
    assert isinstance(result, torch.Tensor)
    assert result.dtype == torch.float64
    np.testing.assert_allclose(result.numpy(), EXPECTED[name], rtol=0, atol=1e-15)


def test_population_variance_divides_by_k_not_k_minus_1():
    np.testing.assert_allclose(population_variance(np.array(MEMBER_SCORES)), [1.0, 4.0])
    # Three members 0, 3, 6: squared deviations 9 + 0 + 9 = 18, over k = 3 (not 2) gives 6.
    np.testing.assert_allclose(population_variance(np.array([0.0, 3.0, 6.0])), 6.0)
    np.testing.assert_allclose(uwo(np.array([0.0, 3.0, 6.0]), 0.1), 3.0 - 0.1 * 6.0)


def test_plain_lists_are_accepted():
    np.testing.assert_allclose(mean(MEMBER_SCORES), [2.0, 4.0])


@pytest.mark.parametrize("name", OBJECTIVES)
def test_numpy_and_torch_agree_on_higher_rank_inputs(name):
    k = 1 if name == "single" else 5
    scores = np.random.default_rng(0).standard_normal((k, 3, 4))
    from_numpy = combine(name, scores, weight=0.3)
    from_torch = combine(name, torch.from_numpy(scores), weight=0.3)
    assert from_numpy.shape == (3, 4)
    assert tuple(from_torch.shape) == (3, 4)
    np.testing.assert_allclose(from_torch.numpy(), from_numpy, rtol=1e-12, atol=1e-12)


def test_one_dimensional_input_gives_a_zero_d_array_or_tensor():
    result = wco(np.array([4.0, -1.0, 2.0]))
    assert isinstance(result, np.ndarray) and result.shape == () and result == -1.0
    result = mean(torch.tensor([4.0, -1.0, 1.0]))
    assert isinstance(result, torch.Tensor) and result.shape == () and result.item() == pytest.approx(4 / 3)


def test_integer_tensors_are_combined_as_floats():
    result = uwo(torch.tensor([[1, 2], [3, 6]]), 0.5)
    assert result.is_floating_point()
    np.testing.assert_allclose(result.numpy(), EXPECTED["uwo"])


def test_torch_gradients_flow_through_uwo():
    scores = torch.tensor(MEMBER_SCORES, requires_grad=True)
    uwo(scores, 0.5).sum().backward()
    # d/dR_i [mean - w Var] = 1/k - w * 2 (R_i - mean) / k, with k = 2 and w = 0.5.
    expected = [[0.5 - 0.5 * (1 - 2), 0.5 - 0.5 * (2 - 4)], [0.5 - 0.5 * (3 - 2), 0.5 - 0.5 * (6 - 4)]]
    np.testing.assert_allclose(scores.grad.numpy(), expected)


def test_uwo_with_zero_weight_is_the_mean():
    scores = np.random.default_rng(1).standard_normal((4, 6))
    np.testing.assert_allclose(uwo(scores, 0.0), mean(scores))


def test_a_one_member_ensemble_is_the_same_under_every_objective():
    scores = np.array([[0.25, -1.5, 3.0]])
    for name in OBJECTIVES:
        np.testing.assert_allclose(combine(name, scores, weight=0.5), scores[0])


def test_single_takes_the_only_member_and_refuses_more():
    np.testing.assert_array_equal(single(np.array([[7.0, 8.0]])), [7.0, 8.0])
    assert torch.equal(single(torch.tensor([[7.0, 8.0]])), torch.tensor([7.0, 8.0]))
    with pytest.raises(ValueError, match="exactly 1 member, got k=2"):
        single(np.array(MEMBER_SCORES))


def test_unknown_objective_names_the_bad_name_and_the_valid_ones():
    with pytest.raises(ValueError) as error:
        combine("median", np.array(MEMBER_SCORES))
    message = str(error.value)
    assert "'median'" in message
    for name in OBJECTIVES:
        assert name in message


@pytest.mark.parametrize("bad_weight", [-0.1, math.nan, math.inf])
def test_bad_uwo_weight_names_the_value(bad_weight):
    with pytest.raises(ValueError, match=re.escape(repr(bad_weight))):
        uwo(np.array(MEMBER_SCORES), bad_weight)
    with pytest.raises(ValueError, match=re.escape(repr(bad_weight))):
        combine("uwo", torch.tensor(MEMBER_SCORES), weight=bad_weight)


def test_uwo_without_a_weight_is_refused():
    with pytest.raises(ValueError, match="weight"):
        combine("uwo", np.array(MEMBER_SCORES))


def test_other_objectives_ignore_the_weight():
    np.testing.assert_allclose(combine("wco", np.array(MEMBER_SCORES), weight=3.0), EXPECTED["wco"])


def test_empty_or_scalar_inputs_are_refused():
    with pytest.raises(ValueError, match="no members"):
        mean(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="axis 0"):
        wco(np.float64(1.0))


def test_normalise_standardises_each_member_by_its_own_stats():
    scores = np.array([[1.0, 3.0, 5.0], [10.0, 20.0, 30.0]])
    normalised = normalise(scores, means=[3.0, 20.0], stds=[2.0, 10.0])
    np.testing.assert_allclose(normalised, [[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]])
    # After normalising, the two members agree, so their variance is 0 and uwo equals the mean.
    np.testing.assert_allclose(uwo(normalised, 0.5), [-1.0, 0.0, 1.0])


def test_normalise_torch_matches_numpy_and_keeps_dtype():
    scores = np.random.default_rng(2).standard_normal((3, 2, 5)).astype(np.float32)
    means, stds = [0.1, -0.2, 0.3], [1.0, 2.0, 0.5]
    from_torch = normalise(torch.from_numpy(scores), torch.tensor(means), stds)
    from_numpy = normalise(scores, np.array(means), np.array(stds))
    assert from_torch.dtype == torch.float32 and from_numpy.dtype == np.float32
    np.testing.assert_allclose(from_torch.numpy(), from_numpy, rtol=1e-6)
    np.testing.assert_allclose(from_numpy[1], (scores[1] + 0.2) / 2.0, rtol=1e-6)


def test_normalise_refuses_wrong_shapes_and_non_positive_stds():
    scores = np.array(MEMBER_SCORES)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        normalise(scores, means=[0.0, 0.0, 0.0], stds=[1.0, 1.0])
    with pytest.raises(ValueError, match="std must be > 0"):
        normalise(scores, means=[0.0, 0.0], stds=[1.0, 0.0])
    with pytest.raises(ValueError, match="std must be > 0"):
        normalise(torch.tensor(MEMBER_SCORES), means=[0.0, 0.0], stds=[math.nan, 1.0])
