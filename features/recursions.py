"""Compiled loops for the indicators: seeded averages, and sums over sliding windows.

Seeded averages (EMA, Wilder): y[t] = alpha * x[t] + (1 - alpha) * y[t - 1] reads its own previous
output, so numpy has no array form of it. scipy's `lfilter` ran it as a general IIR filter at ~3x
TA-Lib's EMA time, and the eleven averages were about 40 % of the batch feature time. The loop here
does the same multiply, multiply, add per hour in the same order, so its values are bit-identical
to `lfilter`'s. One step costs a multiply-add's latency, not its throughput, so a lone average
leaves the core idle: four run side by side for the time of one (measured on 61k hours: one
0.115 ms, four 0.117 ms, TA-Lib's EMA 0.136 ms).

Window sums: a fixed tree of additions per window (see `window_sums`). numpy built it from
whole-length temporaries, about fifty per feature matrix, and a fresh temporary of a 50k-hour
series costs more in page faults than the arithmetic done in it (on the four markets: 6,700
faults and 23 ms of system time a run, for 18 ms of user time; about 2,600 faults and 10 ms
without them). The kernels build the same tree block by block in a small buffer, so the sums are
bit-identical and those temporaries are gone.

Compiled code is cached beside this module (`cache=True`): only the first process after an install
compiles (bench/features.py prints how long, and how long a later process takes to load it).
Where neither that directory nor the user cache is writable numba refuses to cache at import; the
kernels are then compiled uncached in every process instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np
from numba import njit

LANES = 4
"""Averages run side by side in one loop: four hide the multiply-add latency."""

_Kernel = TypeVar("_Kernel", bound=Callable[..., Any])


def _compiled(kernel: _Kernel) -> _Kernel:
    """njit with an on-disk cache where one can be written, without one where it cannot."""
    try:
        return njit(cache=True)(kernel)
    except RuntimeError:  # "cannot cache function ...: no locator available": nowhere writable
        return njit(cache=False)(kernel)


class Average(NamedTuple):
    """One seeded average: `out[t]` from `x[t]`, seeded at `seed_end` with the mean of `seed_len`
    inputs ending there (NaN before), then `out[t] = alpha * x[t] + (1 - alpha) * out[t - 1]`."""

    out: np.ndarray
    x: np.ndarray
    alpha: float
    seed_end: int
    seed_len: int


@_compiled
def _seed_lane(
    x: np.ndarray, out: np.ndarray, alpha: float, seed: float, seed_end: int, stop: int
) -> float:
    """NaN before seed_end, the seed at it, the recursion up to `stop`; returns out[stop - 1]."""
    for t in range(seed_end):
        out[t] = np.nan
    y = seed
    out[seed_end] = y
    keep = 1.0 - alpha
    for t in range(seed_end + 1, stop):
        y = alpha * x[t] + keep * y
        out[t] = y
    return y


@_compiled
def _four_averages(xs: Any, outs: Any, alphas: Any, seeds: Any, seed_ends: Any) -> None:
    """Four seeded averages over arrays of one length; each lane alone up to the last seed, then
    all four in one loop. Lanes may repeat (a repeated lane writes the same values twice)."""
    x0, x1, x2, x3 = xs
    o0, o1, o2, o3 = outs
    a0, a1, a2, a3 = alphas
    k0, k1, k2, k3 = 1.0 - a0, 1.0 - a1, 1.0 - a2, 1.0 - a3
    start = max(seed_ends) + 1
    y0 = _seed_lane(x0, o0, a0, seeds[0], seed_ends[0], start)
    y1 = _seed_lane(x1, o1, a1, seeds[1], seed_ends[1], start)
    y2 = _seed_lane(x2, o2, a2, seeds[2], seed_ends[2], start)
    y3 = _seed_lane(x3, o3, a3, seeds[3], seed_ends[3], start)
    # An unsigned index spares numba's negative-index check on each of the eight accesses: with it
    # the loop took 0.18 ms on 61k hours, without it 0.12 ms (as long as one lane alone).
    for t in range(np.uint64(start), np.uint64(len(o0))):
        y0 = a0 * x0[t] + k0 * y0
        y1 = a1 * x1[t] + k1 * y1
        y2 = a2 * x2[t] + k2 * y2
        y3 = a3 * x3[t] + k3 * y3
        o0[t] = y0
        o1[t] = y1
        o2[t] = y2
        o3[t] = y3


def seeded_averages(averages: Sequence[Average]) -> None:
    """Compute each average into its `out` (all of one length), four at a time.

    An EMA is alpha 2/(N+1) seeded with the mean of its first N inputs, Wilder's smoothing alpha
    1/N likewise (TA-Lib's seeding). The seed is numpy's mean (pairwise sum), as it always was, so
    the values do not move by an ulp; only the recursion is compiled. An average whose seed lies
    beyond the end is all NaN.
    """
    lanes = []
    for average in averages:
        x, end = average.x, average.seed_end
        if len(x) != len(averages[0].out) or len(average.out) != len(x):
            raise ValueError("the averages of one call need inputs and outputs of one length")
        if np.may_share_memory(average.out, x):  # a repeated lane would read its own output
            raise ValueError("an average's output must not overlap its input")
        if end >= len(x):
            average.out[:] = np.nan
        else:
            lanes.append((average, float(x[end - average.seed_len + 1 : end + 1].mean())))
    for first in range(0, len(lanes), LANES):
        group = lanes[first : first + LANES]
        group += [group[-1]] * (LANES - len(group))  # a repeated lane costs nothing: see above
        _four_averages(
            tuple(a.x for a, _ in group),
            tuple(a.out for a, _ in group),
            tuple(float(a.alpha) for a, _ in group),
            tuple(seed for _, seed in group),
            tuple(int(a.seed_end) for a, _ in group),
        )


_BLOCK = 1024
"""Window ends per pass of the window kernels: one block's span levels (~70 KB for a 100-hour
window) stay in cache, and no array as long as the input is ever made."""


@_compiled
def _span_levels(x: np.ndarray, first: int, length: int, squared: bool, span: np.ndarray) -> None:
    """span[0, :length] = x[first : first + length] (or its squares), then span[k, i] = the sum of
    the 2^k values from i on: span[k - 1, i + 2^(k - 1)] + span[k - 1, i].

    Indices are unsigned here and below: numba then skips its negative-index check and the loops
    vectorise (2.5x faster than with signed indices).
    """
    base = span[0]
    start = np.uint64(first)
    for i in range(np.uint64(length)):
        value = x[start + i]
        base[i] = value * value if squared else value
    width = 1
    for level in range(1, span.shape[0]):
        below, row = span[level - 1], span[level]
        shift = np.uint64(width)
        for i in range(np.uint64(max(length - 2 * width + 1, 0))):
            row[i] = below[i + shift] + below[i]
        width *= 2


@_compiled
def _tree_sums(span: np.ndarray, n: int, rows: int, out: np.ndarray, first: int) -> None:
    """out[first + i] = the sum of the n values from i on, for i < rows: the span of each binary
    digit of n, largest first, added left to right (one fixed tree of additions per window)."""
    dest = out[first : first + rows]
    offset, started = 0, False
    for level in range(span.shape[0] - 1, -1, -1):
        width = 1 << level
        if n & width == 0:
            continue
        part = span[level, offset : offset + rows]
        if started:
            for i in range(np.uint64(rows)):
                dest[i] += part[i]
        else:
            for i in range(np.uint64(rows)):
                dest[i] = part[i]
            started = True
        offset += width


def _levels(longest: int) -> int:
    """Span levels a window of `longest` values needs: widths 1, 2, 4, ... up to its top digit."""
    return max(int(longest), 1).bit_length()


@_compiled
def _window_sums(x: np.ndarray, windows: np.ndarray, outs: Any, levels: int) -> None:
    """window_sums, block by block: one block's span levels serve every window."""
    longest, shortest = windows.max(), windows.min()
    span = np.empty((levels, _BLOCK + longest - 1))
    for first in range(0, len(x) - shortest + 1, _BLOCK):
        _span_levels(x, first, min(_BLOCK + longest - 1, len(x) - first), False, span)
        for w in range(len(windows)):
            rows = min(_BLOCK, len(x) - windows[w] + 1 - first)
            if rows > 0:
                _tree_sums(span, windows[w], rows, outs[w], first)


