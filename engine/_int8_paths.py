"""Which int8 kernel a layer runs on this CPU, and why: exactness probes and a speed probe.

x86 int8 kernels without VNNI multiply unsigned 8-bit activation codes by signed 8-bit
weights and add each adjacent pair of products in saturating int16: 2 * 255 * 127 overflows,
2 * 127 * 127 does not. Whether a kernel is exact therefore depends on the codes it is fed,
so each probe quantizes activations with the path's own run-time code (`u8_rows`, the
convs' uint8 grids) at the widest code range under test, at the extremes of that range,
and compares the kernel with the exact integer product. The widest exact range is what
the path then uses (0..255 with VNNI; 0..129 on AVX2-only CPUs such as an AMD EPYC
without VNNI).

Among the exact int8 linear paths, a speed probe at the caller's row count (rounded down
to a power of two, at most `PROBE_MAX_ROWS`) takes the first in order of preference that
is not slower than the same per-row arithmetic on an fp32 GEMM (the always-exact
`cpu-int8-emulated`), so a kernel that falls back to reference code on some CPU is never
picked. The probe times kernels on one thread (`engine._kernels.fastest_us`), so the
choice does not follow the load of a shared machine; it is cached per process and row
bucket.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engine import _kernels as K
from engine._fbgemm_rows import fbgemm_rows_linear, prepare_fbgemm_rows, u8_rows
from engine._kernels import KernelPath
from engine._platform import has_vnni

# Row counts above this are probed at this many rows (int8 GEMMs are compute-bound there).
PROBE_MAX_ROWS = 512
# Multiply-adds of a speed probe: its square weight is as wide as this needs at the probed
# row count, between PROBE_MIN_FEATURES and PROBE_MAX_FEATURES, so that every probe is
# compute-bound. (A fixed 512x512 one row took ~0.1 ms, all call overhead, and which path
# won flipped between runs: fbgemm's 4.9x on a 4096x4096 layer lost to fp32 emulation.)
PROBE_MACS = 1 << 24
PROBE_MIN_FEATURES = 512
PROBE_MAX_FEATURES = 4096
# A path is taken while its time is at most this multiple of the fp32-emulated path's: on
# near-ties an integer kernel is preferred (the probe's weight is cache-resident, which
# understates int8's gain on weights read from DRAM).
MAX_TIME_VS_EMULATED = 1.2
# Preference among exact, fast-enough paths (most accurate first at equal speed).
LINEAR_PREFERENCE = (
    KernelPath.FBGEMM_INT8_DYNAMIC,  # a single row only: its tensor grid is the row grid
    KernelPath.ONEDNN_INT8_DYNAMIC,  # symmetric 8-bit rows
    KernelPath.FBGEMM_INT8_ROWS,     # asymmetric rows, 7-bit on AVX2-only CPUs
    KernelPath.CPU_INT8_INTMM,
)
# Activation code ranges tried, widest first: 8-bit; 129, the widest whose int16 pair sums
# cannot overflow against int8 weights (2 * 129 * 127 = 32766); 127 as in fbgemm's own
# `reduce_range`.
MAX_CODE_CANDIDATES = (255, 129, 127)
_FULL_RANGE = 255


@dataclass(frozen=True)
class PathChoice:
    """The int8 kernel chosen for a row count, and why.

    Attributes:
        path: The kernel path.
        reason: One sentence: what was measured and what was ruled out.
        probe_rows: The row count the speed probe ran at.
        timings_us: Probe time per candidate path (fastest of the repeats), microseconds.
    """

    path: KernelPath
    reason: str
    probe_rows: int
    timings_us: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- exactness


def _saturating_weight(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Random int8 weights whose first 32 inputs are +127 or -127 per row: adjacent
    products of full-scale codes then reach the int16 limit in both signs."""
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    sign = torch.where(torch.arange(n) % 2 == 0, 127, -127).to(torch.int8)
    w[:, :32] = sign[:, None]
    return w


@functools.cache
def _linear_rows_exact(max_code: int) -> bool:
    """Whether fbgemm's u8 x s8 linear sums `u8_rows` codes of 0..max_code exactly."""
    if not K.fbgemm_available():
        return False
    gen = torch.Generator().manual_seed(0)
    n, k = 64, 256
    w = _saturating_weight(n, k, gen)
    # float rows with their own ranges; the first 32 inputs sit at each row's maximum
    lo = torch.randn(16, 1, generator=gen) - 2.0
    x = lo + torch.rand(16, k, generator=gen) * (torch.rand(16, 1, generator=gen) * 8 + 0.5)
    x[:, :32] = x.amax(dim=1, keepdim=True)
    try:
        packed = prepare_fbgemm_rows(w, torch.ones(n), None)[0]
        codes, _, _ = u8_rows(x, None, max_code)
        with torch.inference_mode():
            acc = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                codes, 1.0, 0, packed)
    except RuntimeError:
        return False
    q = codes.round()
    in_range = bool(q.min() >= 0 and q.max() == max_code)
    # integer sums below 2**24 are exact in float32
    return in_range and torch.equal(acc, q @ w.float().t())


