"""Losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import (
    IGNORE_INDEX,
    bradley_terry,
    davidson_nll,
    davidson_probabilities,
    joint_loss,
    lm_nll,
)


def test_bradley_terry_hand_values():
    delta = torch.tensor([0.0, math.log(3.0), -math.log(3.0)])
    # σ(0) = 1/2; σ(ln 3) = 3/4; σ(−ln 3) = 1/4
    expected = torch.tensor([math.log(2.0), math.log(4 / 3), math.log(4.0)])
    torch.testing.assert_close(bradley_terry(delta), expected)


def test_bradley_terry_is_stable_for_large_margins():
    values = bradley_terry(torch.tensor([1000.0, -1000.0]))
    assert torch.isfinite(values).all()
    torch.testing.assert_close(values, torch.tensor([0.0, 1000.0]))


def test_davidson_hand_example():
    # Δ = 2 ln 2 → e^{Δ/2} = 2, e^{−Δ/2} = 1/2; ν = 1 → Z = 3.5: P = (4/7, 1/7, 2/7).
    delta = torch.tensor([2 * math.log(2.0)])
    p_win, p_loss, p_tie = davidson_probabilities(delta, nu=1.0)
    torch.testing.assert_close(torch.cat([p_win, p_loss, p_tie]), torch.tensor([4 / 7, 1 / 7, 2 / 7]))
    nll = davidson_nll(delta.repeat(2), torch.tensor([False, True]), nu=1.0)
    torch.testing.assert_close(nll, torch.tensor([math.log(7 / 4), math.log(7 / 2)]))


def test_davidson_at_zero_margin_is_uniform_for_nu_one():
    p_win, p_loss, p_tie = davidson_probabilities(torch.zeros(1), nu=1.0)
    for p in (p_win, p_loss, p_tie):
        torch.testing.assert_close(p, torch.tensor([1 / 3]))
    torch.testing.assert_close(davidson_nll(torch.zeros(1), torch.tensor([True]), 1.0), torch.tensor([math.log(3.0)]))


@pytest.mark.parametrize("nu", [0.0, 0.3, 1.0, 5.0])
def test_davidson_probabilities_sum_to_one(nu):
    delta = torch.linspace(-30, 30, 61)
    p_win, p_loss, p_tie = davidson_probabilities(delta, nu)
    torch.testing.assert_close(p_win + p_loss + p_tie, torch.ones_like(delta))
    assert (p_tie >= 0).all()


def test_davidson_with_nu_zero_is_bradley_terry():
    delta = torch.linspace(-5, 5, 11)
    torch.testing.assert_close(davidson_nll(delta, torch.zeros(11, dtype=torch.bool), 0.0), bradley_terry(delta))
    p_win, _, _ = davidson_probabilities(delta, 0.0)
    torch.testing.assert_close(p_win, torch.sigmoid(delta))


def test_tie_loss_is_minimal_and_flat_at_equal_rewards():
    delta = torch.tensor([0.0, 1.0, -1.0], requires_grad=True)
    nll = davidson_nll(delta, torch.ones(3, dtype=torch.bool), nu=1.0)
    nll.sum().backward()
    values = nll.detach().tolist()
    assert values[0] < values[1] and values[1] == pytest.approx(values[2])
    assert delta.grad[0] == 0.0 and delta.grad[1] > 0 > delta.grad[2]  # ties pull Δ back to 0 from both sides


def test_ties_with_nu_zero_are_refused_not_dropped():
    with pytest.raises(ValueError, match="tie_nu > 0"):
        davidson_nll(torch.zeros(2), torch.tensor([False, True]), nu=0.0)
    with pytest.raises(ValueError, match="tie_nu"):
        davidson_probabilities(torch.zeros(1), nu=-1.0)


def test_lm_nll_uniform_logits_is_log_vocab_and_ignores_masked():
    logits = torch.zeros(2, 3, 5)  # uniform over 5 tokens
    logits[0, 0, 1] = 100.0  # a masked position with a huge loss must not count
    labels = torch.tensor([[IGNORE_INDEX, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]])
    torch.testing.assert_close(lm_nll(logits, labels), torch.tensor(math.log(5.0)))


def test_lm_nll_hand_value():
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p = (3/4, 1/4)
    torch.testing.assert_close(lm_nll(logits, torch.tensor([1])), torch.tensor(math.log(4.0)))


def test_lm_nll_without_labelled_tokens_is_zero_on_the_graph():
    logits = torch.randn(4, 7, requires_grad=True)
    value = lm_nll(logits, torch.full((4,), IGNORE_INDEX))
    assert value.item() == 0.0
    value.backward()
    assert logits.grad is not None and (logits.grad == 0).all()


def test_joint_loss_breakdown():
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])
    is_tie = torch.tensor([False, True])
    out = joint_loss(chosen, rejected, is_tie, torch.tensor(2.0), lm_weight=0.5, tie_nu=1.0)
    expected_pref = (math.log(3.0) + math.log(3.0)) / 2  # Δ = 0: P(win) = P(tie) = 1/3
    assert out.pref.item() == pytest.approx(expected_pref)
    assert out.lm.item() == pytest.approx(2.0)
    assert out.total.item() == pytest.approx(expected_pref + 1.0)
    assert (out.n_pairs, out.n_ties) == (2, 1)


def test_joint_loss_lambda_zero_is_the_discriminative_baseline():
    chosen = torch.tensor([0.5, -0.2], requires_grad=True)
    rejected = torch.tensor([0.0, 0.1])
    out = joint_loss(chosen, rejected, torch.zeros(2, dtype=torch.bool), torch.tensor(9.0), lm_weight=0.0, tie_nu=0.0)
    torch.testing.assert_close(out.total, bradley_terry(chosen - rejected).mean())
    out_no_lm = joint_loss(chosen, rejected, torch.zeros(2, dtype=torch.bool), None, lm_weight=1.0, tie_nu=0.0)
    torch.testing.assert_close(out_no_lm.total, out.total)  # votes without rationale: pref only
    out.total.backward()
    assert chosen.grad is not None


def test_joint_loss_validates_inputs():
    with pytest.raises(ValueError, match=r"must all be \(B,\)"):
        joint_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2, dtype=torch.bool), None, 1.0)
    with pytest.raises(ValueError, match="lm_weight"):
        joint_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.bool), None, -1.0)
