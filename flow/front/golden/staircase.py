"""Staircase fits: a threshold node's count computed by a few float32 ops instead of K compares.

Two forms, each fitted per channel and then checked in float32, exactly as ONNX Runtime computes
it, on *every* integer of the input's proven range (a channel that fails is reported, never used):

* :func:`fit_staircase`: ``clip(floor(x * m + c), 0, K)``, the golden model's elementwise form
  of a multi-level threshold;
* :func:`fit_requant_staircase`: the uint8 requantisation of ONNX Runtime's ``QLinearConv``,
  made to compute a conv's threshold in the same kernel
  (:func:`flow.front.golden.fusion.qlinear_convs`).
"""

from __future__ import annotations

import numpy as np

UINT8 = (0, 255)
"""The range of a uint8 tensor (``QLinearConv``'s input and output)."""


def fit_requant_staircase(thr: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                           zp: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per channel a float32 ``S > 0`` and an integer ``B`` with, for every integer ``acc`` of
    the channel's proven range ``[lo, hi]`` and ``y = d acc``,
    ``clip(rint(clamp(f32(f32(y + B) * S), -zp, 255 - zp)) + zp, 0, K) == sum_k [y >= t_k]``
    (ONNX Runtime's uint8 requantisation, then the Clip); None when a channel has none.

    Away from ties ``rint(S (y + B)) + zp == floor(S y + c)`` with ``c = S B + zp + 0.5``. Each
    count ``v`` taken on ``[y_v, Y_v]`` needs ``S y_v + c >= v`` and ``S Y_v + c < v + 1``: for a
    slope ``S`` inside the feasible interval (around the widest gap, :func:`_widest_slope`) that
    is a window for ``c``, so for ``B``; slopes across the interval are tried until one leaves an
    integer ``B`` well inside its window, and the float32 arithmetic is then checked on the
    whole range."""
    C, K = thr.shape
    S_out = np.zeros(C, np.float32)
    B_out = np.zeros(C, np.int64)
    for ch in range(C):
        x = np.arange(int(lo[ch]), int(hi[ch]) + 1, dtype=np.int64)
        y = int(d[ch]) * x
        n = (y[:, None] >= thr[ch][None, :]).sum(1)
        lows, ups = [], []
        for v in np.unique(n):
            yv = y[n == v]
            if v > 0:
                lows.append((int(yv.min()), int(v)))
            if v < K:
                ups.append((int(yv.max()), int(v) + 1))
        m = _widest_slope(lows, ups)
        if m is None:
            return None
        if not lows or not ups:  # a constant count: any slope
            m = max(m, 1.0 / (float(np.max(np.abs(y))) + 2.0))
        yl, vl = np.array([p[0] for p in lows], float), np.array([p[1] for p in lows], float)
        yu, vu = np.array([p[0] for p in ups], float), np.array([p[1] for p in ups], float)

        ends = []  # the feasible slopes: an interval around m (the gap is concave in S)
        for far in (m * 1e-3, min(2.0, 4 * m + 1)):
            inside, out = m, far
            for _ in range(60):
                mid = (inside + out) / 2
                c_lo, c_hi = _c_window(np.array([mid]), yl, vl, yu, vu)
                inside, out = (mid, out) if c_hi[0] > c_lo[0] else (inside, mid)
            ends.append(inside)
        s = np.linspace(ends[0], ends[1], 2049)[1:-1]
        s = np.concatenate([[m], s[np.argsort(np.abs(s - m))]]).astype(np.float32)
        s = s[s > 0].astype(np.float64)
        c_lo, c_hi = _c_window(s, yl, vl, yu, vu)
        c_lo = np.where(np.isfinite(c_lo), c_lo, c_hi - 1.0)
        c_hi = np.where(np.isfinite(c_hi), c_hi, c_lo + 1.0)
        b = np.round(((c_lo + c_hi) / 2 - zp - 0.5) / s)  # c = S B + zp + 0.5, mid-window
        c = s * b + zp + 0.5
        margin = np.minimum(c - c_lo, c_hi - c)
        got = None
        for i in np.flatnonzero(margin > 1e-4)[:16]:
            S, B = np.float32(s[i]), int(b[i])
            r = y + B
            if np.max(np.abs(r)) >= 2 ** 24:  # int32 -> float32 exact
                continue
            v = np.clip(r.astype(np.float32) * S, np.float32(-zp), np.float32(UINT8[1] - zp))
            if np.array_equal(np.clip(np.rint(v).astype(np.int64) + zp, 0, K), n):
                got = (S, B)
                break
        if got is None:
            return None
        S_out[ch], B_out[ch] = got
    return S_out, B_out


def _c_window(s: np.ndarray, yl, vl, yu, vu) -> tuple[np.ndarray, np.ndarray]:
    """For each slope ``s``, the window ``[c_lo, c_hi)`` of offsets ``c`` with ``s y + c >= v``
    at every lower constraint ``(yl, vl)`` and ``s y + c < v`` at every upper one ``(yu, vu)``."""
    c_hi = (np.min(vu[None, :] - s[:, None] * yu[None, :], axis=1) if len(yu) else
            np.full(len(s), np.inf))
    c_lo = (np.max(vl[None, :] - s[:, None] * yl[None, :], axis=1) if len(yl) else
            np.full(len(s), -np.inf))
    return c_lo, c_hi


def _widest_slope(lows: list, ups: list) -> float | None:
    """The slope ``m >= 0`` maximising ``min_up(v - m y) - max_low(v - m y)`` (the gap left for
    ``c``), when that gap is positive; None otherwise (no staircase)."""
    cand = {0.0, 1.0, 2.0}
    for lines in (lows, ups):
        for i, (y1, v1) in enumerate(lines):
            for y2, v2 in lines[i + 1:]:
                if y1 != y2:
                    r = (v1 - v2) / (y1 - y2)
                    if 0 <= r <= 2:
                        cand.add(r)
    ms = np.array(sorted(cand))
    g_hi = (np.min([v - ms * yy for yy, v in ups], axis=0) if ups else np.full(len(ms), np.inf))
    g_lo = (np.max([v - ms * yy for yy, v in lows], axis=0) if lows else np.full(len(ms), -np.inf))
    gap = g_hi - g_lo
    i = int(np.argmax(gap))
    return float(ms[i]) if gap[i] > 0 else None


def fit_staircase(thr: np.ndarray, d: np.ndarray, vals: np.ndarray, cnt: np.ndarray,
                  base: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per-channel float32 ``(m, c)`` with ``clip(floor(x * m + c), shift, shift + K) == cnt +
    shift`` for every integer ``x`` of ``vals`` (C, L), computed exactly as ONNX Runtime computes
    it (float32 Mul, then Add, then Floor), the mask of the channels where that holds (the others,
    e.g. a quantizer whose ties round to even on integer inputs, need the table), and ``shift``:
    a nonzero integer ``base`` (the node's) when the same channels hold with it (the clip's bounds
    then carry the base, saving an Add), else 0.

    For ``y = d x`` and integer thresholds ``t_k = ceil(a + (k - 1) b)`` (``b > 0``), ``y >= t_k``
    iff ``y >= a + (k - 1) b``, so the count is ``clip(floor((y - a) / b) + 1, 0, K)``: ``a, b``
    are taken from the middle of the intervals the K thresholds allow."""
    C, K = thr.shape
    m = np.zeros(C, np.float64)
    c = np.zeros(C, np.float64)
    fitted = np.zeros(C, bool)
    for ch in range(C):
        t = np.sort(thr[ch].astype(np.float64))
        y = d[ch] * vals[ch].astype(np.float64)
        y_lo, y_hi = float(y.min()), float(y.max())
        # thresholds outside the input's range (clamped to it by the IR) are met always or never:
        # only the ones inside it pin the staircase; the check below covers the others
        inside = np.flatnonzero((t > y_lo) & (t <= y_hi))
        if len(inside) == 0:  # a constant count
            m[ch], c[ch], fitted[ch] = 0.0, float(np.sum(t <= y_lo)) + 0.5, True
            continue
        k, tk = inside.astype(np.float64), t[inside]
        if len(inside) == 1:  # one step: the others far outside the range
            b = y_hi - y_lo + 2.0
            a = tk[0] - k[0] * b - 0.5
        else:
            gap = k[None, :] - k[:, None]  # j - i
            upper = gap > 0
            diff = tk[None, :] - tk[:, None]
            b_lo = np.max((diff - 1)[upper] / gap[upper])
            b_hi = np.min((diff + 1)[upper] / gap[upper])
            if not b_lo < b_hi or b_hi <= 0:
                continue
            b = (b_lo + b_hi) / 2 if b_lo > 0 else b_hi / 2
            a_lo, a_hi = np.max(tk - 1 - k * b), np.min(tk - k * b)
            if not a_lo < a_hi:
                continue
            a = (a_lo + a_hi) / 2
        m[ch], c[ch], fitted[ch] = d[ch] / b, 1.0 - a / b, True
    m32 = m.astype(np.float32)

    def check(shift: float) -> tuple[np.ndarray, np.ndarray]:
        c32 = (c + shift).astype(np.float32)
        z = vals.astype(np.float32) * m32[:, None]
        z = z + c32[:, None]
        got = np.clip(np.floor(z), np.float32(shift), np.float32(shift + K))
        return c32, fitted & np.all(got == (cnt + shift).astype(np.float32), axis=1)

    c32, ok = check(0.0)
    if base != 0 and base == np.round(base):
        c_b, ok_b = check(base)
        if np.array_equal(ok_b, ok):
            return m32, c_b, ok, base
    return m32, c32, ok, 0.0