@functools.cache
def fbgemm_max_code() -> int:
    """The widest activation code range (of `MAX_CODE_CANDIDATES`) that fbgemm's int8
    linear sums exactly on this CPU; 0 where it is absent or exact at none."""
    return next((c for c in MAX_CODE_CANDIDATES if _linear_rows_exact(c)), 0)


def _conv_exact(kernel: str, max_code: int, groups: int) -> bool:
    """Whether an int8 conv kernel ("fbgemm" static, "onednn") sums uint8 codes of
    0..max_code exactly: every code at the maximum against +-127 weights (a dense and a
    depthwise conv run different kernels)."""
    gen = torch.Generator().manual_seed(0)
    c = 32
    w = _saturating_weight(c, c // groups * 9, gen).reshape(c, c // groups, 3, 3)
    x = torch.full((1, c, 6, 6), float(max_code)).contiguous(memory_format=torch.channels_last)
    exact = F.conv2d(x, w.float(), padding=1, groups=groups)  # sums below 2**24
    one: K.Pair = (1, 1)
    try:
        with torch.inference_mode():
            if kernel == "fbgemm":
                packed = K.prepare_fbgemm_conv(w, torch.ones(c), None, one, one, one, groups)
                out_scale = float(exact.abs().max()) / 100.0  # codes +-100 around 128
                y = K.fbgemm_conv_static(x, packed, (1.0, 0), (out_scale, 128), max_code)
                return bool((y - exact).abs().max() <= out_scale)
            prep = K.prepare_onednn_conv(w, torch.ones(c), one, one, one, groups)
            y = torch.ops.onednn.qconv2d_pointwise(
                x.to(torch.uint8), 1.0, 0, prep[0], prep[1], prep[2], None, [1, 1], [1, 1],
                [1, 1], groups, 1.0, 0, torch.float32, "none", [], "")
            return torch.equal(y, exact)
    except RuntimeError:
        return False


@functools.cache
def conv_max_code(kernel: str) -> int:
    """The widest input code range (of `MAX_CODE_CANDIDATES`) the int8 conv `kernel`
    ("fbgemm" or "onednn") sums exactly on this CPU; 0 where it is absent or exact at none."""
    if kernel not in ("fbgemm", "onednn"):
        raise ValueError(f"`kernel` must be 'fbgemm' or 'onednn', got {kernel!r}.")
    available = K.fbgemm_available() if kernel == "fbgemm" else K.onednn_available()
    if not available:
        return 0
    return next((c for c in MAX_CODE_CANDIDATES
                 if _conv_exact(kernel, c, 1) and _conv_exact(kernel, c, 32)), 0)


def int8_capabilities() -> dict[str, object]:
    """What the probes found on this CPU (for reports and latency-table fingerprints)."""
    return {
        "vnni": has_vnni(),
        "fbgemm_max_code": fbgemm_max_code(),
        "fbgemm_conv_max_code": conv_max_code("fbgemm"),
        "onednn_conv_max_code": conv_max_code("onednn"),
        "onednn_int8_exact": K.onednn_int8_exact(),
        "onednn_int8_usable": K.onednn_int8_usable(),
        "int_mm_cpu_fast": K.int_mm_cpu_fast(),
    }


# ----------------------------------------------------------------------------- linear choice


def _exact_candidates(rows: int) -> tuple[list[KernelPath], list[str]]:
    """The exact int8 linear paths for `rows` in order of preference, and why others are
    not (plain-text notes for the reason)."""
    ok: list[KernelPath] = []
    notes: list[str] = []
    max_code = fbgemm_max_code()
    for path in LINEAR_PREFERENCE:
        if path is KernelPath.FBGEMM_INT8_DYNAMIC:
            if rows != 1:
                continue
            if max_code:
                ok.append(path)
            else:
                notes.append(f"{path.value}: unavailable or inexact")
        elif path is KernelPath.ONEDNN_INT8_DYNAMIC:
            if K.onednn_int8_usable():
                ok.append(path)
            elif K.onednn_available() and not K.onednn_int8_exact():
                notes.append(f"{path.value}: inexact here (int8 pair sums saturate int16)")
            else:
                notes.append(f"{path.value}: unavailable or reference code here")
        elif path is KernelPath.FBGEMM_INT8_ROWS:
            if max_code:
                ok.append(path)
            else:
                notes.append(f"{path.value}: unavailable or inexact")
        elif K.int_mm_cpu_fast():
            ok.append(path)
        else:
            notes.append(f"{path.value}: unavailable or unoptimized here")
    return ok, notes


def _probe_runner(path: KernelPath, w: torch.Tensor, scales: torch.Tensor,
                  x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A call of `path` on the probe's operands, its weight layout prepared beforehand."""
    if path is KernelPath.FBGEMM_INT8_DYNAMIC:
        packed = K.prepare_fbgemm_linear(w, scales, None)
        reduce_range = fbgemm_max_code() < _FULL_RANGE
        return lambda: K.fbgemm_linear(x, packed, reduce_range)
    if path is KernelPath.ONEDNN_INT8_DYNAMIC:
        prepared = K.prepare_onednn_linear(w, scales)
        return lambda: K.onednn_linear(x, prepared, None)
    if path is KernelPath.FBGEMM_INT8_ROWS:
        rows_prepared = prepare_fbgemm_rows(w, scales, None)
        max_code = fbgemm_max_code()
        return lambda: fbgemm_rows_linear(x, rows_prepared, None, max_code)
    w_t = w.t().contiguous() if path is KernelPath.CPU_INT8_INTMM else w.float().t().contiguous()
    return lambda: K.int8_rows_linear(x, w_t, scales, None)


def probe_features(probe_m: int) -> int:
    """Reduction and output size of the probe's weight at `probe_m` rows: about
    sqrt(PROBE_MACS / rows), a multiple of 256 within the bounds."""
    side = round(math.sqrt(PROBE_MACS / max(1, probe_m)) / 256) * 256
    return min(PROBE_MAX_FEATURES, max(PROBE_MIN_FEATURES, side))


def probe_rows(rows: int) -> int:
    """The row count the speed probe runs at for `rows` input rows."""
    if rows < 1:
        raise ValueError(f"`rows` must be >= 1, got {rows!r}.")
    return min(1 << (rows.bit_length() - 1), PROBE_MAX_ROWS)


@functools.cache
def _choose(probe_m: int) -> PathChoice:
    candidates, notes = _exact_candidates(probe_m)
    gen = torch.Generator().manual_seed(1)
    k = n = probe_features(probe_m)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=gen)
    scales = torch.rand(n, generator=gen) * 1e-2 + 1e-3
    x = torch.randn(probe_m, k, generator=gen)
    runners: dict[str, Callable[[], torch.Tensor]] = {}
    for path in [*candidates, KernelPath.CPU_INT8_EMULATED]:
        try:
            runners[path.value] = _probe_runner(path, w, scales, x)
            runners[path.value]()
        except RuntimeError as e:  # a kernel this torch build lacks after all
            runners.pop(path.value, None)
            notes.append(f"{path.value}: failed ({str(e).splitlines()[0][:80]})")
    timings = dict(zip(runners, K.fastest_us(list(runners.values())), strict=True))
    baseline = timings.get(KernelPath.CPU_INT8_EMULATED.value, math.inf)
    chosen = KernelPath.CPU_INT8_EMULATED
    for path in candidates:
        t = timings.get(path.value, math.inf)
        if t <= MAX_TIME_VS_EMULATED * baseline:
            chosen = path
            break
        notes.append(f"{path.value}: slower than the fp32 emulation ({t:,.0f} vs "
                     f"{baseline:,.0f} us)")
    return PathChoice(chosen, _reason(chosen, probe_m, timings, notes), probe_m, timings)


def _reason(path: KernelPath, probe_m: int, timings: dict[str, float],
            notes: list[str]) -> str:
    measured = ", ".join(f"{p} {t:,.0f} us" for p, t in timings.items())
    what = {
        KernelPath.FBGEMM_INT8_DYNAMIC: "one row: fbgemm's tensor grid is the row grid",
        KernelPath.ONEDNN_INT8_DYNAMIC: "oneDNN exact with symmetric 8-bit rows",
        KernelPath.FBGEMM_INT8_ROWS: "fbgemm exact with asymmetric rows of codes "
                                     f"0..{fbgemm_max_code()}, outlier channels in fp32",
        KernelPath.CPU_INT8_INTMM: "torch._int_mm exact and optimized here",
        KernelPath.CPU_INT8_EMULATED: "no exact int8 kernel that is faster here",
    }[path]
    ruled_out = f"; {'; '.join(notes)}" if notes else ""
    side = probe_features(probe_m)
    return (f"{what} (first exact path not slower than fp32 emulation at {probe_m} rows x "
            f"{side}x{side}: {measured}){ruled_out}")


def int8_linear_choice(rows: int) -> PathChoice:
    """The int8 kernel a symmetric per-channel int8 linear runs on this CPU for `rows`
    input rows, with the reason (probed once per process and row bucket).

    Raises:
        ValueError: `rows` is below 1.
    """
    return _choose(probe_rows(rows))
