"""Calibrated rounding: GPTQ, bias correction and an MSE clipping search.

GPTQ (Frantar et al., 2022), written from the paper: columns are rounded one at a time and
each rounding error is spread over the not-yet-rounded columns through the inverse of the
layer's input Hessian H = 2XᵀX/N, which minimizes the layer-output error ||(Q - W)X||².
Problems are batched: a weight is viewed as (G, R, K) with one problem per convolution
group (G = 1 for linears, G = channels for depthwise convs).
"""

from __future__ import annotations

import torch

from engine._quantizer import QuantScheme, compute_qparams

DAMP = 0.01  # dampening, as a fraction of the mean diagonal of H
BLOCK = 128  # lazy-batch width: columns updated together before the trailing matmul
CLIP_GRID = tuple(1.0 - 0.025 * i for i in range(21))  # clip ratios 1.0 .. 0.5


def group_qparams(
    w2d: torch.Tensor, scheme: QuantScheme, *, clip_search: bool,
    col_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scales and zeros (rows, G) of `w2d`, optionally with the best clip ratio per group.

    The clipping search tries ratios in `CLIP_GRID` and keeps, per row and group, the one
    with the least squared rounding error (weighted per column by `col_weight`, e.g. the
    Hessian diagonal, when given).
    """
    if not clip_search:
        return compute_qparams(w2d, scheme)
    n, k = w2d.shape
    g = scheme.effective_group_size(k)
    ng = scheme.n_groups(k)
    pad = ng * g - k
    wp = torch.nn.functional.pad(w2d.float(), (0, pad)).view(n, ng, g)
    weight = None if col_weight is None else torch.nn.functional.pad(
        col_weight.float(), (0, pad)).view(1, ng, g)
    best_err = torch.full((n, ng), float("inf"))
    best_s: torch.Tensor | None = None
    best_z: torch.Tensor | None = None
    for ratio in CLIP_GRID:
        s, z = compute_qparams(w2d, scheme, clip_ratio=ratio)
        zero = z.float() if z is not None else torch.full_like(s, scheme.offset)
        lo = 1 if scheme.symmetric else 0
        q = (torch.round(wp / s[..., None]) + zero[..., None]).clamp(lo, scheme.qmax)
        err = ((q - zero[..., None]) * s[..., None] - wp) ** 2
        err = (err if weight is None else err * weight).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = s if best_s is None else torch.where(better, s, best_s)
        if z is not None:
            best_z = z if best_z is None else torch.where(better, z, best_z)
    assert best_s is not None  # CLIP_GRID is not empty
    return best_s, best_z


def _inverse_hessian_factor(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H⁻¹ per group, dampened until H is positive definite."""
    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    mean_diag = h.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=1e-12)
    damp = DAMP
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(h + (damp * mean_diag)[:, None, None] * eye)
        if not bool(info.any()):
            inv = torch.cholesky_inverse(chol)
            return torch.linalg.cholesky(inv, upper=True)
        damp *= 10
    raise RuntimeError("GPTQ: the input Hessian is not positive definite even when dampened.")


