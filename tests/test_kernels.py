"""BM1 in C (the patched ggml) against its numpy definition, and ggml's own tests for the type.

Needs the built runtime (`bimamba-build`); fails without it.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys

import numpy as np
import pytest

from bimamba_edge import quants
from bimamba_edge.build import current_runtime


class TypeTraits(ctypes.Structure):  # struct ggml_type_traits (ggml.h)
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64), ("blck_size_interleave", ctypes.c_int64),
                ("type_size", ctypes.c_size_t), ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


@pytest.fixture(scope="module")
def ggml_base():
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    lib = ctypes.CDLL(str(current_runtime().binary("libggml-base" + suffix)))
    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def test_c_traits_match_the_python_definition(ggml_base):
    traits = ggml_base.ggml_get_type_traits(quants.GGML_TYPE_BM1).contents
    assert traits.type_name == b"bm1"
    assert (traits.blck_size, traits.type_size, traits.is_quantized) == (quants.QK_BM1, quants.BLOCK_BYTES, True)


def test_c_dequantizes_what_numpy_packs(ggml_base):
    rng = np.random.default_rng(0)
    rows, n = 5, 1536
    data = quants.pack(rng.random((rows, n)) < 0.5, rng.random((rows, n // 256)) * 3)
    to_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
        ggml_base.ggml_get_type_traits(quants.GGML_TYPE_BM1).contents.to_float)
    out = np.empty((rows, n), np.float32)
    to_float(data.ctypes.data, out.ctypes.data, rows * n)
    np.testing.assert_array_equal(out, quants.dequantize(data))


def test_c_quantizes_like_numpy(ggml_base):
    rng = np.random.default_rng(1)
    rows, n = 6, 3072
    x = rng.standard_normal((rows, n)).astype(np.float32) * rng.random((rows, 1)).astype(np.float32)
    x[0, :10] = 0.0
    out = np.empty((rows, quants.row_bytes(n)), np.uint8)
    written = ggml_base.ggml_quantize_chunk(quants.GGML_TYPE_BM1, x.ctypes.data, out.ctypes.data, 0, rows, n, None)
    assert written == out.nbytes
    np.testing.assert_array_equal(out, quants.quantize(x))


@pytest.mark.parametrize("test", ["test-bm1", "test-quantize-fns"])
def test_ggml_tests_pass_for_bm1(test):
    proc = subprocess.run([str(current_runtime().binary(test))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if test == "test-quantize-fns":
        assert "bm1" in proc.stdout + proc.stderr  # the type really was among those tested