@_compiled
def _is_flat(x: np.ndarray, first: int, n: int) -> bool:
    """Whether the n values from `first` on are all equal."""
    i = first + 1
    while i < first + n and x[i] == x[first]:
        i += 1
    return i == first + n


@_compiled
def _moments_from_sums(mean: np.ndarray, var: np.ndarray, n: int, ddof: int) -> None:
    """In place: window sums of x and of x * x become the mean and the variance (negatives from
    cancellation clipped to 0). Branch-free, so it vectorises: the two divisions dominate."""
    count, divisor = float(n), float(n - ddof)
    for t in range(np.uint64(len(mean))):
        m = mean[t] / count
        v = var[t] - m * m * count
        mean[t] = m
        var[t] = (0.0 if v < 0.0 else v) / divisor  # not max(): NaN stays NaN, as np.maximum


@_compiled
def _window_moments(
    x: np.ndarray, n: int, ddof: int, flat: float, mean: np.ndarray, var: np.ndarray, levels: int
) -> None:
    """window_moments, block by block: the sums of x and of x * x, then both moments."""
    span = np.empty((levels, _BLOCK + n - 1))
    for first in range(0, len(x) - n + 1, _BLOCK):
        rows = min(_BLOCK, len(x) - n + 1 - first)
        _span_levels(x, first, rows + n - 1, False, span)
        _tree_sums(span, n, rows, mean, first)
        _span_levels(x, first, rows + n - 1, True, span)
        _tree_sums(span, n, rows, var, first)
        _moments_from_sums(mean[first : first + rows], var[first : first + rows], n, ddof)
        for t in range(first, first + rows):
            if var[t] <= mean[t] * mean[t] * flat and _is_flat(x, t, n):
                var[t] = 0.0


