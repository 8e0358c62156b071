"""The BM1 tensor type in numpy: the one Python definition of its block layout (docs/format.md).

A block holds 256 weights of a row: `ggml_half d` then `uint8 qs[32]`, 34 bytes (1.0625 bits per
weight). Weight j of a block is bit j // 32 of byte qs[j % 32]; bit 1 means +d, bit 0 means -d. So
bit-plane b of qs covers the 32 consecutive weights 32b .. 32b+31, which lets a kernel meet 32
consecutive int8 activations with one shift + AND per plane.
"""

from __future__ import annotations

import numpy as np

GGML_TYPE_BM1 = 128       # far above upstream's dense ids (42 in the pinned tree): see docs/format.md
LLAMA_FTYPE_MOSTLY_BM1 = 128
QK_BM1 = 256              # weights per block
QS_BYTES = QK_BM1 // 8    # 32 bytes of sign bits
BLOCK_BYTES = 2 + QS_BYTES
PLANES = 8                # bit b of every qs byte is one plane of 32 weights

_PLANE_WEIGHTS = (1 << np.arange(PLANES, dtype=np.uint8))[:, None]  # (8, 1): value of bit b


def row_bytes(n_per_row: int) -> int:
    return n_per_row // QK_BM1 * BLOCK_BYTES


def pack(positive: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Signs (True = +1) of shape (rows, n) and block scales (rows, n // 256) -> bytes (rows, row_bytes(n))."""
    rows, n = positive.shape
    if n % QK_BM1:
        raise ValueError(f"BM1 rows need a multiple of {QK_BM1} weights, got {n}")
    blocks = n // QK_BM1
    planes = positive.reshape(rows, blocks, PLANES, QS_BYTES).astype(np.uint8)
    qs = (planes * _PLANE_WEIGHTS).sum(axis=2, dtype=np.uint8)                  # (rows, blocks, 32)
    scale = np.asarray(d, dtype=np.float16).reshape(rows, blocks, 1).view(np.uint8)  # (rows, blocks, 2)
    return np.concatenate([scale, qs], axis=2).reshape(rows, blocks * BLOCK_BYTES)


def unpack(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bytes (rows, row_bytes) -> (signs as bool (rows, n), block scales as float32 (rows, n // 256))."""
    rows, nbytes = data.shape
    if nbytes % BLOCK_BYTES:
        raise ValueError(f"BM1 rows are a multiple of {BLOCK_BYTES} bytes, got {nbytes}")
    blocks = data.reshape(rows, nbytes // BLOCK_BYTES, BLOCK_BYTES)
    d = np.ascontiguousarray(blocks[:, :, :2]).view(np.float16)[:, :, 0].astype(np.float32)
    qs = blocks[:, :, None, 2:]                                                    # (rows, blocks, 1, 32)
    positive = (qs & _PLANE_WEIGHTS) != 0                                          # (rows, blocks, 8, 32)
    return positive.reshape(rows, -1), d


def dequantize(data: np.ndarray) -> np.ndarray:
    positive, d = unpack(data)
    rows, n = positive.shape
    signs = np.where(positive, np.float32(1), np.float32(-1)).reshape(rows, -1, QK_BM1)
    return (signs * d[:, :, None]).reshape(rows, n)


def quantize(x: np.ndarray) -> np.ndarray:
    """Post-training sign binarization, as ggml's quantize_row_bm1_ref: d = mean |x| per block, bit = x >= 0."""
    rows, n = x.shape
    if n % QK_BM1:
        raise ValueError(f"BM1 rows need a multiple of {QK_BM1} weights, got {n}")
    x = x.astype(np.float32)
    # mean in double, then float, then half: the same roundings as the C reference
    d = np.abs(x).reshape(rows, n // QK_BM1, QK_BM1).mean(axis=2, dtype=np.float64).astype(np.float32)
    return pack(x >= 0, d)
