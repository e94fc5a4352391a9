"""Training losses of MobileVOS (Miles et al., CVPR 2023).

L = xe_weight * L_xe + logit_weight * L_logit + repr_weight * L_repr, where
- L_xe is a bootstrapped poly-1 cross-entropy over background + objects (STCN-style top-p schedule),
- L_logit is a temperature-scaled KL from teacher to student on boundary-sampled pixels,
- L_repr is the representation loss on the same pixels: with Cs = Zs Zs^T, Ct = Zt Zt^T and
  Cty = w Ct + (1 - w) Y Y^T,   L_repr = (log2 ||Cs||_F^2 - log2 ||Cs * Cty||_F^2) / N.
  w = 0 gives a supervised contrastive loss on the student alone, w = 1 the matrix-Renyi form
  (-S2(Zs) + S2(Zs; Zt)) / N (see `renyi2_entropy`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Sobel kernels; the boundary test is "magnitude > 0", so their scale does not matter.
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def poly1_cross_entropy(logits: Tensor, target: Tensor, epsilon: float = 1.0) -> Tensor:
    """Per-pixel poly-1 loss CE + epsilon * (1 - p_target). logits (B,K,H,W), target (B,H,W) -> (B,H,W)."""
    log_p = F.log_softmax(logits, dim=1)
    log_pt = log_p.gather(1, target.unsqueeze(1)).squeeze(1)  # (B,H,W)
    return -log_pt + epsilon * (1.0 - log_pt.exp())


def bootstrap_top_p(iteration: int, warmup_iters: int, start: float = 1.0, end: float = 0.15,
                    hold_iters: int = 0) -> float:
    """Fraction of hardest pixels kept: `start` for `hold_iters`, then linear to `end` over `warmup_iters`.

    STCN keeps every pixel for its first 20k iterations and reaches 15% at 70k (hold 20k, warm-up 50k).
    """
    if iteration <= hold_iters:
        return start
    if warmup_iters <= 0 or iteration >= hold_iters + warmup_iters:
        return end
    t = (iteration - hold_iters) / warmup_iters
    return start + (end - start) * t


def bootstrapped_poly_ce(logits: Tensor, target: Tensor, top_p: float, epsilon: float = 1.0,
                         frames: int = 1) -> Tensor:
    """STCN's BootstrappedCE with the poly-1 loss: per image, the mean over its hardest `top_p` pixels;
    averaged over the clips of the batch and summed over the `frames` predicted frames of a clip.

    logits (F*B,K,H,W) over background + objects, frame-major (all clips' frame 1, then frame 2, ...);
    target (F*B,H,W) long in 0..K-1 -> scalar. STCN calls its loss per frame and per clip, adds
    `loss / batch` for each, and sums the frames, so every frame counts fully and no clip's easy pixels
    dilute another's hard ones.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if logits.shape[0] % frames:
        raise ValueError(f"{logits.shape[0]} images are not {frames} frames of whole clips")
    raw = poly1_cross_entropy(logits, target, epsilon).flatten(1)  # (F*B,HW)
    if top_p < 1.0:
        raw = raw.topk(max(1, int(raw.shape[1] * top_p)), dim=1, sorted=False).values
    return raw.mean(dim=1).sum() / (logits.shape[0] // frames)


def boundary_mask(labels: Tensor, band: int) -> Tensor:
    """Pixels within `band` pixels (Chebyshev distance) of a label boundary. labels (B,h,w) long -> (B,h,w) bool.

    A pixel is on the boundary where the Sobel response of any class's one-hot map is non-zero;
    replicate padding keeps the image border from counting as an edge.
    """
    num_classes = int(labels.max().item()) + 1
    onehot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()  # (B,K,h,w)
    b, k, h, w = onehot.shape
    kernels = torch.stack([_SOBEL_X, _SOBEL_X.t()]).unsqueeze(1).to(onehot)  # (2,1,3,3)
    padded = F.pad(onehot.reshape(b * k, 1, h, w), (1, 1, 1, 1), mode="replicate")
    grad = F.conv2d(padded, kernels)  # (B*K,2,h,w)
    edges = grad.abs().amax(dim=1).reshape(b, k, h, w).amax(dim=1) > 0  # (B,h,w)
    if band > 0:
        edges = F.max_pool2d(edges.float().unsqueeze(1), 2 * band + 1, stride=1, padding=band).squeeze(1) > 0
    return edges


def boundary_sample(labels: Tensor, band: int, max_pixels: int,
                    generator: torch.Generator | None = None) -> list[Tensor]:
    """Sample up to `max_pixels` pixels per frame from the boundary band, without replacement.

    labels (B,h,w) long -> B tensors of flat indices into h*w (on labels' device). A frame with no
    boundary (a single class) falls back to `max_pixels` uniformly random pixels.
    Sampling runs on the CPU so a CPU `generator` makes it reproducible on any device.
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    band_mask = boundary_mask(labels, band).flatten(1).cpu()  # (B,h*w)
    out = []
    for frame in band_mask:
        candidates = frame.nonzero().squeeze(1)
        if candidates.numel() == 0:
            candidates = torch.arange(frame.numel())
        if candidates.numel() > max_pixels:
            candidates = candidates[torch.randperm(candidates.numel(), generator=generator)[:max_pixels]]
        out.append(candidates.to(labels.device))
    return out


def gram_normalised(z: Tensor) -> Tensor:
    """Gram matrix of L2-normalised rows. z (N,D) -> (N,N) with a unit diagonal."""
    z = F.normalize(z, dim=1)
    return z @ z.t()


def renyi2_entropy(a: Tensor) -> Tensor:
    """Matrix Renyi entropy of order 2 of a Gram-like matrix A, normalised to unit trace:
    S2(A) = -log2 ||A / tr(A)||_F^2 = -log2(||A||_F^2 / tr(A)^2). A (N,N) -> scalar.

    S2(Zs) is S2(Cs); the joint entropy S2(Zs; Zt) is S2(Cs * Ct) (Hadamard product). For unit-norm
    rows tr(Cs) = tr(Cs * Ct) = N, so -S2(Zs) + S2(Zs; Zt) = log2||Cs||_F^2 - log2||Cs * Ct||_F^2,
    i.e. N * L_repr at w = 1.
    """
    return -torch.log2(a.square().sum() / a.trace().square())


def representation_loss(zs: Tensor, zt: Tensor, y_onehot: Tensor, w: float) -> Tensor:
    """(log2 ||Cs||_F^2 - log2 ||Cs * Cty||_F^2) / N with Cty = w Ct + (1 - w) Y Y^T.

    zs (N,Ds) student features already embedded to the teacher's width (any Ds works), zt (N,Dt) teacher
    features, y_onehot (N,K) labels of the same pixels -> scalar. Rows are L2-normalised here.
    """
    n = zs.shape[0]
    cs = gram_normalised(zs)  # (N,N)
    cty = (1.0 - w) * (y_onehot.float() @ y_onehot.float().t())  # same-class indicator, includes i == j
    if w != 0.0:
        cty = cty + w * gram_normalised(zt)
    # Both norms are >= N for unit rows (the diagonal alone), the clamp only guards zero feature vectors.
    tiny = torch.finfo(cs.dtype).tiny
    full = cs.square().sum().clamp_min(tiny)
    matched = (cs * cty).square().sum().clamp_min(tiny)
    return (torch.log2(full) - torch.log2(matched)) / n


def logit_distillation(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """KL(softmax(teacher / tau) || softmax(student / tau)), summed over classes, mean over pixels.

    student_logits, teacher_logits (N,K) -> scalar. The teacher side carries no gradient.
    """
    log_ps = F.log_softmax(student_logits / tau, dim=1)
    log_pt = F.log_softmax(teacher_logits.detach() / tau, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()


def _nearest_grid(size_in: int, size_out: int, device: torch.device) -> Tensor:
    """Source index of each output row/column under nearest resizing (as F.interpolate 'nearest')."""
    return (torch.arange(size_out, device=device) * (size_in / size_out)).floor().long().clamp_max(size_in - 1)


class DistillationLoss(nn.Module):
    """The full training objective; holds the student -> teacher linear embedding of the representation.

    forward() takes explicit model outputs and returns a dict of the weighted total ("loss") and of each
    unweighted term ("xe", "logit", "repr") plus the bootstrap fraction in use ("top_p").
    The representation term is computed per object, because the decoder features `z` are per object:
    for object o of frame b, Y is the one-hot of (label == o) vs the rest at the sampled pixels.
    """

    def __init__(self, student_dim: int, teacher_dim: int, *, w: float = 0.0, tau: float = 0.1,
                 xe_weight: float = 1.0, logit_weight: float = 1.0, repr_weight: float = 1.0,
                 poly_epsilon: float = 1.0, top_p_start: float = 1.0, top_p_end: float = 0.15,
                 top_p_hold_iters: int = 20_000, top_p_warmup_iters: int = 50_000,
                 band: int = 2, max_pixels: int = 1024):
        super().__init__()
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"w must be in [0, 1], got {w}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.embed = nn.Linear(student_dim, teacher_dim)
        self.w, self.tau = w, tau
        self.xe_weight, self.logit_weight, self.repr_weight = xe_weight, logit_weight, repr_weight
        self.poly_epsilon = poly_epsilon
        self.top_p_start, self.top_p_end = top_p_start, top_p_end
        self.top_p_hold_iters, self.top_p_warmup_iters = top_p_hold_iters, top_p_warmup_iters
        self.band, self.max_pixels = band, max_pixels

    def top_p(self, iteration: int) -> float:
        return bootstrap_top_p(iteration, self.top_p_warmup_iters, self.top_p_start, self.top_p_end,
                               hold_iters=self.top_p_hold_iters)

    def forward(self, logits: Tensor, target: Tensor, iteration: int, *,
                teacher_logits: Tensor | None = None, z_student: Tensor | None = None,
                z_teacher: Tensor | None = None, num_objects: Tensor | list[int] | None = None,
                generator: torch.Generator | None = None, frames: int = 1) -> dict[str, Tensor]:
        """logits, teacher_logits (B,1+N,H,W) aggregated over bg + objects; target (B,H,W) long;
        z_student (B*N,Cs,h,w), z_teacher (B*N,Ct,h,w) decoder features before the prediction conv;
        num_objects (B,) real objects per clip (padded objects are skipped in L_repr); frames: predicted
        frames per clip (rows are frame-major), over which the cross-entropy is summed.
        Without teacher outputs the distillation terms are zero (plain supervised training).
        """
        top_p = self.top_p(iteration)
        xe = bootstrapped_poly_ce(logits, target, top_p, self.poly_epsilon, frames)
        zero = logits.new_zeros(())
        logit_term, repr_term = zero, zero
        if teacher_logits is not None or z_teacher is not None:
            # Sample where the representation lives (h, w); the same pixels, mapped exactly by the nearest grid,
            # serve the logit term so both terms see the same boundary pixels.
            small_h, small_w = (z_student.shape[-2:] if z_student is not None else target.shape[-2:])
            rows = _nearest_grid(target.shape[-2], small_h, target.device)
            cols = _nearest_grid(target.shape[-1], small_w, target.device)
            small = target[:, rows][:, :, cols]  # (B,h,w)
            picks = boundary_sample(small, self.band, self.max_pixels, generator)
            if teacher_logits is not None:
                logit_term = self._logit_term(logits, teacher_logits, picks, rows, cols)
            if z_teacher is not None:
                if z_student is None:
                    raise ValueError("z_teacher given without z_student")
                repr_term = self._repr_term(z_student, z_teacher, small, picks, num_objects)
        total = self.xe_weight * xe + self.logit_weight * logit_term + self.repr_weight * repr_term
        return {"loss": total, "xe": xe.detach(), "logit": logit_term.detach(), "repr": repr_term.detach(),
                "top_p": torch.tensor(top_p)}

    def _logit_term(self, logits: Tensor, teacher_logits: Tensor, picks: list[Tensor],
                    rows: Tensor, cols: Tensor) -> Tensor:
        small_w, full_w = cols.numel(), logits.shape[-1]
        student, teacher = [], []
        for b, idx in enumerate(picks):
            flat = rows[idx // small_w] * full_w + cols[idx % small_w]  # flat index at full resolution
            student.append(logits[b].flatten(1)[:, flat].t())  # (P,K)
            teacher.append(teacher_logits[b].flatten(1)[:, flat].t())
        return logit_distillation(torch.cat(student), torch.cat(teacher), self.tau)

    def _repr_term(self, z_student: Tensor, z_teacher: Tensor, small: Tensor, picks: list[Tensor],
                   num_objects: Tensor | list[int] | None) -> Tensor:
        batch = small.shape[0]
        if z_student.shape[0] % batch:
            raise ValueError(f"z_student has {z_student.shape[0]} maps, not a multiple of the batch {batch}")
        per_frame = z_student.shape[0] // batch
        losses = []
        for b, idx in enumerate(picks):
            count = per_frame if num_objects is None else int(num_objects[b])
            labels = small[b].flatten()[idx]  # (P,)
            for o in range(count):
                zs = self.embed(z_student[b * per_frame + o].flatten(1)[:, idx].t())  # (P,Ct)
                zt = z_teacher[b * per_frame + o].flatten(1)[:, idx].t().detach()  # (P,Ct)
                y = F.one_hot((labels == o + 1).long(), 2)  # object o vs everything else
                losses.append(representation_loss(zs, zt, y, self.w))
        if not losses:
            return z_student.new_zeros(())
        return torch.stack(losses).mean()
