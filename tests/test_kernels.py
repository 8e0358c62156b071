"""BM1 in C (the patched ggml) against its numpy definition, and ggml's own tests for the type.

Needs the built runtime (`bimamba-build`); fails without it.
"""

from __future__ import annotations

import numpy as np
import pytest

from bimamba_edge import ggml, quants
from bimamba_edge.build import KERNEL_TESTS, current_runtime
from conftest import assert_kernel_test_passes


def test_c_traits_match_the_python_definition():
    traits = ggml.traits(quants.GGML_TYPE_BM1)
    assert traits.type_name == b"bm1"
    assert (traits.blck_size, traits.type_size, traits.is_quantized) == (quants.QK_BM1, quants.BLOCK_BYTES, True)


def test_patched_gguf_py_agrees_with_the_python_definition():
    import gguf

    assert gguf.GGMLQuantizationType.BM1 == quants.GGML_TYPE_BM1
    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.BM1] == (quants.QK_BM1, quants.BLOCK_BYTES)
    assert gguf.LlamaFileType.MOSTLY_BM1 == quants.LLAMA_FTYPE_MOSTLY_BM1


def test_c_dequantizes_what_numpy_packs():
    rng = np.random.default_rng(0)
    rows, n = 5, 1536
    data = quants.pack(rng.random((rows, n)) < 0.5, rng.random((rows, n // 256)) * 3)
    np.testing.assert_array_equal(ggml.dequantize(data, quants.GGML_TYPE_BM1), quants.dequantize(data))


def test_c_quantizes_like_numpy():
    rng = np.random.default_rng(1)
    rows, n = 6, 3072
    x = rng.standard_normal((rows, n)).astype(np.float32) * rng.random((rows, 1)).astype(np.float32)
    x[0, :10] = 0.0
    np.testing.assert_array_equal(ggml.quantize(x, quants.GGML_TYPE_BM1), quants.quantize(x))


@pytest.mark.parametrize("test", KERNEL_TESTS)
def test_ggml_tests_pass_for_bm1(test):
    assert_kernel_test_passes([str(current_runtime().binary(test))], test, "native")