def _check_outputs(x: np.ndarray, windows: Sequence[int], outs: Sequence[np.ndarray]) -> None:
    """The kernels run without bounds checks (a short `out` would be written past its end) and
    read x after writing earlier outputs (an `out` over x would feed back into later windows)."""
    for n, out in zip(windows, outs, strict=True):
        if n < 1 or len(out) != max(len(x) - n + 1, 0):
            raise ValueError(f"window {n} over {len(x)} values needs {len(x) - n + 1} outputs")
        if np.may_share_memory(out, x):
            raise ValueError("a window's output must not overlap its input")


def window_sums(x: np.ndarray, windows: Sequence[int], outs: Sequence[np.ndarray]) -> None:
    """outs[i][j] = x[j] + ... + x[j + n - 1] for n = windows[i] (len(x) - n + 1 values each,
    aligned to the window's first row; write them at row n - 1 on to align to its last).

    Each window sum is one fixed tree of additions over exactly its own values (the binary digits
    of n over power-of-two spans), with no running total: the value at t is bit-identical in batch
    and serving, rounding scales with the window, and a window of zero volumes sums to exactly 0.
    The spans are built per block of window ends and shared by all the windows of one call.
    """
    _check_outputs(x, windows, outs)
    if len(x) >= min(windows):
        _window_sums(x, np.asarray(windows, np.int64), tuple(outs), _levels(max(windows)))


def window_moments(
    x: np.ndarray, n: int, ddof: int, flat_std: float, mean: np.ndarray, var: np.ndarray
) -> None:
    """Mean and variance (divisor n - ddof) of each n consecutive values, aligned as window_sums.

    sum(x^2) - sum(x)^2/n cancels only within one window: about 1e-10 relative on real hourly
    prices. A window of equal prices would still leave noise of ~1e-8 of the price and send
    bb_position anywhere, so windows whose std is below flat_std of their mean are checked and
    set to exactly 0 when all their values are equal.
    """
    _check_outputs(x, (n, n), (mean, var))
    if len(x) >= n:
        _window_moments(x, n, ddof, flat_std**2, mean, var, _levels(n))
