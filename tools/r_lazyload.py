"""Read R data without R: the XDR serialization format and lazy-load databases (`Rdata.rdb` + `.rdx`).

An installed R package keeps its data sets in `data/Rdata.rdb`, a concatenation of compressed
serialized objects, indexed by `data/Rdata.rdx`, itself a gzip'd serialized list:
`list(variables = list(name = c(offset, length), ...), references = list(...), compressed = ...)`.

Serialization (R's serialize.c, format "X\\n", versions 2 and 3), the subset needed for data: every
item starts with a 32-bit big-endian flags word, `type = flags & 0xff`, `object = flags & 1<<8`,
`has attributes = flags & 1<<9`, `has tag = flags & 1<<10`, `levels = flags >> 12`. Vectors are a length
then their elements, then the attribute pairlist; pairlists are attributes, tag, CAR, then the CDR as
the next item. Symbols and environments enter a reference table that later REFSXP items index.

Values come back as `RObject(type, value, attributes)`: `value` is a list for vectors (`None` for NA
strings), a list of `(tag, value)` for pairlists, a str for symbols. NULL is `None`.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# SEXP types
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP, STRSXP, DOTSXP = 9, 10, 13, 14, 15, 16, 17
VECSXP, EXPRSXP, RAWSXP, S4SXP = 19, 20, 24, 25
# serialization-only pseudo types
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP, MISSINGARG_SXP = 255, 254, 253, 252, 251
BASENAMESPACE_SXP, NAMESPACESXP, PACKAGESXP, PERSISTSXP = 250, 249, 248, 247
EMPTYENV_SXP, BASEENV_SXP, ATTRLANGSXP, ATTRLISTSXP, ALTREP_SXP = 242, 241, 240, 239, 238

NA_INTEGER = -(2**31)
_PAIRLISTS = {LISTSXP: LISTSXP, LANGSXP: LANGSXP, CLOSXP: CLOSXP, PROMSXP: PROMSXP, DOTSXP: DOTSXP,
              ATTRLISTSXP: LISTSXP, ATTRLANGSXP: LANGSXP}
_SPECIALS = {GLOBALENV_SXP: "R_GlobalEnv", UNBOUNDVALUE_SXP: "R_UnboundValue", MISSINGARG_SXP: "R_MissingArg",
             BASENAMESPACE_SXP: "R_BaseNamespace", EMPTYENV_SXP: "R_EmptyEnv", BASEENV_SXP: "R_BaseEnv"}
# CHARSXP encoding bits (in levels)
_BYTES, _LATIN1, _UTF8, _ASCII = 1 << 1, 1 << 2, 1 << 3, 1 << 6


class RFormatError(ValueError):
    """Input that is not R serialization this reader understands; the message names the byte offset."""


@dataclass
class RObject:
    type: int
    value: Any
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str] | None:
        names = self.attributes.get("names")
        return names.value if isinstance(names, RObject) else None

    def as_dict(self) -> dict[str, Any]:
        """A named list (or pairlist) as {name: value}."""
        if self.type in (LISTSXP, LANGSXP):
            return {tag: value for tag, value in self.value}
        names = self.names
        if names is None or len(names) != len(self.value):
            raise RFormatError(f"R object of type {self.type} has no names")
        return dict(zip(names, self.value))


@dataclass(frozen=True)
class RSpecial:
    """An environment or marker the data refers to but does not hold (global env, a package, ...)."""

    what: str


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.refs: list[Any] = []
        self.native_encoding = "UTF-8"

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise RFormatError(f"truncated: {n} bytes wanted at byte offset {self.pos} of {len(self.data)}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self._take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more words, upper then lower half
            upper, lower = struct.unpack(">II", self._take(8))
            n = upper << 32 | lower
        elif n < 0:
            raise RFormatError(f"negative length {n} at byte offset {self.pos - 4}")
        return n

    def header(self) -> None:
        magic = self._take(2)
        if magic != b"X\n":
            raise RFormatError(f"serialization format {magic!r} is not XDR ('X\\n'); only XDR is supported")
        version = self.int()
        self.int()  # R version that wrote it
        self.int()  # oldest R version that can read it
        if version == 3:
            self.native_encoding = self._take(self.int()).decode("ascii", "replace")
        elif version != 2:
            raise RFormatError(f"serialization version {version} (only 2 and 3 exist)")

    def item(self) -> Any:
        start = self.pos
        flags = self.int()
        kind = flags & 0xFF
        has_attr, levels = bool(flags & 1 << 9), flags >> 12
        if kind == NILVALUE_SXP:
            return None
        if kind in _SPECIALS:
            return RSpecial(_SPECIALS[kind])
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            if not 1 <= index <= len(self.refs):
                raise RFormatError(f"reference {index} at byte offset {start} points past the "
                                   f"{len(self.refs)} entries of the reference table")
            return self.refs[index - 1]
        if kind in (PERSISTSXP, PACKAGESXP, NAMESPACESXP):
            names = self._string_vector()
            value = RSpecial({PERSISTSXP: "persistent", PACKAGESXP: "package",
                              NAMESPACESXP: "namespace"}[kind] + ":" + ":".join(str(n) for n in names))
            self.refs.append(value)
            return value
        if kind == SYMSXP:
            name = self.item()
            if not isinstance(name, str):
                raise RFormatError(f"symbol at byte offset {start} has no name string")
            symbol = RObject(SYMSXP, name)
            self.refs.append(symbol)
            return symbol
        if kind == ENVSXP:
            env = RObject(ENVSXP, {})
            self.refs.append(env)  # enters the table before its contents, which may refer to it
            locked = self.int()
            env.value = {"locked": bool(locked), "enclos": self.item(), "frame": self.item(),
                         "hashtab": self.item()}
            env.attributes = self._attributes(self.item())
            return env
        if kind in _PAIRLISTS:
            return self._pairlist(flags, start)
        if kind == CHARSXP:
            return self._charsxp(levels, start)
        if kind == ALTREP_SXP:
            return self._altrep(start)
        if kind in (LGLSXP, INTSXP):
            n = self.length()
            raw = struct.unpack(f">{n}i", self._take(4 * n))
            value = [None if v == NA_INTEGER else (bool(v) if kind == LGLSXP else v) for v in raw]
        elif kind == REALSXP:
            n = self.length()
            value = list(struct.unpack(f">{n}d", self._take(8 * n)))
        elif kind == CPLXSXP:
            n = self.length()
            parts = struct.unpack(f">{2 * n}d", self._take(16 * n))
            value = [complex(parts[2 * i], parts[2 * i + 1]) for i in range(n)]
        elif kind == RAWSXP:
            value = self._take(self.length())
        elif kind == STRSXP:
            value = [self._string_element(i) for i in range(self.length())]
        elif kind in (VECSXP, EXPRSXP):
            value = [self.item() for _ in range(self.length())]
        elif kind == S4SXP:
            value = None
        else:
            raise RFormatError(f"unsupported R object type {kind} at byte offset {start}")
        attributes = self._attributes(self.item()) if has_attr else {}
        return RObject(kind, value, attributes)

    def _string_element(self, i: int) -> str | None:
        start = self.pos
        flags = self.int()
        if flags & 0xFF != CHARSXP:
            raise RFormatError(f"element {i} of a character vector at byte offset {start} is type "
                               f"{flags & 0xFF}, not a string")
        return self._charsxp(flags >> 12, start)

    def _string_vector(self) -> list[str | None]:
        if self.int() != 0:
            raise RFormatError(f"malformed name vector at byte offset {self.pos - 4}")
        return [self._string_element(i) for i in range(self.int())]

    def _charsxp(self, levels: int, start: int) -> str | None:
        n = self.int()
        if n == -1:
            return None  # NA_character_
        raw = self._take(n)
        if levels & _LATIN1:
            return raw.decode("latin-1")
        if levels & _BYTES:
            return raw.decode("latin-1")  # raw bytes: one char per byte, nothing lost
        encoding = "utf-8" if levels & (_UTF8 | _ASCII) else self.native_encoding
        try:
            return raw.decode(encoding)
        except (UnicodeDecodeError, LookupError) as e:
            raise RFormatError(f"string at byte offset {start} is not valid {encoding} ({e})") from None

    def _pairlist(self, flags: int, start: int) -> RObject:
        """A pairlist read iteratively (long ones would exhaust recursion): [(tag, value), ...]."""
        kind = _PAIRLISTS[flags & 0xFF]
        cells: list[tuple[str | None, Any]] = []
        attributes: dict[str, Any] = {}
        while True:
            has_attr = bool(flags & 1 << 9) or flags & 0xFF in (ATTRLISTSXP, ATTRLANGSXP)
            has_tag = bool(flags & 1 << 10)
            cell_attr = self._attributes(self.item()) if has_attr else {}
            if not cells:
                attributes = cell_attr
            tag = self.item() if has_tag else None
            if tag is not None and not (isinstance(tag, RObject) and tag.type == SYMSXP):
                raise RFormatError(f"pairlist tag near byte offset {start} is not a symbol")
            cells.append((tag.value if tag is not None else None, self.item()))
            next_start = self.pos
            flags = self.int()
            if flags & 0xFF not in _PAIRLISTS or _PAIRLISTS[flags & 0xFF] != kind:
                self.pos = next_start
                tail = self.item()
                if tail is not None:
                    raise RFormatError(f"dotted pairlist (CDR of type {type(tail).__name__}) "
                                       f"at byte offset {next_start}")
                return RObject(kind, cells, attributes)

    def _attributes(self, pairlist: Any) -> dict[str, Any]:
        if pairlist is None:
            return {}
        if not isinstance(pairlist, RObject) or pairlist.type != LISTSXP:
            raise RFormatError(f"attributes before byte offset {self.pos} are not a pairlist")
        return {tag: value for tag, value in pairlist.value}

    def _altrep(self, start: int) -> RObject:
        """The ALTREP classes base R writes for data: compact sequences, wrappers, deferred strings."""
        info = self.item()
        state = self.item()
        attributes = self._attributes(self.item())
        try:
            cls = info.value[0][1].value
        except (AttributeError, IndexError, TypeError):
            raise RFormatError(f"malformed ALTREP header at byte offset {start}") from None
        if cls in ("compact_intseq", "compact_realseq"):
            n, first, step = (int(v) for v in state.value[:3])
            values = [first + step * i for i in range(n)]
            return RObject(INTSXP if cls == "compact_intseq" else REALSXP,
                           values if cls == "compact_intseq" else [float(v) for v in values], attributes)
        if cls.startswith("wrap_"):  # state: pairlist (wrapped vector, metadata)
            inner = state.value[0][1]
            return RObject(inner.type, inner.value, attributes or inner.attributes)
        if cls == "deferred_string":  # state: pairlist (original vector, ...): R's as.character
            inner = state.value[0][1]
            values = [None if v is None else (str(v) if inner.type == INTSXP else repr(v)) for v in inner.value]
            return RObject(STRSXP, values, attributes)
        raise RFormatError(f"unsupported ALTREP class {cls!r} at byte offset {start}")


def unserialize(data: bytes) -> Any:
    """One object from R's serialization bytes (XDR; what `serialize()` and `saveRDS()` write, uncompressed)."""
    reader = _Reader(bytes(data))
    reader.header()
    value = reader.item()
    if reader.pos != len(reader.data):
        raise RFormatError(f"{len(reader.data) - reader.pos} bytes left after the object at byte offset {reader.pos}")
    return value


