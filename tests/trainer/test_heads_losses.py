"""The uncertainty-aware preference loss, the dimension loss and the dimension labels, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.heads import DIMENSION_RANGE, DIMENSIONS, LOG_SIGMA_INIT, LOG_SIGMA_RANGE, bounded_log_sigma
from trainer.heads import dimension_labels as labels_of
from trainer.losses import (
    LOG_SIGMA_CLAMP,
    DimensionPairs,
    davidson_nll,
    davidson_probabilities,
    dimension_nll,
    gaussian_davidson_nll,
    joint_loss,
    probit_factor,
    uncertain_davidson_nll,
)

# σ_c² = σ_r² = 12/π → π/8 · (σ_c² + σ_r²) = π/8 · 24/π = 3 → κ = 1/sqrt(1 + 3) = 1/2.
LOG_SIGMA_HALF = 0.5 * math.log(12 / math.pi)  # ≈ 0.670, inside the range


def test_the_constants_agree_with_the_annotate_tab_and_each_other():
    from app.handlers.annotate import DIMENSION_RANGE as SHOWN_RANGE
    from app.handlers.annotate import DIMENSIONS as SHOWN

    shown_names, shown_range = tuple(SHOWN), tuple(float(x) for x in SHOWN_RANGE)
    assert shown_names == DIMENSIONS and shown_range == DIMENSION_RANGE
    assert LOG_SIGMA_CLAMP == LOG_SIGMA_RANGE


def test_probit_factor_hand_values():
    ls = torch.tensor([LOG_SIGMA_HALF])
    torch.testing.assert_close(probit_factor(ls, ls), torch.tensor([0.5]))
    # log σ = 0 for both: σ² = 1 each → κ = 1/sqrt(1 + π/4) = 0.74839
    torch.testing.assert_close(probit_factor(torch.zeros(1), torch.zeros(1)), torch.tensor([0.748394]))


def test_log_sigma_is_clamped_so_sigma_cannot_explode_or_collapse():
    # Above the range: log σ = 10 → 1; σ² = e² = 7.389 each; π/8 · 14.778 = 5.803 → κ = 1/sqrt(6.803) = 0.383388
    torch.testing.assert_close(probit_factor(torch.tensor([10.0]), torch.tensor([10.0])), torch.tensor([0.383388]))
    # Below: log σ = −50 → −4; σ² = e^−8 = 3.35e-4 each; κ = 1/sqrt(1 + π/8 · 6.71e-4) = 1 − 1.32e-4
    torch.testing.assert_close(probit_factor(torch.tensor([-50.0]), torch.tensor([-50.0])), torch.tensor([0.999868]))
    # The quadrature clamps the same way: log σ = 10 scores exactly like log σ = 1.
    delta, no_tie = torch.tensor([1.0]), torch.tensor([False])
    top = torch.tensor([1.0])
    torch.testing.assert_close(
        gaussian_davidson_nll(delta, top * 10, top * 10, no_tie, 1.0),
        gaussian_davidson_nll(delta, top, top, no_tie, 1.0),
    )
    # The head's soft clamp: raw 0 is the middle of [−4, 1]; ±∞ reach the bounds; its init is LOG_SIGMA_INIT.
    bounded = bounded_log_sigma(torch.tensor([0.0, -1e4, 1e4]))
    torch.testing.assert_close(bounded, torch.tensor([-1.5, -4.0, 1.0]))
    assert LOG_SIGMA_INIT == -1.0


def test_uncertain_davidson_hand_example():
    # Δμ = 4 ln 2, κ = 1/2 → Davidson margin 2 ln 2: e^{Δ/2} = 2, e^{−Δ/2} = 1/2, ν = 1 → Z = 3.5,
    # P(win) = 2/3.5 = 4/7, P(tie) = 1/3.5 = 2/7 → NLL log(7/4) for a decisive vote, log(7/2) for a tie.
    delta = torch.full((2,), 4 * math.log(2.0))
    ls = torch.full((2,), LOG_SIGMA_HALF)
    nll = uncertain_davidson_nll(delta, ls, ls, torch.tensor([False, True]), nu=1.0)
    torch.testing.assert_close(nll, torch.tensor([math.log(7 / 4), math.log(7 / 2)]))


@pytest.mark.parametrize("loss", [uncertain_davidson_nll, gaussian_davidson_nll])
def test_with_small_sigma_it_is_the_plain_davidson_loss(loss):
    delta = torch.linspace(-4, 4, 9)
    is_tie = torch.arange(9) % 3 == 0
    floor = torch.full((9,), LOG_SIGMA_RANGE[0])
    plain = davidson_nll(delta, is_tie, 1.0)
    torch.testing.assert_close(loss(delta, floor, floor, is_tie, 1.0), plain, atol=1e-3, rtol=0)


@pytest.mark.parametrize("loss", [uncertain_davidson_nll, gaussian_davidson_nll])
def test_uncertainty_softens_a_wrong_vote_and_costs_a_right_one(loss):
    # A confident wrong margin (Δμ = −3) costs less with large σ; a right one (Δμ = +3) costs more: σ is learnable.
    low, high = torch.full((1,), -4.0), torch.full((1,), 1.0)
    no_tie = torch.tensor([False])
    wrong, right = torch.tensor([-3.0]), torch.tensor([3.0])
    assert loss(wrong, high, high, no_tie, 1.0) < loss(wrong, low, low, no_tie, 1.0)
    assert loss(right, high, high, no_tie, 1.0) > loss(right, low, low, no_tie, 1.0)


def test_gauss_hermite_hand_values():
    # ν = 0, Δμ = 0: Δ is symmetric around 0 and σ(Δ) + σ(−Δ) = 1, so E[σ(Δ)] = 1/2 exactly for every σ: NLL = log 2.
    ls = torch.tensor([-4.0, -1.0, 0.0, 1.0])
    nll = gaussian_davidson_nll(torch.zeros(4), ls, ls, torch.zeros(4, dtype=torch.bool), nu=0.0)
    torch.testing.assert_close(nll, torch.full((4,), math.log(2.0)))
    # ν = 1: at every node P(win) + P(loss) + P(tie) = 1 and the weights sum to 1, so the expectations sum to 1 too
    # (P(loss | Δμ) = P(win | −Δμ)).
    delta = torch.tensor([-2.0, 0.0, 0.7, 3.0])
    no, yes = torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)
    total = sum(
        torch.exp(-gaussian_davidson_nll(d, ls, ls, t, 1.0)) for d, t in ((delta, no), (-delta, no), (delta, yes))
    )
    torch.testing.assert_close(total, torch.ones(4))


def test_gauss_hermite_matches_a_dense_integral():
    # At the largest spread allowed (σ = e on both sides: s = 3.84) the 32 nodes agree with a trapezoid rule on
    # 200,001 points of the N(0, 1) density to 1e-4.
    grid = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    density = torch.exp(-(grid**2) / 2) / math.sqrt(2 * math.pi)
    s = math.sqrt(2) * math.e
    for delta_mu, tie in ((-3.0, False), (0.5, False), (4.0, False), (0.0, True), (2.0, True)):
        p_win, _, p_tie = davidson_probabilities(delta_mu + s * grid, nu=1.0)
        expected = -torch.log(torch.trapezoid((p_tie if tie else p_win) * density, grid))
        got = gaussian_davidson_nll(torch.tensor([delta_mu]), torch.ones(1), torch.ones(1), torch.tensor([tie]), 1.0)
        assert got.item() == pytest.approx(expected.item(), abs=1e-4)


def test_a_tie_gets_less_likely_with_sigma_but_the_probit_version_says_more():
    # P(tie | Δ) peaks at Δ = 0, so spreading Δ lowers its expectation: the tie's NLL rises with σ. The probit
    # factor shrinks the margin instead and so raises P(tie): it rewards σ on every tie (why it is not the default).
    zero, tie = torch.zeros(1), torch.tensor([True])
    low, high = torch.full((1,), -4.0), torch.full((1,), 1.0)
    assert gaussian_davidson_nll(zero, high, high, tie, 1.0) > gaussian_davidson_nll(zero, low, low, tie, 1.0)
    near = torch.tensor([1.0])
    assert uncertain_davidson_nll(near, high, high, tie, 1.0) < uncertain_davidson_nll(near, low, low, tie, 1.0)


def test_dimension_nll_is_the_mean_over_dimensions_of_masked_means():
    two_ln2 = 2 * math.log(2.0)
    chosen = torch.tensor([[two_ln2, 0.0], [two_ln2, 5.0]])  # (B=2, D=2)
    rejected = torch.zeros(2, 2)
    labels = torch.tensor([[1, 0], [-1, 1]])
    mask = torch.tensor([[True, True], [True, False]])  # cell (1, 1) not rated: its Δ = 5 must not count
    # (0,0): Δ = 2 ln 2, chosen better → −log 4/7 = log(7/4)
    # (1,0): Δ = 2 ln 2 but the rejected edit is better → −log P(loss) = −log(1/7) = log 7
    # (0,1): Δ = 0, the same → −log P(tie) = −log(1/3) = log 3
    # dimension 0: (log(7/4) + log 7) / 2; dimension 1: log 3; the loss is their mean (not the mean of three cells).
    expected = ((math.log(7 / 4) + math.log(7.0)) / 2 + math.log(3.0)) / 2
    loss = dimension_nll(DimensionPairs(chosen, rejected, labels, mask), nu=1.0)
    assert loss.item() == pytest.approx(expected)


def test_dimension_nll_without_ratings_is_zero_on_the_graph():
    chosen = torch.randn(3, 2, requires_grad=True)
    pairs = DimensionPairs(chosen, torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2).bool())
    loss = dimension_nll(pairs, nu=1.0)
    assert loss.item() == 0.0 and loss.requires_grad


def test_joint_loss_adds_the_weighted_dimension_loss_and_uses_sigma():
    delta = 4 * math.log(2.0)
    ls = torch.full((1,), LOG_SIGMA_HALF)
    dims = DimensionPairs(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1))
    out = joint_loss(
        torch.tensor([delta]),
        torch.zeros(1),
        torch.tensor([False]),
        torch.tensor(2.0),
        0.5,
        tie_nu=1.0,
        log_sigma=(ls, ls),
        uncertainty_loss="probit",
        dimensions=dims,
        dimension_weight=0.25,
    )
    # pref: log(7/4) (the hand example above); lm: 0.5 · 2 = 1; dims: a tie at Δ = 0, 0.25 · log 3
    assert out.pref.item() == pytest.approx(math.log(7 / 4))
    assert out.dims.item() == pytest.approx(math.log(3.0))
    assert out.total.item() == pytest.approx(math.log(7 / 4) + 1.0 + 0.25 * math.log(3.0))
    plain = joint_loss(torch.tensor([delta]), torch.zeros(1), torch.tensor([False]), None, 0.0, tie_nu=1.0)
    # Without σ the margin is 4 ln 2 itself: e^{Δ/2} = 4, Z = 4 + 1/4 + 1 → −log(4/Z) = log(1 + 1/16 + 1/4)
    assert plain.dims is None and plain.pref.item() == pytest.approx(math.log(1 + 1 / 16 + 1 / 4))
    hermite = joint_loss(torch.tensor([delta]), torch.zeros(1), torch.tensor([False]), None, 0.0, log_sigma=(ls, ls))
    expected = gaussian_davidson_nll(torch.tensor([delta]), ls, ls, torch.tensor([False]), 1.0)
    assert hermite.pref.item() == pytest.approx(expected.item())  # the default
    with pytest.raises(ValueError, match="uncertainty_loss"):
        joint_loss(
            torch.zeros(1), torch.zeros(1), torch.tensor([False]), None, 0.0, log_sigma=(ls, ls), uncertainty_loss="mc"
        )
    with pytest.raises(ValueError, match="dimension_weight"):
        joint_loss(torch.zeros(1), torch.zeros(1), torch.tensor([False]), None, 0.0, dimension_weight=-1.0)


def test_dimension_labels_are_relative_to_the_chosen_slot():
    scores = {"instruction_following": -2, "quality": 0, "preservation": 1.5, "faithfulness": 4}
    names = ("instruction_following", "quality", "preservation")
    # As shown, negative = left better. Chosen on the left: left better is the chosen one better (+1).
    assert labels_of(scores, names, "left") == (1, 0, -1)
    assert labels_of(scores, names, "right") == (-1, 0, 1)
    assert labels_of('{"quality": -1}', names, "left") == (None, 1, None)  # a snapshot row's JSON text; missing: None
    assert labels_of({"faithfulness": 4}, ("faithfulness",), "left") == (None,)  # outside [-2, 2]: not comparative
    assert labels_of(None, names, "left") == (None, None, None)
    assert labels_of({"quality": float("nan"), "preservation": True}, names, "left") == (None, None, None)
