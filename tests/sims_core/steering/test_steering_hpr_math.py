"""HPR's math checked against direct transcriptions of the published equations (dense d x d
Householder matrix, arccos angles, the slerp-style pseudo-rotation, BCE + MSE)."""

from __future__ import annotations

import math

import pytest
import torch

from sims_core.steering import HPRFunction, fit_steering, householder_reflect, hpr_loss, pseudo_rotate, reflection_angle
from sims_core.steering.hpr import angle_between, angle_mlp_sizes


def dense_householder(w: torch.Tensor) -> torch.Tensor:
    return torch.eye(w.numel(), dtype=w.dtype) - 2.0 * torch.outer(w, w) / (w @ w)


def direct_angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.arccos(((u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))).clamp(-1, 1))


def direct_rotation(h: torch.Tensor, w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    hh = h @ dense_householder(w).T
    gamma = direct_angle(h, hh)
    return (torch.sin(a)[:, None] * hh + torch.sin(gamma - a)[:, None] * h) / torch.sin(gamma)[:, None]


@pytest.fixture
def hw():
    g = torch.Generator().manual_seed(1)
    return torch.randn(50, 16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)


def test_reflection_equals_dense_householder_matrix(hw):
    h, w = hw
    expected = h @ dense_householder(w).T
    torch.testing.assert_close(householder_reflect(h, w), expected, rtol=1e-12, atol=1e-12)
    # an involution that keeps norms and flips the sign of w.h
    torch.testing.assert_close(householder_reflect(householder_reflect(h, w), w), h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(householder_reflect(h, w).norm(dim=-1), h.norm(dim=-1))
    torch.testing.assert_close(householder_reflect(h, w) @ w, -(h @ w))


def test_reflection_angle_equals_arccos_of_h_and_hh(hw):
    h, w = hw
    expected = direct_angle(h, h @ dense_householder(w).T)
    torch.testing.assert_close(reflection_angle(h, w), expected, rtol=1e-9, atol=1e-9)


def test_angle_between_matches_math_acos():
    u = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [-3.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(
        angle_between(u, v), torch.tensor([math.pi / 2, math.pi / 4, math.pi], dtype=torch.float64)
    )


def test_pseudo_rotation_equals_published_formula_and_keeps_norms(hw):
    h, w = hw
    a = torch.linspace(0.05, 3.0, h.shape[0], dtype=torch.float64)  # includes angles beyond gamma
    out = pseudo_rotate(h, w, a)
    torch.testing.assert_close(out, direct_rotation(h, w, a), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.norm(dim=-1), h.norm(dim=-1), rtol=1e-12, atol=1e-12)
    # it rotates by exactly a, in the plane of h and Hh
    torch.testing.assert_close(direct_angle(h, out), torch.minimum(a, 2 * math.pi - a), rtol=1e-7, atol=1e-7)


def test_pseudo_rotation_endpoints(hw):
    h, w = hw
    gamma = direct_angle(h, h @ dense_householder(w).T)
    torch.testing.assert_close(pseudo_rotate(h, w, torch.zeros(h.shape[0], dtype=h.dtype)), h)
    torch.testing.assert_close(pseudo_rotate(h, w, gamma), h @ dense_householder(w).T, rtol=1e-9, atol=1e-9)


def test_pseudo_rotation_leaves_h_orthogonal_to_w_unchanged():
    w = torch.tensor([1.0, 0.0, 0.0])
    h = torch.tensor([[0.0, 2.0, 1.0]])
    assert torch.equal(pseudo_rotate(h, w, torch.tensor([1.0])), h)


def test_angle_network_halves_hidden_sizes(make_pairs):
    assert angle_mlp_sizes(576, 3) == [576, 288, 144, 72, 1]
    assert angle_mlp_sizes(64, 2) == [64, 32, 16, 1]
    pos, neg, _ = make_pairs(n=40, d=64)
    s = fit_steering("hpr", {0: pos}, {0: neg}, top_k=1, epochs=1, progress=False)
    shapes = [list(w.shape) for w, _ in s[0].angle_layers]
    assert shapes == [[32, 64], [16, 32], [8, 16], [1, 8]]
    assert s[0].activation == "gelu" and list(s[0].probe_weight.shape) == [64]
    s2 = fit_steering("hpr", {0: pos}, {0: neg}, top_k=1, epochs=1, depth=1, activation="relu", progress=False)
    assert [list(w.shape) for w, _ in s2[0].angle_layers] == [[32, 64], [1, 32]]


def constant_angle_hpr(w: torch.Tensor, angle: float) -> HPRFunction:
    """An HPR layer whose angle network outputs ``angle`` for every input (zero weights)."""
    d = w.numel()
    logit = math.log(angle / math.pi) - math.log(1 - angle / math.pi)
    return HPRFunction(w, [(torch.zeros(1, d, dtype=w.dtype), torch.tensor([logit], dtype=w.dtype))])


def test_angle_network_is_pi_times_sigmoid():
    w = torch.randn(8, dtype=torch.float64)
    fn = constant_angle_hpr(w, 1.2)
    torch.testing.assert_close(
        fn.angle(torch.randn(5, 8, dtype=torch.float64)), torch.full((5,), 1.2, dtype=torch.float64)
    )


def test_only_activations_the_probe_calls_negative_move(hw):
    h, w = hw
    fn = constant_angle_hpr(w, 0.7)
    out = fn(h, alpha=1.5)
    negative = torch.sigmoid(h @ w) < 0.5
    assert negative.any() and (~negative).any()
    assert torch.equal(out[~negative], h[~negative])
    expected = direct_rotation(h[negative], w, torch.full((int(negative.sum()),), 1.5 * 0.7, dtype=h.dtype))
    torch.testing.assert_close(out[negative], expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fn(h, alpha=0.0), h)
    # moved vectors go towards the positive side and keep their norms
    assert bool(((out[negative] @ w) > (h[negative] @ w)).all())
    torch.testing.assert_close(out.norm(dim=-1), h.norm(dim=-1))


def test_inference_is_linear_in_d_never_a_matrix():
    d = 200_000  # a d x d float32 matrix would need 160 GB
    w = torch.randn(d)
    fn = constant_angle_hpr(w, 0.5)
    h = -w.unsqueeze(0) + torch.randn(3, d)
    out = fn(h)
    assert out.shape == (3, d)
    torch.testing.assert_close(out.norm(dim=-1), h.norm(dim=-1), rtol=1e-5, atol=1e-3)


def test_works_on_any_leading_shape_and_keeps_dtype():
    w = torch.randn(16)
    fn = constant_angle_hpr(w, 0.5)
    h = torch.randn(2, 3, 16).to(torch.bfloat16)
    out = fn.to(dtype=torch.bfloat16)(h)
    assert out.shape == h.shape and out.dtype == torch.bfloat16


def test_loss_is_bce_plus_mse_on_hand_made_values():
    logits = torch.tensor([2.0, -1.0, 0.5, -0.3])
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    angles = torch.tensor([0.1, 0.2, 1.0, 2.0])
    targets = torch.tensor([0.0, 0.0, 1.5, 0.5])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    bce = -(math.log(sig(2.0)) + math.log(sig(-1.0)) + math.log(1 - sig(0.5)) + math.log(1 - sig(-0.3))) / 4
    mse = (0.1**2 + 0.2**2 + 0.5**2 + 1.5**2) / 4
    assert hpr_loss(logits, angles, labels, targets).item() == pytest.approx(bce + mse, rel=1e-6)
    assert bce + mse == pytest.approx(0.7422 + 0.6375, abs=5e-4)  # worked by hand
