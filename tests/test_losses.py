"""Losses checked against values worked out by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mvos.training.losses import (
    DistillationLoss,
    boundary_mask,
    boundary_sample,
    bootstrap_top_p,
    bootstrapped_poly_ce,
    gram_normalised,
    logit_distillation,
    poly1_cross_entropy,
    renyi2_entropy,
    representation_loss,
)

LN3 = math.log(3.0)


def _two_by_two_case():
    # Pixels: a (0,0)->t0: p=1/2 ; b (ln3,0)->t0: p=3/4 ; c (ln3,0)->t1: p=1/4 ; d (0,ln3)->t1: p=3/4
    logits = torch.tensor([[[0.0, LN3], [LN3, 0.0]], [[0.0, 0.0], [0.0, LN3]]]).unsqueeze(0)  # (1,2,2,2)
    target = torch.tensor([[[0, 0], [1, 1]]])
    expected = torch.tensor([[[math.log(2) + 0.5, math.log(4 / 3) + 0.25],
                              [math.log(4) + 0.75, math.log(4 / 3) + 0.25]]])
    return logits, target, expected


def test_poly1_per_pixel_matches_hand_values():
    logits, target, expected = _two_by_two_case()
    torch.testing.assert_close(poly1_cross_entropy(logits, target), expected)
    # epsilon = 0 is plain cross-entropy
    torch.testing.assert_close(poly1_cross_entropy(logits, target, epsilon=0.0),
                               F.cross_entropy(logits, target, reduction="none"))


def test_bootstrapped_poly_ce_keeps_hardest_pixels():
    logits, target, _ = _two_by_two_case()
    all_mean = (math.log(2) + 0.5 + 2 * (math.log(4 / 3) + 0.25) + math.log(4) + 0.75) / 4
    assert bootstrapped_poly_ce(logits, target, 1.0).item() == pytest.approx(all_mean)
    # top half: pixels c (ln4 + 0.75) and a (ln2 + 0.5)
    assert bootstrapped_poly_ce(logits, target, 0.5).item() == pytest.approx((3 * math.log(2) + 1.25) / 2)
    assert bootstrapped_poly_ce(logits, target, 0.25).item() == pytest.approx(math.log(4) + 0.75)
    with pytest.raises(ValueError):
        bootstrapped_poly_ce(logits, target, 0.0)


def test_bootstrap_schedule():
    assert bootstrap_top_p(0, 100) == 1.0
    assert bootstrap_top_p(50, 100) == pytest.approx(0.575)
    assert bootstrap_top_p(100, 100) == pytest.approx(0.15)
    assert bootstrap_top_p(10_000, 100) == pytest.approx(0.15)
    # STCN-style hold at 100% first, then the linear decay
    assert bootstrap_top_p(20, 100, hold_iters=20) == 1.0
    assert bootstrap_top_p(70, 100, hold_iters=20) == pytest.approx(0.575)
    assert bootstrap_top_p(5, 10, start=0.5, end=0.1) == pytest.approx(0.3)


def _square(size=12, lo=4, hi=8):
    labels = torch.zeros(size, size, dtype=torch.long)
    labels[lo:hi, lo:hi] = 1
    return labels


def _chebyshev_to_edge(size=12, lo=4, hi=8):
    """Distance of each pixel to the nearest pixel that has the other class in its 3x3 neighbourhood."""
    labels = _square(size, lo, hi)
    edge = []
    for i in range(size):
        for j in range(size):
            nb = labels[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
            if nb.min() != nb.max():
                edge.append((i, j))
    dist = torch.full((size, size), 99)
    for i in range(size):
        for j in range(size):
            dist[i, j] = min(max(abs(i - a), abs(j - b)) for a, b in edge)
    return dist


def test_boundary_mask_on_square():
    labels = _square().unsqueeze(0)
    dist = _chebyshev_to_edge()
    torch.testing.assert_close(boundary_mask(labels, 0)[0], dist == 0)
    assert int((dist == 0).sum()) == 32  # 6x6 ring minus the 2x2 core
    torch.testing.assert_close(boundary_mask(labels, 1)[0], dist <= 1)
    assert int(boundary_mask(labels, 1).sum()) == 64  # rows/cols 2..9
    # the image border is not an edge
    assert not boundary_mask(torch.zeros(1, 5, 5, dtype=torch.long), 2).any()


def test_boundary_sample_within_band_and_capped():
    band = 1
    labels = torch.stack([_square(), torch.zeros(12, 12, dtype=torch.long)])  # second frame: no boundary
    dist = _chebyshev_to_edge().flatten()
    g = torch.Generator().manual_seed(0)
    square_idx, empty_idx = boundary_sample(labels, band, max_pixels=10, generator=g)
    assert square_idx.numel() == 10 and square_idx.unique().numel() == 10
    assert (dist[square_idx] <= band).all()
    # fallback: random distinct pixels anywhere, cap respected
    assert empty_idx.numel() == 10 and empty_idx.unique().numel() == 10
    assert (empty_idx >= 0).all() and (empty_idx < 144).all()
    # a cap above the band size returns the whole band
    all_idx = boundary_sample(labels[:1], band, max_pixels=1000)[0]
    assert sorted(all_idx.tolist()) == sorted((dist <= band).nonzero().squeeze(1).tolist())
    # deterministic with a seeded generator
    again = boundary_sample(labels, band, 10, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again[0], square_idx)
    torch.testing.assert_close(again[1], empty_idx)


def test_representation_loss_hand_values():
    zs = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # Cs = [[1, 1/sqrt2], [1/sqrt2, 1]], ||Cs||^2 = 3
    zt = torch.eye(2)  # Ct = I
    different = torch.eye(2)
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert representation_loss(zs, zt, different, 0.0).item() == pytest.approx(math.log2(1.5) / 2)
    assert representation_loss(zs, zt, same, 0.0).item() == pytest.approx(0.0, abs=1e-7)
    # w = 0.5, same class: Cty = [[1, .5], [.5, 1]] -> ||Cs * Cty||^2 = 2 + 2/8 = 2.25
    assert representation_loss(zs, zt, same, 0.5).item() == pytest.approx(math.log2(3 / 2.25) / 2)
    # rows are normalised inside: scaling features changes nothing
    assert representation_loss(5 * zs, 3 * zt, same, 0.5).item() == pytest.approx(math.log2(3 / 2.25) / 2)


def test_representation_loss_w0_is_contrastive_form():
    g = torch.Generator().manual_seed(1)
    n = 7
    zs = torch.randn(n, 4, generator=g)
    zt = torch.randn(n, 6, generator=g)
    cls = torch.tensor([0, 0, 1, 2, 1, 0, 2])
    y = F.one_hot(cls, 3)
    cs = F.normalize(zs, dim=1) @ F.normalize(zs, dim=1).t()
    num = sum(cs[i, j] ** 2 for i in range(n) for j in range(n) if cls[i] == cls[j])  # P_i includes i
    den = sum(cs[i, k] ** 2 for i in range(n) for k in range(n))
    expected = -math.log2(float(num / den)) / n
    assert representation_loss(zs, zt, y, 0.0).item() == pytest.approx(expected, rel=1e-5)


def _renyi2_from_eigenvalues(a: torch.Tensor) -> float:
    lam = torch.linalg.eigvalsh(a.double() / a.double().trace())
    return -math.log2(float((lam ** 2).sum()))


def test_representation_loss_w1_is_renyi_form():
    g = torch.Generator().manual_seed(2)
    n = 6
    zs = torch.randn(n, 5, generator=g)
    zt = torch.randn(n, 3, generator=g)
    y = F.one_hot(torch.tensor([0, 1, 0, 1, 1, 0]), 2)  # irrelevant at w = 1
    cs, ct = gram_normalised(zs), gram_normalised(zt)
    s2_student = _renyi2_from_eigenvalues(cs)
    s2_joint = _renyi2_from_eigenvalues(cs * ct)
    expected = (-s2_student + s2_joint) / n
    assert representation_loss(zs, zt, y, 1.0).item() == pytest.approx(expected, rel=1e-5)
    assert renyi2_entropy(cs).item() == pytest.approx(s2_student, rel=1e-5)
    assert renyi2_entropy(cs * ct).item() == pytest.approx(s2_joint, rel=1e-5)


def test_logit_distillation_at_temperature():
    student = torch.zeros(2, 2)
    teacher = torch.tensor([[0.1 * LN3, 0.0], [0.0, 0.0]])  # at tau=0.1 pixel 0 is p_t = (3/4, 1/4)
    kl0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert logit_distillation(student, teacher, 0.1).item() == pytest.approx(kl0 / 2)
    # tau = 1: p_t = softmax(0.1 ln3, 0)
    p = 1 / (1 + math.exp(-0.1 * LN3))
    kl1 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert logit_distillation(student, teacher, 1.0).item() == pytest.approx(kl1 / 2, rel=1e-4)  # float32
    assert logit_distillation(teacher, teacher, 0.1).item() == pytest.approx(0.0, abs=1e-7)


def _scene(batch=2, size=16):
    target = torch.zeros(batch, size, size, dtype=torch.long)
    target[:, 4:12, 2:9] = 1
    target[0, 6:14, 9:15] = 2
    return target


def test_distillation_loss_total_and_terms():
    torch.manual_seed(0)
    target = _scene()
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    teacher_logits = torch.randn(2, 3, 16, 16)
    zs = torch.randn(4, 5, 4, 4, requires_grad=True)  # B*N = 2*2 per-object maps at H/4
    zt = torch.randn(4, 3, 4, 4)
    loss = DistillationLoss(5, 3, w=0.5, tau=0.1, xe_weight=1.0, logit_weight=2.0, repr_weight=3.0,
                            top_p_hold_iters=0, top_p_warmup_iters=10, band=1, max_pixels=8)
    out = loss(logits, target, 5, teacher_logits=teacher_logits, z_student=zs, z_teacher=zt,
               num_objects=torch.tensor([2, 1]), generator=torch.Generator().manual_seed(3))
    assert out["top_p"].item() == pytest.approx(0.575)
    assert out["xe"].item() == pytest.approx(bootstrapped_poly_ce(logits, target, 0.575).item())
    assert out["logit"].item() > 0 and out["repr"].item() > 0
    total = out["xe"] + 2 * out["logit"] + 3 * out["repr"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    out["loss"].backward()
    assert loss.embed.weight.grad is not None and loss.embed.weight.grad.abs().sum() > 0
    assert zs.grad[3].abs().sum() == 0  # frame 1 has one object: its padded map is skipped
    assert zs.grad[2].abs().sum() > 0
    # no teacher: plain supervised training
    plain = DistillationLoss(5, 3)(logits, target, 0)
    assert plain["logit"].item() == 0 and plain["repr"].item() == 0
    assert plain["loss"].item() == pytest.approx(plain["xe"].item())


def test_distillation_uses_the_same_pixels_for_both_terms():
    target = _scene()
    small = target[:, ::4, ::4]  # the nearest grid from 16 to 4
    # perfect per-object features: channel 0 = "not object o", channel 1 = "object o" -> Cs = Y Y^T
    zs = torch.stack([F.one_hot((small[b] == o + 1).long(), 2).permute(2, 0, 1).float()
                      for b in range(2) for o in range(2)])  # (4,2,4,4)
    loss = DistillationLoss(2, 2, w=0.0, band=1, max_pixels=16)
    with torch.no_grad():
        loss.embed.weight.copy_(torch.eye(2))
        loss.embed.bias.zero_()
    logits = torch.randn(2, 3, 16, 16)
    teacher = logits.clone()
    off_grid = torch.ones(16, 16, dtype=torch.bool)
    off_grid[::4, ::4] = False
    teacher[:, :, off_grid] += 100 * torch.randn(2, 3, int(off_grid.sum()))  # only pixels never sampled differ
    out = loss(logits, target, 0, teacher_logits=teacher, z_student=zs, z_teacher=torch.randn(4, 2, 4, 4))
    assert out["repr"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["logit"].item() == pytest.approx(0.0, abs=1e-6)
