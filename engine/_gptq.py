"""Calibrated rounding: GPTQ, bias correction and an MSE clipping search.

GPTQ (Frantar et al., 2022), written from the paper: columns are rounded one at a time and
each rounding error is spread over the not-yet-rounded columns through the inverse of the
layer's input Hessian H = 2XᵀX/N, which minimizes the layer-output error ||(Q - W)X||².
Problems are batched: a weight is viewed as (G, R, K) with one problem per convolution
group (G = 1 for linears, G = channels for depthwise convs).
"""

from __future__ import annotations

from collections.abc import Sequence

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


Rounded = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]
"""codes (G*R, K) uint8, scales (G*R, ng) float32, zeros (G*R, ng) uint8 or None."""


@torch.no_grad()
def gptq(
    weight: torch.Tensor, hessian: torch.Tensor, scheme: QuantScheme, *,
    clip_search: bool = False, act_order: bool = True,
) -> Rounded:
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
    return gptq_many(weight, hessian, [scheme], clip_search=clip_search,
                     act_order=act_order)[0]


@torch.no_grad()
def gptq_many(
    weight: torch.Tensor, hessian: torch.Tensor, schemes: Sequence[QuantScheme], *,
    clip_search: bool = False, act_order: bool = True,
) -> list[Rounded]:
    """`gptq` of one weight under several schemes (e.g. every candidate bit-width) at once:
    the Hessian's factorization is shared and the column loop, whose cost is mostly
    per-step overhead, runs once for all schemes, each result the same as `gptq` alone.

    Scales come from the weights before any update when `act_order` is on or a scheme has
    one scale per channel ("static groups"); schemes with groups rounded in natural order
    take their scales from the updated columns as they are reached, one scheme at a time.
    """
    if not schemes:
        return []
    static = act_order or all(s.group_size is None for s in schemes)
    if not static and len(schemes) > 1:
        return [gptq_many(weight, hessian, [s], clip_search=clip_search, act_order=False)[0]
                for s in schemes]
    n_problems, rows, k = weight.shape
    h = hessian.detach().double().clone()
    diag = h.diagonal(dim1=1, dim2=2)
    dead = diag == 0  # inputs that never fire: any value works, keep them out of H
    diag[dead] = 1.0
    w = weight.detach().double().clone()
    w.masked_fill_(dead[:, None, :], 0.0)
    col_weight = diag.float().mean(0)
    p = len(schemes)

    # Per scheme: scales and zeros (G, R, ng); static ones from the unrounded weights.
    scales = [torch.zeros(n_problems, rows, s.n_groups(k), dtype=torch.float32)
              for s in schemes]
    zeros = [None if s.symmetric else torch.zeros(n_problems, rows, s.n_groups(k),
                                                  dtype=torch.uint8) for s in schemes]
    if static:
        for scheme, sc, ze in zip(schemes, scales, zeros, strict=True):
            qs, qz = group_qparams(w.reshape(n_problems * rows, k).float(), scheme,
                                   clip_search=clip_search, col_weight=col_weight)
            sc.copy_(qs.view(n_problems, rows, -1))
            if ze is not None and qz is not None:
                ze.copy_(qz.view(n_problems, rows, -1))
    perm = None
    if act_order:
        perm = torch.argsort(diag, dim=1, descending=True)  # (G, K)
        w = torch.gather(w, 2, perm[:, None, :].expand(-1, rows, -1))
        h = torch.gather(torch.gather(h, 1, perm[:, :, None].expand(-1, -1, k)), 2,
                         perm[:, None, :].expand(-1, k, -1))
    u = _inverse_hessian_factor(h)  # (G, K, K), shared by every scheme
    original = perm if perm is not None else torch.arange(k).expand(n_problems, k)

    def per_column(values: list[torch.Tensor], scheme_of: list[QuantScheme]) -> torch.Tensor:
        """(P*G, R, K) float64: each column's scale (or zero point), in rounding order."""
        out = []
        for v, s in zip(values, scheme_of, strict=True):
            group_of = (original // s.effective_group_size(k))[:, None, :].expand(-1, rows, -1)
            out.append(torch.gather(v.double(), 2, group_of))
        return torch.cat(out)

    def zero_points() -> list[torch.Tensor]:
        return [z if z is not None else torch.full_like(sc, s.offset)
                for s, sc, z in zip(schemes, scales, zeros, strict=True)]

    s_cols = per_column(list(scales), list(schemes)) if static else None
    z_cols = per_column(zero_points(), list(schemes)) if static else None
    # Every scheme's problems stacked: (P*G, R, K); limits per stacked problem.
    w = w.repeat(p, 1, 1)
    lo = torch.tensor([1.0 if s.symmetric else 0.0 for s in schemes],
                      dtype=torch.float64).repeat_interleave(n_problems)[:, None]
    hi = torch.tensor([float(s.qmax) for s in schemes],
                      dtype=torch.float64).repeat_interleave(n_problems)[:, None]
    codes = torch.zeros(p * n_problems, rows, k, dtype=torch.uint8)
    g = schemes[0].effective_group_size(k)
    block = BLOCK if static else g * max(1, BLOCK // g)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, :, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[:, i1:i2, i1:i2].repeat(p, 1, 1)
        for i in range(i2 - i1):
            col = i1 + i
            if not static and col % g == 0:  # one scheme here
                qs, qz = group_qparams(w1[:, :, i : i + g].reshape(n_problems * rows, -1)
                                       .float(), QuantScheme(schemes[0].bits,
                                                             schemes[0].symmetric, None),
                                       clip_search=clip_search,
                                       col_weight=col_weight[col : col + g])
                scales[0][:, :, col // g] = qs.view(n_problems, rows)
                if zeros[0] is not None and qz is not None:
                    zeros[0][:, :, col // g] = qz.view(n_problems, rows)
                s_cols = per_column(list(scales), list(schemes))
                z_cols = per_column(zero_points(), list(schemes))
            assert s_cols is not None and z_cols is not None
            s_col, z_col = s_cols[:, :, col], z_cols[:, :, col]
            q = torch.clamp(torch.round(w1[:, :, i] / s_col) + z_col, lo, hi)
            codes[:, :, col] = q.to(torch.uint8)
            e = (w1[:, :, i] - (q - z_col) * s_col) / u1[:, i, i][:, None]
            w1[:, :, i:] -= e[:, :, None] * u1[:, i, i:][:, None, :]
            err1[:, :, i] = e
        w[:, :, i2:] -= (err1.view(p, n_problems, rows, -1)
                         @ u[None, :, i1:i2, i2:]).view(p * n_problems, rows, -1)
    if perm is not None:  # back to the original column order
        inverse = torch.argsort(perm, dim=1).repeat(p, 1)
        codes = torch.gather(codes, 2, inverse[:, None, :].expand(-1, rows, -1))
    codes = codes.view(p, n_problems * rows, k)
    out: list[Rounded] = []
    for i, (sc, ze) in enumerate(zip(scales, zeros, strict=True)):
        out.append((codes[i], sc.reshape(-1, sc.shape[-1]),
                    None if ze is None else ze.reshape(-1, ze.shape[-1])))
    return out


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
