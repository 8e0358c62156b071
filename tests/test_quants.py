"""BM1's numpy definition: bit order, pack/unpack round trip, absmean quantization."""

from __future__ import annotations

import numpy as np
import pytest

from bimamba_edge import quants


def test_block_is_34_bytes_and_1_0625_bits_per_weight():
    assert quants.BLOCK_BYTES == 34
    assert quants.BLOCK_BYTES * 8 / quants.QK_BM1 == 1.0625 <= 1.07


def test_bit_plane_order():
    # only weight 33 positive: plane 1 (33 // 32) of byte 1 (33 % 32)
    positive = np.zeros((1, 256), bool)
    positive[0, 33] = True
    block = quants.pack(positive, np.ones((1, 1)))[0]
    assert block[:2].view(np.float16)[0] == 1.0
    assert block[2 + 1] == 0b10 and np.count_nonzero(block[2:]) == 1
    # weight 32*b + k is bit b of byte k
    for j in (0, 31, 32, 255, 224, 100):
        positive = np.zeros((1, 256), bool)
        positive[0, j] = True
        qs = quants.pack(positive, np.ones((1, 1)))[0, 2:]
        assert qs[j % 32] == 1 << (j // 32)


@pytest.mark.parametrize("rows,n", [(1, 256), (7, 1536), (3, 3072)])
def test_pack_unpack_round_trip(rows, n):
    rng = np.random.default_rng(0)
    positive = rng.random((rows, n)) < 0.5
    d = rng.random((rows, n // 256)).astype(np.float16).astype(np.float32)
    data = quants.pack(positive, d)
    assert data.shape == (rows, quants.row_bytes(n)) and data.dtype == np.uint8
    back_positive, back_d = quants.unpack(data)
    assert np.array_equal(back_positive, positive) and np.array_equal(back_d, d)
    expected = np.where(positive, 1, -1) * np.repeat(d, 256, axis=1)
    assert np.array_equal(quants.dequantize(data), expected.astype(np.float32))


def test_quantize_is_absmean_sign():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    x[0, :3] = 0.0  # zero counts as positive
    deq = quants.dequantize(quants.quantize(x))
    scale = np.abs(x).reshape(4, 2, 256).mean(axis=2).astype(np.float16).astype(np.float32)
    assert np.array_equal(deq, np.where(x >= 0, 1, -1) * np.repeat(scale, 256, axis=1))


def test_rows_must_be_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 256"):
        quants.pack(np.zeros((1, 200), bool), np.ones((1, 1)))
