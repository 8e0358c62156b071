"""The Austen corpus tool: R's serialization and lazy-load databases, read without R, on blobs built here.

No apt, no network: the bytes are written by a tiny R serializer in this file (XDR, version 3).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import pytest

import austen_corpus
import r_lazyload
from r_lazyload import INTSXP, LGLSXP, LISTSXP, REALSXP, STRSXP, VECSXP, RFormatError, RObject

SLICE = Path(__file__).resolve().parents[1] / "bimamba_edge" / "data" / "persuasion-slice.txt"


class RWriter:
    """Just enough of R's serialize() to build test data: flags, vectors, pairlists, symbol references."""

    def __init__(self):
        self.out = bytearray(b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8")
        self.symbols: list[str] = []

    def flags(self, kind: int, attr=False, tag=False, levels=0) -> None:
        self.out += struct.pack(">i", kind | attr << 9 | tag << 10 | levels << 12)

    def int(self, value: int) -> None:
        self.out += struct.pack(">i", value)

    def charsxp(self, text: str | None, encoding: str = "utf-8") -> None:
        if text is None:
            self.flags(9)
            self.int(-1)
            return
        raw = text.encode(encoding)
        levels = 64 if raw.isascii() else (4 if encoding == "latin-1" else 8)
        self.flags(9, levels=levels)
        self.int(len(raw))
        self.out += raw

    def symbol(self, name: str) -> None:
        if name in self.symbols:  # REFSXP, index packed into the flags
            self.int((self.symbols.index(name) + 1) << 8 | 255)
            return
        self.symbols.append(name)
        self.flags(1)
        self.charsxp(name)

    def attributes(self, attrs: dict) -> None:
        for tag, write_value in attrs.items():
            self.flags(LISTSXP, tag=True)
            self.symbol(tag)
            write_value()
        self.flags(254)  # NILVALUE ends the pairlist

    def strings(self, values, attrs: dict | None = None, encoding="utf-8") -> None:
        self.flags(STRSXP, attr=bool(attrs))
        self.int(len(values))
        for v in values:
            self.charsxp(v, encoding)
        if attrs:
            self.attributes(attrs)

    def ints(self, values, kind=INTSXP) -> None:
        self.flags(kind)
        self.int(len(values))
        for v in values:
            self.int(r_lazyload.NA_INTEGER if v is None else int(v))

    def reals(self, values) -> None:
        self.flags(REALSXP)
        self.int(len(values))
        self.out += struct.pack(f">{len(values)}d", *values)

    def named_list(self, items: dict) -> None:
        self.flags(VECSXP, attr=True)
        self.int(len(items))
        for write_value in items.values():
            write_value()
        self.attributes({"names": lambda: self.strings(list(items))})

    def compact_intseq(self, n: int, first: int) -> None:
        self.flags(238)  # ALTREP: info pairlist (class, package, type), state, attributes
        self.flags(LISTSXP)
        self.symbol("compact_intseq")
        self.flags(LISTSXP)
        self.symbol("base")
        self.flags(LISTSXP)
        self.ints([INTSXP])
        self.flags(254)
        self.reals([n, first, 1])
        self.flags(254)


def serialized(build) -> bytes:
    w = RWriter()
    build(w)
    return bytes(w.out)


def test_vectors_strings_encodings_and_na():
    data = serialized(lambda w: w.named_list({
        "text": lambda: w.strings(["plain", None, "", "caf\u00e9 \u2014"]),
        "latin1": lambda: w.strings(["na\u00efve"], encoding="latin-1"),
        "ints": lambda: w.ints([1, None, -7]),
        "flags": lambda: w.ints([1, 0, None], kind=LGLSXP),
        "reals": lambda: w.reals([0.5, -2.0]),
        "seq": lambda: w.compact_intseq(4, 10),
    }))
    value = r_lazyload.unserialize(data)
    assert isinstance(value, RObject) and value.type == VECSXP
    got = {name: v.value for name, v in value.as_dict().items()}
    assert got == {"text": ["plain", None, "", "caf\u00e9 \u2014"], "latin1": ["na\u00efve"], "ints": [1, None, -7],
                   "flags": [True, False, None], "reals": [0.5, -2.0], "seq": [10, 11, 12, 13]}


def test_symbol_references_resolve():
    """The second `names` tag is a REFSXP into the reference table."""
    data = serialized(lambda w: w.named_list({
        "a": lambda: w.strings(["x"], attrs={"names": lambda: w.strings(["first"])}),
    }))
    assert b"\x00\x00\x01\xff" in data  # REFSXP to reference 1 (the `names` symbol)
    inner = r_lazyload.unserialize(data).as_dict()["a"]
    assert inner.value == ["x"] and inner.names == ["first"]


@pytest.mark.parametrize("mangle, message", [
    (lambda d: b"A\n" + d[2:], "not XDR"),
    (lambda d: d[:-3], "truncated"),
    (lambda d: d + b"\x00", "bytes left"),
    (lambda d: d[:-4] + struct.pack(">i", 7 << 8 | 255), "points past"),  # final NILVALUE -> dangling ref
])
def test_malformed_input_is_a_clear_error(mangle, message):
    data = serialized(lambda w: w.strings(["a"], attrs={"names": lambda: w.strings(["n"])}))
    with pytest.raises(RFormatError, match=message):
        r_lazyload.unserialize(mangle(data))


def write_lazyload(directory: Path, variables: dict[str, bytes]) -> Path:
    """data/Rdata.rdb + .rdx as R's makeLazyLoadDB writes them (zlib entries, gzip'd index)."""
    blobs, keys, offset = bytearray(), {}, 0
    for name, data in variables.items():
        blob = struct.pack(">I", len(data)) + zlib.compress(data)
        keys[name] = (offset, len(blob))
        blobs += blob
        offset += len(blob)
    rdb = directory / "Rdata.rdb"
    rdb.write_bytes(bytes(blobs))
    index = serialized(lambda w: w.named_list({
        "variables": lambda: w.named_list({n: (lambda k=k: w.ints(list(k))) for n, k in keys.items()}),
        "references": lambda: w.named_list({}),
        "compressed": lambda: w.ints([1], kind=LGLSXP),
    }))
    rdb.with_suffix(".rdx").write_bytes(gzip.compress(index))
    return rdb


def test_lazyload_database_to_corpus(tmp_path):
    lines = {name: [f"{title.upper()}", "", "", f"Chapter 1 of {name}", "", "It was a  truth", "   universally",
                    "acknowledged.", "", None, "\"Yes.\"", ""]
             for name, (_, title) in austen_corpus.NOVELS.items()}
    rdb = write_lazyload(tmp_path, {name: serialized(lambda w, v=v: w.strings(v)) for name, v in lines.items()})
    decoded = r_lazyload.read_lazyload(rdb)
    assert {name: v.value for name, v in decoded.items()} == lines

    novels = austen_corpus.novels_from_rdb(rdb)
    assert novels["emma"] == "EMMA\nChapter 1 of emma\nIt was a truth universally acknowledged.\n\"Yes.\"\n"
    manifest = austen_corpus.write_corpus(novels, tmp_path / "corpus", {"package": "test"})
    assert sorted(manifest["files"]) == ["heldout/persuasion.txt"] + sorted(
        f"train/{stem}.txt" for name, (stem, _) in austen_corpus.NOVELS.items() if name != "persuasion")
    assert (tmp_path / "corpus" / "heldout" / "persuasion.txt").read_text().startswith("PERSUASION\n")


def test_missing_novel_is_named(tmp_path):
    rdb = write_lazyload(tmp_path, {"emma": serialized(lambda w: w.strings(["x"]))})
    with pytest.raises(austen_corpus.CorpusError, match="no character vector 'sensesensibility'"):
        austen_corpus.novels_from_rdb(rdb)


def test_paragraph_slice_cuts_at_a_paragraph_end():
    text = "one two\nthree\n" + "caf\u00e9 " * 10 + "\n"
    assert austen_corpus.paragraph_slice(text, 16) == "one two\nthree\n"
    assert austen_corpus.paragraph_slice(text, len(text.encode())) == text


def test_committed_slice_is_persuasion():
    text = SLICE.read_text(encoding="utf-8")
    assert text.startswith("Persuasion\nby\nJane Austen\n(1818)\nChapter 1\nSir Walter Elliot, of Kellynch Hall")
    assert text.endswith("\n") and 30_000 < len(text.encode()) <= austen_corpus.SLICE_BYTES
    assert "  " not in text and "\n\n" not in text