@torch.no_grad()
def gptq(
    weight: torch.Tensor, hessian: torch.Tensor, scheme: QuantScheme, *,
    clip_search: bool = False, act_order: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """GPTQ rounding of a grouped weight.

    Args:
        weight: (G, R, K) float weight, one problem per group.
        hessian: (G, K, K) input Hessian 2XᵀX/N per group.
        scheme: Bits, symmetry and column grouping (along K).
        clip_search: Choose each scale by the MSE clipping search.
        act_order: Round columns in order of decreasing Hessian diagonal (the inputs with
            the most energy first, while the most columns are left to absorb the error).
            Group scales then come from the weights before any update ("static groups"),
            since a group's columns are no longer rounded together.

    Returns:
        codes (G*R, K) uint8, scales (G*R, ng) and zeros (G*R, ng) or None, in the engine's
        quantizer format (rows of all groups stacked).
    """
    n_problems, rows, k = weight.shape
    w = weight.detach().double().clone()
    h = hessian.detach().double().clone()
    diag = h.diagonal(dim1=1, dim2=2)
    dead = diag == 0  # inputs that never fire: any value works, keep them out of H
    diag[dead] = 1.0
    w.masked_fill_(dead[:, None, :], 0.0)

    g = scheme.effective_group_size(k)
    ng = scheme.n_groups(k)
    scales = torch.zeros(n_problems, rows, ng, dtype=torch.float32)
    zeros = None if scheme.symmetric else torch.zeros(n_problems, rows, ng, dtype=torch.uint8)
    col_weight = diag.float().mean(0)

    def fill_qparams(cols: torch.Tensor, gi: int) -> None:
        flat = cols.reshape(n_problems * rows, -1).float()
        sub = QuantScheme(scheme.bits, scheme.symmetric, None)
        cw = col_weight[gi * g : gi * g + cols.shape[-1]]
        s, z = group_qparams(flat, sub, clip_search=clip_search, col_weight=cw)
        scales[:, :, gi] = s.view(n_problems, rows)
        if zeros is not None and z is not None:  # asymmetric: both
            zeros[:, :, gi] = z.view(n_problems, rows)

    static_groups = scheme.group_size is None or act_order
    if static_groups:
        for gi in range(ng):
            fill_qparams(w[:, :, gi * g : (gi + 1) * g], gi)
    perm = None
    if act_order:
        perm = torch.argsort(diag, dim=1, descending=True)  # (G, K)
        w = torch.gather(w, 2, perm[:, None, :].expand(-1, rows, -1))
        h = torch.gather(torch.gather(h, 1, perm[:, :, None].expand(-1, -1, k)), 2,
                         perm[:, None, :].expand(-1, k, -1))
    u = _inverse_hessian_factor(h)
    # original column index of each position (per problem)
    original = perm if perm is not None else torch.arange(k).expand(n_problems, k)
    group_of = original // g  # (G, K)

    lo = 1 if scheme.symmetric else 0
    codes = torch.zeros(n_problems, rows, k, dtype=torch.uint8)
    block = g * max(1, BLOCK // g) if not static_groups else BLOCK
    s_all = scales.double()
    z_all = zeros.double() if zeros is not None else torch.full_like(s_all, scheme.offset)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, :, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if not static_groups and col % g == 0:
                fill_qparams(w1[:, :, i : i + g], col // g)
                s_all = scales.double()
                z_all = (zeros.double() if zeros is not None
                         else torch.full_like(s_all, scheme.offset))
            group = group_of[:, col][:, None, None].expand(-1, rows, 1)  # (G, R, 1)
            s = torch.gather(s_all, 2, group)[..., 0]
            z = torch.gather(z_all, 2, group)[..., 0]
            q = (torch.round(w1[:, :, i] / s) + z).clamp_(lo, scheme.qmax)
            codes[:, :, col] = q.to(torch.uint8)
            e = (w1[:, :, i] - (q - z) * s) / u1[:, i, i][:, None]
            w1[:, :, i:] -= e[:, :, None] * u1[:, i, i:][:, None, :]
            err1[:, :, i] = e
        w[:, :, i2:] -= torch.bmm(err1, u[:, i1:i2, i2:])
    if perm is not None:  # back to the original column order
        inverse = torch.argsort(perm, dim=1)
        codes = torch.gather(codes, 2, inverse[:, None, :].expand(-1, rows, -1))
    out_z = None if zeros is None else zeros.reshape(-1, ng)
    return codes.reshape(-1, k), scales.reshape(-1, ng), out_z


def bias_correction(
    delta_weight: torch.Tensor, input_mean: torch.Tensor
) -> torch.Tensor:
    """The mean output shift ΔW·E[x] per output channel.

    Args:
        delta_weight: (G, R, K) quantized minus float weight.
        input_mean: (G, K) mean input rows.

    Returns:
        (G*R,) shift to subtract from the bias.
    """
    return torch.bmm(delta_weight.double(), input_mean.double()[:, :, None]).reshape(-1)
