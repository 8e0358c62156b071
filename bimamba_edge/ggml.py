"""ggml's own type traits and quantizers, from the patched build's libggml-base through ctypes.

Used where the converter needs a type numpy does not implement (Q6_K heads), by the runtime's preflight
(ggml's own row validation), and by the tests that hold the C layout of BM1 against its numpy definition and
that name the graph ops a decode ran.
"""

from __future__ import annotations

import ctypes
import functools
import sys

import numpy as np

from .build import current_runtime


class TypeTraits(ctypes.Structure):  # struct ggml_type_traits (ggml.h)
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64), ("blck_size_interleave", ctypes.c_int64),
                ("type_size", ctypes.c_size_t), ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p),
                ("from_float_ref", ctypes.c_void_p)]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@functools.cache
def libggml_base() -> ctypes.CDLL:
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    lib = ctypes.CDLL(str(current_runtime().binary("libggml-base" + suffix)))
    lib.ggml_get_type_traits.restype = ctypes.POINTER(TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_validate_row_data.restype = ctypes.c_bool
    lib.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_op_desc.restype = ctypes.c_char_p
    lib.ggml_op_desc.argtypes = [ctypes.c_void_p]
    return lib


def traits(ggml_type: int) -> TypeTraits:
    return libggml_base().ggml_get_type_traits(ggml_type).contents


def quantize(x: np.ndarray, ggml_type: int) -> np.ndarray:
    """Rows of float32 -> bytes (rows, row size) with ggml's reference quantizer for the type."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    t = traits(ggml_type)
    out = np.empty((rows, n // t.blck_size * t.type_size), np.uint8)
    libggml_base().ggml_quantize_chunk(ggml_type, x.ctypes.data, out.ctypes.data, 0, rows, n, None)
    return out


def dequantize(data: np.ndarray, ggml_type: int) -> np.ndarray:
    t = traits(ggml_type)
    rows = data.shape[0]
    n = data.shape[1] // t.type_size * t.blck_size
    out = np.empty((rows, n), np.float32)
    _TO_FLOAT(t.to_float)(np.ascontiguousarray(data).ctypes.data, out.ctypes.data, rows * n)
    return out


def validate_row_data(ggml_type: int, data: np.ndarray) -> bool:
    """ggml's check of stored tensor data (NaN/inf values or block scales); it prints its finding to stderr."""
    data = np.ascontiguousarray(data)
    return bool(libggml_base().ggml_validate_row_data(ggml_type, data.ctypes.data, data.nbytes))
