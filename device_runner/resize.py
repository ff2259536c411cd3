"""Bilinear resize with anti-aliasing, bit-exact and the same in every runner (Python, JavaScript).

The algorithm is Pillow's `Image.resize(size, BILINEAR)` as written in its C source (libImaging/Resample.c:
`precompute_coeffs`, `normalize_coeffs_8bpc`, `ImagingResampleInner`): per axis, a triangle filter whose support
widens by the scale factor when shrinking, coefficients normalised to sum 1 then quantised to 22-bit fixed point
(PRECISION_BITS = 32 - 8 - 2); the horizontal pass first, over only the rows the vertical pass reads, into
uint8 (add 2^21, shift right by 22, clip to 0..255), then the vertical pass the same way.

Why not call Pillow: Pillow builds differ in the order of the two passes for some size pairs (13.0 runs the
vertical pass first for some, which changes pixels by 1), and a browser's canvas filters differently again.
Training and inference must see the same pixels on every runtime, so every runner implements this one written
algorithm (device_runner/web/src/preprocess.mjs is the JavaScript copy; tests compare the two, and both with
Pillow where Pillow runs the passes in the documented order).
"""

from __future__ import annotations

import math

import numpy as np

PRECISION_BITS = 22


def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first tap int64 [out], tap count int64 [out], fixed-point weights int64 [out, ksize] (0 beyond the
    count)) of one axis."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # bilinear filter support 1
    ksize = int(math.ceil(support)) * 2 + 1
    inv = 1.0 / filterscale
    first, count = np.zeros(out_size, np.int64), np.zeros(out_size, np.int64)
    kk = np.zeros((out_size, ksize), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [max(1.0 - abs((x + xmin - center + 0.5) * inv), 0.0) for x in range(xmax)]
        ww = sum(w)
        for x in range(xmax):
            v = w[x] / ww if ww != 0.0 else w[x]
            kk[xx, x] = int(v * (1 << PRECISION_BITS) + (0.5 if v >= 0 else -0.5))
        first[xx], count[xx] = xmin, xmax
    return first, count, kk


def _pass(img: np.ndarray, first: np.ndarray, kk: np.ndarray, axis: int, in_size: int) -> np.ndarray:
    """One axis of the resize: out[..., j, ...] = clip8(2^21 + sum_k img[..., first[j] + k, ...] * kk[j, k])."""
    acc = np.full(img.shape[:axis] + (len(first),) + img.shape[axis + 1:], 1 << (PRECISION_BITS - 1), np.int64)
    shape = [1] * img.ndim
    shape[axis] = len(first)
    for k in range(kk.shape[1]):
        idx = np.minimum(first + k, in_size - 1)  # taps beyond the count have weight 0
        acc += np.take(img, idx, axis=axis).astype(np.int64) * kk[:, k].reshape(shape)
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)


def resize_bilinear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [height, width, C] (C any; channels are filtered alike)."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img.copy()
    out = img
    if height != h:
        first_v, count_v, kk_v = coefficients(h, height)
    if width != w:
        first_h, _, kk_h = coefficients(w, width)
        rows = slice(0, h)
        if height != h:  # only the rows the vertical pass reads
            rows = slice(int(first_v[0]), int(first_v[-1] + count_v[-1]))
            first_v = first_v - rows.start
        out = _pass(out[rows], first_h, kk_h, 1, w)
        h = out.shape[0]
    if height != img.shape[0]:
        out = _pass(out, first_v, kk_v, 0, h)
    return out