def read_rds(path: str | Path) -> Any:
    """An .rds file (gzip, bzip2, xz or uncompressed serialization)."""
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif data[:3] == b"BZh":
        data = bz2.decompress(data)
    elif data[:6] == b"\xfd7zXZ\x00":
        data = lzma.decompress(data)
    return unserialize(data)


def _decompress_blob(blob: bytes, compressed: Any, where: str) -> bytes:
    """One lazy-load entry: a 4-byte big-endian uncompressed length, then (for type 2/3) a method byte."""
    if len(blob) < 4:
        raise RFormatError(f"{where}: entry of {len(blob)} bytes has no length header")
    size = struct.unpack(">I", blob[:4])[0]
    body = blob[4:]
    if compressed in (2, 3):
        method, body = body[:1], body[1:]
        if method == b"0":
            data = body
        elif method == b"Z":
            data = zlib.decompress(body)
        elif method == b"2":
            data = bz2.decompress(body)
        elif method == b"X":
            data = lzma.decompress(body)
        else:
            raise RFormatError(f"{where}: unknown compression method {method!r}")
    elif compressed in (True, 1):
        data = zlib.decompress(body)
    else:
        raise RFormatError(f"{where}: unsupported compression setting {compressed!r}")
    if len(data) != size:
        raise RFormatError(f"{where}: decompressed to {len(data)} bytes, header says {size}")
    return data


def read_lazyload(rdb: str | Path) -> dict[str, Any]:
    """Every variable of a lazy-load database, by name: `read_lazyload("data/Rdata.rdb")`."""
    rdb = Path(rdb)
    index = read_rds(rdb.with_suffix(".rdx"))
    if not isinstance(index, RObject):
        raise RFormatError(f"{rdb.with_suffix('.rdx')}: not a lazy-load index")
    entries = index.as_dict()
    compressed = entries.get("compressed")
    compressed = compressed.value[0] if isinstance(compressed, RObject) else True
    data = rdb.read_bytes()
    out = {}
    for name, key in entries["variables"].as_dict().items():
        offset, length = (int(v) for v in key.value)
        if offset < 0 or offset + length > len(data):
            raise RFormatError(f"{rdb}: entry {name!r} lies outside the file")
        out[name] = unserialize(_decompress_blob(data[offset:offset + length], compressed, f"{rdb}: {name}"))
    return out
