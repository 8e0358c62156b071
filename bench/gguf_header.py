"""A GGUF header reader of our own: metadata and tensor placement, nothing else.

The benchmark has to describe files on machines where only a llama-bench binary and this package exist
(no patched gguf-py, so no knowledge of BM1's type id there). Everything it needs is in the header:
metadata values, and each tensor's name, shape, type id and offset. A tensor's size in the file is the
distance to the next tensor's offset (or to the end of the file), which includes at most
`general.alignment - 1` bytes of padding: for byte counts per token that is noise (< 0.01 %).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from bimamba_edge.errors import BimambaError
from bimamba_edge.quants import GGML_TYPE_BM1
from bimamba_edge.runtime import STATE_F16_KEY

# ggml type ids -> names, as in ggml.h of the pinned llama.cpp, plus our BM1
GGML_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
                   10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
                   17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
                   23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
                   34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0", 42: "Q2_0", GGML_TYPE_BM1: "BM1"}

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
KEEP_ARRAY = 64  # longer arrays (the vocabulary) are skipped and kept as their length only


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int      # absolute, in the file
    nbytes: int      # up to the next tensor (padding included, see module doc)

    @property
    def type_name(self) -> str:
        return GGML_TYPE_NAMES.get(self.type_id, f"type{self.type_id}")

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict = field(default_factory=dict)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    file_bytes: int = 0

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", "(none)"))

    def arch_value(self, key: str, default=None):
        return self.metadata.get(f"{self.arch}.{key}", default)

    @property
    def state_f16(self) -> bool:
        """The file asks for an f16 SSM state cache (bimamba-convert --state-type f16)."""
        return bool(self.metadata.get(STATE_F16_KEY, False))


class _Reader:
    def __init__(self, f, path: Path):
        self.f, self.path = f, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        raw = self.f.read(size)
        if len(raw) != size:
            raise BimambaError(f"{self.path}: GGUF header cut short")
        return struct.unpack(fmt, raw)[0]

    def string(self) -> str:
        n = self.take("<Q")
        if n > 1 << 24:
            raise BimambaError(f"{self.path}: implausible string length {n} in GGUF header")
        raw = self.f.read(n)
        if len(raw) != n:
            raise BimambaError(f"{self.path}: GGUF header cut short")
        return raw.decode("utf-8", "replace")

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.take("<I"), self.take("<Q")
            if etype in _SCALARS and n > KEEP_ARRAY:  # skip fixed-size elements in one seek
                self.f.seek(n * struct.calcsize(_SCALARS[etype]), 1)
                return {"array_length": n}
            items = [self.value(etype) for _ in range(n)]
            return items if n <= KEEP_ARRAY else {"array_length": n}
        raise BimambaError(f"{self.path}: unknown GGUF value type {vtype}")


def read_header(path: str | Path) -> GGUFHeader:
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise BimambaError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        r = _Reader(f, path)
        if f.read(4) != b"GGUF":
            raise BimambaError(f"{path}: not a GGUF file")
        header = GGUFHeader(path, r.take("<I"), file_bytes=path.stat().st_size)
        n_tensors, n_kv = r.take("<Q"), r.take("<Q")
        for _ in range(n_kv):
            key = r.string()
            header.metadata[key] = r.value(r.take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = r.string()
            dims = tuple(r.take("<Q") for _ in range(r.take("<I")))
            infos.append((name, dims, r.take("<I"), r.take("<Q")))
        align = int(header.metadata.get("general.alignment", 32))
        data_start = -(-f.tell() // align) * align
    ordered = sorted(infos, key=lambda t: t[3])
    ends = [t[3] for t in ordered[1:]] + [header.file_bytes - data_start]
    for (name, dims, type_id, offset), end in zip(ordered, ends):
        header.tensors[name] = TensorInfo(name, dims, type_id, data_start + offset, end - offset)
    return header
