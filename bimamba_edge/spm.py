"""SentencePiece `tokenizer.model` files without the sentencepiece or protobuf packages.

A `.model` file is a serialized `ModelProto` (sentencepiece_model.proto, proto2): a repeated
`SentencePiece pieces = 1`, then `TrainerSpec trainer_spec = 2` and `NormalizerSpec
normalizer_spec = 3`. This module reads and writes that wire format, rebuilds LLaMA-2's
tokenizer.model from llama.cpp's test vocab, trains small BPE models for llama.cpp's SPM
tokenizer, and tokenizes exactly as llama.cpp's SPM tokenizer does (`Tokenizer`).

Proto2 keeps presence: a field that was never set is not written, even when it holds the default.
So the two specs are kept as dicts of only the fields that are set. serialize(parse(data)) == data
for files written the way sentencepiece writes them: fields in number order, each piece with a
score and with a type only when not NORMAL, no fields unknown to the tables below.
"""

from __future__ import annotations

import re
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import IntEnum
from heapq import heapify, heappop, heappush
from pathlib import Path
from typing import Any

try:
    import gguf
except ImportError:  # a training machine may lack gguf-py: only token_types and the LLaMA-2 rebuild need it
    gguf = None


class PieceType(IntEnum):
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class ModelType(IntEnum):
    UNIGRAM = 1
    BPE = 2
    WORD = 3
    CHAR = 4


@dataclass
class Piece:
    text: str
    score: float
    type: PieceType


# Field number -> (name, kind), in field-number order, which is also the order protobuf writes
# them in. "strings" is a repeated string; enums are stored as "int32".
TRAINER_SPEC_FIELDS: dict[int, tuple[str, str]] = {
    1: ("input", "strings"),
    2: ("model_prefix", "string"),
    3: ("model_type", "int32"),
    4: ("vocab_size", "int32"),
    5: ("accept_language", "strings"),
    6: ("self_test_sample_size", "int32"),
    7: ("input_format", "string"),
    10: ("character_coverage", "float"),
    11: ("input_sentence_size", "uint64"),
    12: ("mining_sentence_size", "int32"),
    13: ("training_sentence_size", "int32"),
    14: ("seed_sentencepiece_size", "int32"),
    15: ("shrinking_factor", "float"),
    16: ("num_threads", "int32"),
    17: ("num_sub_iterations", "int32"),
    18: ("max_sentence_length", "int32"),
    19: ("shuffle_input_sentence", "bool"),
    20: ("max_sentencepiece_length", "int32"),
    21: ("split_by_unicode_script", "bool"),
    22: ("split_by_whitespace", "bool"),
    23: ("split_by_number", "bool"),
    24: ("treat_whitespace_as_suffix", "bool"),
    25: ("split_digits", "bool"),
    26: ("allow_whitespace_only_pieces", "bool"),
    30: ("control_symbols", "strings"),
    31: ("user_defined_symbols", "strings"),
    32: ("vocabulary_output_piece_score", "bool"),
    33: ("hard_vocab_limit", "bool"),
    34: ("use_all_vocab", "bool"),
    35: ("byte_fallback", "bool"),
    36: ("required_chars", "string"),
    40: ("unk_id", "int32"),
    41: ("bos_id", "int32"),
    42: ("eos_id", "int32"),
    43: ("pad_id", "int32"),
    44: ("unk_surface", "string"),
    45: ("unk_piece", "string"),
    46: ("bos_piece", "string"),
    47: ("eos_piece", "string"),
    48: ("pad_piece", "string"),
    49: ("train_extremely_large_corpus", "bool"),
    50: ("enable_differential_privacy", "bool"),
    51: ("differential_privacy_noise_level", "float"),
    52: ("differential_privacy_clipping_threshold", "uint64"),
    53: ("pretokenization_delimiter", "string"),
    54: ("seed_sentencepieces_file", "string"),
}

NORMALIZER_SPEC_FIELDS: dict[int, tuple[str, str]] = {
    1: ("name", "string"),
    2: ("precompiled_charsmap", "bytes"),
    3: ("add_dummy_prefix", "bool"),
    4: ("remove_extra_whitespaces", "bool"),
    5: ("escape_whitespaces", "bool"),
    6: ("normalization_rule_tsv", "string"),
}

PIECE_FIELDS: dict[int, tuple[str, str]] = {
    1: ("piece", "string"),
    2: ("score", "float"),
    3: ("type", "int32"),
}


@dataclass
class SentencePieceModel:
    pieces: list[Piece]
    # Only the fields that are set, by their proto names; the properties below read the proto
    # default for an absent one. An empty dict means the whole sub-message is absent.
    trainer_spec: dict[str, Any] = field(default_factory=dict)
    normalizer_spec: dict[str, Any] = field(default_factory=dict)

    @property
    def model_type(self) -> ModelType:
        return ModelType(self.trainer_spec.get("model_type", ModelType.UNIGRAM))

    @property
    def byte_fallback(self) -> bool:
        return self.trainer_spec.get("byte_fallback", False)

    @property
    def add_dummy_prefix(self) -> bool:
        return self.normalizer_spec.get("add_dummy_prefix", True)

    @property
    def remove_extra_whitespaces(self) -> bool:
        return self.normalizer_spec.get("remove_extra_whitespaces", True)

    @property
    def unk_id(self) -> int:
        return self.trainer_spec.get("unk_id", 0)

    @property
    def bos_id(self) -> int:
        return self.trainer_spec.get("bos_id", 1)

    @property
    def eos_id(self) -> int:
        return self.trainer_spec.get("eos_id", 2)

    @property
    def pad_id(self) -> int:
        return self.trainer_spec.get("pad_id", -1)

    @property
    def token_types(self) -> list[gguf.TokenType]:
        # SentencePiece piece types and GGUF token types share their numbering.
        return [gguf.TokenType(piece.type) for piece in self.pieces]


# ---- wire format ----------------------------------------------------------------------------

VARINT, I64, LEN, SGROUP, EGROUP, I32 = range(6)
WIRE_TYPES = {"int32": VARINT, "uint64": VARINT, "bool": VARINT, "float": I32,
              "string": LEN, "strings": LEN, "bytes": LEN}


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    start, value, shift = pos, 0, 0
    while True:
        if pos >= end:
            raise ValueError(f"truncated varint at byte offset {start}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ValueError(f"varint longer than 10 bytes at byte offset {start}")


def _read_field(data: bytes, pos: int, end: int) -> tuple[int, int, int | None, int]:
    """One field at pos -> (number, wire type, value, next pos).

    value is the integer of a varint; for I32, I64 and LEN it is the offset of the payload, which
    is data[value:next_pos]; for a group (skipped whole) and an end-group tag it is None.
    """
    start = pos
    key, pos = _read_varint(data, pos, end)
    number, wire_type = key >> 3, key & 7
    if number == 0:
        raise ValueError(f"field number 0 at byte offset {start}")
    if wire_type == VARINT:
        value, pos = _read_varint(data, pos, end)
        return number, wire_type, value, pos
    if wire_type in (I32, I64, LEN):
        if wire_type == LEN:
            size, pos = _read_varint(data, pos, end)
        else:
            size = 4 if wire_type == I32 else 8
        if pos + size > end:
            raise ValueError(f"field {number} at byte offset {start} is {size} bytes long, past the end "
                             f"of its message at byte offset {end}")
        return number, wire_type, pos, pos + size
    if wire_type == SGROUP:
        # Deprecated proto2 groups: skip the nested fields up to the matching end-group tag.
        while True:
            if pos >= end:
                raise ValueError(f"group {number} at byte offset {start} has no end")
            inner, inner_type, _, pos = _read_field(data, pos, end)
            if inner_type == EGROUP:
                if inner != number:
                    raise ValueError(f"group {number} at byte offset {start} ends as group {inner}")
                return number, wire_type, None, pos
    if wire_type == EGROUP:
        return number, wire_type, None, pos
    raise ValueError(f"invalid wire type {wire_type} at byte offset {start}")


def _decode_string(data: bytes, start: int, end: int, name: str) -> str:
    try:
        return data[start:end].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"invalid UTF-8 in {name} at byte offset {start + e.start}") from None


def _parse_message(data: bytes, pos: int, end: int, fields: dict[int, tuple[str, str]],
                   message: str) -> dict[str, Any]:
    """The set fields of one message as {name: value}; unknown fields are skipped."""
    values: dict[str, Any] = {}
    while pos < end:
        start = pos
        number, wire_type, value, pos = _read_field(data, pos, end)
        if wire_type == EGROUP:
            raise ValueError(f"end-group tag without a group at byte offset {start}")
        if number not in fields:
            continue
        name, kind = fields[number]
        if wire_type != WIRE_TYPES[kind]:
            raise ValueError(f"{message}.{name} (field {number}) has wire type {wire_type}, "
                             f"expected {WIRE_TYPES[kind]}, at byte offset {start}")
        if kind == "int32":
            value &= 0xFFFFFFFF  # negative int32s are sign-extended to 64 bits on the wire
            values[name] = value - (1 << 32) if value >= 1 << 31 else value
        elif kind == "uint64":
            values[name] = value & 0xFFFFFFFFFFFFFFFF
        elif kind == "bool":
            values[name] = value != 0
        elif kind == "float":
            values[name] = struct.unpack_from("<f", data, value)[0]
        elif kind == "bytes":
            values[name] = data[value:pos]
        elif kind == "string":
            values[name] = _decode_string(data, value, pos, f"{message}.{name}")
        else:  # "strings"
            values.setdefault(name, []).append(_decode_string(data, value, pos, f"{message}.{name}"))
    return values


def parse(data: bytes) -> SentencePieceModel:
    """Read a tokenizer.model. Malformed input raises ValueError naming the byte offset.

    ModelProto's self_test_data (4) and denormalizer_spec (5), and fields not listed above, are
    skipped.
    """
    data = bytes(data)
    model = SentencePieceModel(pieces=[])
    pos = 0
    while pos < len(data):
        start = pos
        number, wire_type, value, pos = _read_field(data, pos, len(data))
        if wire_type == EGROUP:
            raise ValueError(f"end-group tag without a group at byte offset {start}")
        if number not in (1, 2, 3):
            continue
        if wire_type != LEN:
            raise ValueError(f"ModelProto field {number} has wire type {wire_type}, expected {LEN}, "
                             f"at byte offset {start}")
        if number == 1:
            piece = _parse_message(data, value, pos, PIECE_FIELDS, "SentencePiece")
            try:
                kind = PieceType(piece.get("type", PieceType.NORMAL))
            except ValueError:
                raise ValueError(f"piece {len(model.pieces)} has unknown type {piece['type']}, "
                                 f"at byte offset {start}") from None
            model.pieces.append(Piece(piece.get("piece", ""), piece.get("score", 0.0), kind))
        elif number == 2:
            model.trainer_spec.update(_parse_message(data, value, pos, TRAINER_SPEC_FIELDS, "TrainerSpec"))
        else:
            model.normalizer_spec.update(_parse_message(data, value, pos, NORMALIZER_SPEC_FIELDS, "NormalizerSpec"))
    if not model.pieces:
        raise ValueError(f"no pieces (ModelProto field 1) in the {len(data)} bytes from byte offset 0")
    return model


def _write_varint(out: bytearray, value: int) -> None:
    value &= 0xFFFFFFFFFFFFFFFF  # negative values go out as 10-byte two's complement
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _write_field(out: bytearray, number: int, kind: str, value: Any) -> None:
    if kind == "strings":
        for item in value:
            _write_field(out, number, "string", item)
        return
    _write_varint(out, number << 3 | WIRE_TYPES[kind])
    if kind in ("int32", "uint64", "bool"):
        _write_varint(out, int(value))
    elif kind == "float":
        out += struct.pack("<f", value)
    else:
        payload = value.encode("utf-8") if kind == "string" else bytes(value)
        _write_varint(out, len(payload))
        out += payload


def _serialize_message(values: dict[str, Any], fields: dict[int, tuple[str, str]], message: str) -> bytes:
    unknown = values.keys() - {name for name, _ in fields.values()}
    if unknown:
        raise ValueError(f"{message} has no field {', '.join(sorted(unknown))}")
    out = bytearray()
    for number, (name, kind) in sorted(fields.items()):
        if name in values:
            _write_field(out, number, kind, values[name])
    return bytes(out)


def serialize(model: SentencePieceModel) -> bytes:
    """Write a tokenizer.model: every piece's text and score, its type unless NORMAL, and the
    spec fields that are set."""
    out = bytearray()
    for piece in model.pieces:
        values = {"piece": piece.text, "score": piece.score}
        if piece.type != PieceType.NORMAL:
            values["type"] = piece.type
        _write_field(out, 1, "bytes", _serialize_message(values, PIECE_FIELDS, "SentencePiece"))
    if model.trainer_spec:
        _write_field(out, 2, "bytes", _serialize_message(model.trainer_spec, TRAINER_SPEC_FIELDS, "TrainerSpec"))
    if model.normalizer_spec:
        _write_field(out, 3, "bytes", _serialize_message(model.normalizer_spec, NORMALIZER_SPEC_FIELDS,
                                                         "NormalizerSpec"))
    return bytes(out)


# ---- LLaMA-2 --------------------------------------------------------------------------------

# The specs stored in Meta's LLaMA-2 tokenizer.model: exactly the fields spm_train set, with the
# values it wrote (the training paths are Meta's). With the 32000 pieces of llama.cpp's
# ggml-vocab-llama-spm.gguf these rebuild the file byte for byte (LLAMA2_TOKENIZER_SHA256).
LLAMA2_TRAINER_SPEC: dict[str, Any] = {
    "input": ["/large_experiments/theorem/datasets/MERGED/all.test1.merged"],
    "model_prefix": "spm_model_32k_200M_charcov099995_allowWSO__v2",
    "model_type": ModelType.BPE,
    "vocab_size": 32000,
    "self_test_sample_size": 0,
    "input_format": "text",
    "character_coverage": 0.99995,  # stored as float32: 0.9999499917030334
    "input_sentence_size": 200000000,
    "seed_sentencepiece_size": 1000000,
    "shrinking_factor": 0.75,
    "num_threads": 80,
    "num_sub_iterations": 2,
    "max_sentence_length": 4192,
    "shuffle_input_sentence": True,
    "max_sentencepiece_length": 16,
    "split_by_unicode_script": True,
    "split_by_whitespace": True,
    "split_by_number": True,
    "treat_whitespace_as_suffix": False,
    "split_digits": True,
    "allow_whitespace_only_pieces": True,
    "vocabulary_output_piece_score": True,
    "hard_vocab_limit": True,
    "use_all_vocab": False,
    "byte_fallback": True,
    "required_chars": "",
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "unk_surface": " \u2047 ",
    "unk_piece": "<unk>",
    "bos_piece": "<s>",
    "eos_piece": "</s>",
    "pad_piece": "<pad>",
    "train_extremely_large_corpus": False,
    "enable_differential_privacy": False,
    "differential_privacy_noise_level": 0.0,
    "differential_privacy_clipping_threshold": 0,
}

# Identity normalization: no charsmap, and whitespace is kept as written.
LLAMA2_NORMALIZER_SPEC: dict[str, Any] = {
    "name": "identity",
    "precompiled_charsmap": b"",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "normalization_rule_tsv": "",
}

LLAMA2_TOKENIZER_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"


def llama2_tokenizer_model(vocab_gguf: Path) -> bytes:
    """Meta's LLaMA-2 tokenizer.model, rebuilt from llama.cpp's models/ggml-vocab-llama-spm.gguf."""
    reader = gguf.GGUFReader(vocab_gguf)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    pieces = [Piece(text, score, PieceType(kind)) for text, score, kind in zip(tokens, scores, types, strict=True)]
    return serialize(SentencePieceModel(pieces, dict(LLAMA2_TRAINER_SPEC), dict(LLAMA2_NORMALIZER_SPEC)))


# ---- BPE training ---------------------------------------------------------------------------

WHITESPACE = "\u2581"  # '▁', SentencePiece's visible space


def _words(text: str, line_prefix: bool = True) -> Counter[str]:
    """Word frequencies as the tokenizer sees them: spaces become '▁' and every word starts at a '▁'
    (so pieces never span words) or at the start of a line.

    line_prefix=True is spm_train's view: each line is a sentence with its own dummy-prefix space.
    line_prefix=False is llama.cpp's view of one document: only the text's start gets the dummy
    prefix, so a word that opens any other line has no '▁' (and newlines never join a piece).
    """
    words: Counter[str] = Counter()
    for n, line in enumerate(text.splitlines()):
        prefix = WHITESPACE if line_prefix or n == 0 else ""
        words.update(re.findall(f"{WHITESPACE}[^{WHITESPACE}]*|[^{WHITESPACE}]+", prefix + line.replace(" ", WHITESPACE)))
    return words


def train_bpe(text: str, vocab_size: int, *, line_prefix: bool = True) -> SentencePieceModel:
    """A SentencePiece-style BPE model for llama.cpp's SPM tokenizer, trained on text.

    line_prefix: whether every line starts with the dummy-prefix space (spm_train's sentences), or
    only the first (one document, as llama.cpp tokenizes a text with newlines in it); see _words.

    Pieces: <unk>, <s>, </s>, the 256 byte pieces, then one piece per merge with score -rank, so
    the tokenizer (which merges the best-scoring pair first) replays the merges in order, and last
    '▁' alone (score -n_merges): a space before a character no merge absorbs ("August 9") must stay
    a piece, or byte fallback would spell it as the bytes of '▁' and it would decode as '▁', not ' '.
    Other single characters are not pieces; byte fallback covers those never merged. Stops early
    when no pair is left. Ties go to the lexicographically smallest pair, so the result is
    deterministic.
    """
    pieces = [Piece("<unk>", 0.0, PieceType.UNKNOWN), Piece("<s>", 0.0, PieceType.CONTROL),
              Piece("</s>", 0.0, PieceType.CONTROL)]
    pieces += [Piece(f"<0x{b:02X}>", 0.0, PieceType.BYTE) for b in range(256)]
    if vocab_size <= len(pieces) + 1:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges after {len(pieces) + 1} fixed pieces")
    counts = _words(text, line_prefix)
    words = [list(word) for word in counts]   # each unique word as its current symbols
    freqs = list(counts.values())

    pair_counts: Counter[tuple[str, str]] = Counter()
    pair_words: defaultdict[tuple[str, str], set[int]] = defaultdict(set)  # may hold stale word ids
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += freqs[i]
            pair_words[pair].add(i)
    # Max-heap by count; entries go stale when a count changes and are skipped when popped.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapify(heap)

    known = {piece.text for piece in pieces}
    rank = 0
    while len(pieces) < vocab_size - 1 and heap:
        negative_count, pair = heappop(heap)
        if pair_counts.get(pair, 0) != -negative_count:
            continue
        merged = pair[0] + pair[1]
        # The same text can come from two different merges; keep the first (better-scored) piece.
        if merged not in known:
            pieces.append(Piece(merged, float(-rank), PieceType.NORMAL))
            known.add(merged)
            rank += 1
        changed = set()
        for i in pair_words.pop(pair, ()):
            old = words[i]
            new, old_hits, new_hits = [], [], []  # where the pair was merged, before and after
            j = 0
            while j < len(old):
                if old[j] == pair[0] and j + 1 < len(old) and old[j + 1] == pair[1]:
                    old_hits.append(j)
                    new_hits.append(len(new))
                    new.append(merged)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            if not new_hits:
                continue  # stale entry: this word no longer holds the pair
            # Only pairs touching a merged position change: (left, a), (a, b), (b, right) go,
            # (left, ab), (ab, right) come; sets keep back-to-back merges from counting twice.
            for t in {t for j in old_hits for t in (j - 1, j, j + 1) if 0 <= t < len(old) - 1}:
                p = (old[t], old[t + 1])
                pair_counts[p] -= freqs[i]
                changed.add(p)
            for t in {t for k in new_hits for t in (k - 1, k) if 0 <= t < len(new) - 1}:
                p = (new[t], new[t + 1])
                pair_counts[p] += freqs[i]
                pair_words[p].add(i)
                changed.add(p)
            words[i] = new
        for p in changed:
            if pair_counts[p] > 0:
                heappush(heap, (-pair_counts[p], p))
            else:
                del pair_counts[p]
    pieces.append(Piece(WHITESPACE, float(-rank), PieceType.NORMAL))

    return SentencePieceModel(
        pieces,
        {"model_type": ModelType.BPE, "vocab_size": len(pieces), "byte_fallback": True},
        {"name": "identity", "add_dummy_prefix": True, "remove_extra_whitespaces": False},
    )


# ---- tokenizing as llama.cpp does ---------------------------------------------------------------

class Tokenizer:
    """llama.cpp's SPM tokenizer (llama-vocab.cpp, `llm_tokenizer_spm`) for a SentencePieceModel, in Python.

    What llama.cpp does with `add_special=True, parse_special=False` (llama-cpp-python's
    `Llama.tokenize(text, add_bos=True)`, llama-perplexity's tokenization): BOS if asked; the dummy-prefix
    space; spaces escaped to '▁'; the text split into UTF-8 characters; then, repeatedly, the adjacent pair
    whose concatenation is a piece with the highest score is merged (ties: the leftmost pair); symbols
    that are not pieces at the end become byte pieces. Piece text lookups keep the last of duplicate
    texts, as llama.cpp's map does.

    Merges cannot cross a point that no piece spans, so the text is cut at such points (before each '▁'
    when no piece holds a '▁' past its first character; around each newline when no piece holds one)
    and each distinct segment is tokenized once: the result is the same, only faster.
    """

    def __init__(self, model: SentencePieceModel):
        self.model = model
        self.ids = {piece.text: i for i, piece in enumerate(model.pieces)}
        self.scores = [piece.score for piece in model.pieces]
        self.bos_id = model.bos_id
        texts = [piece.text for piece in model.pieces]
        cuts = []
        if not any(WHITESPACE in text[1:] for text in texts):
            cuts.append(f"(?={WHITESPACE})")
        if not any("\n" in text for text in texts):
            cuts.append("(?=\n)|(?<=\n)")
        self._cut = re.compile("|".join(cuts)) if cuts else None
        self._cache: dict[str, list[int]] = {}
        self._byte_ids: list[int] | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        return cls(parse(Path(path).read_bytes()))

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        out = [self.bos_id] if add_bos and 0 <= self.bos_id < len(self.model.pieces) else []
        if not text:
            return out  # llama.cpp tokenizes no fragment at all for an empty text
        if self.model.add_dummy_prefix:
            text = " " + text
        text = text.replace(" ", WHITESPACE)
        for segment in (self._cut.split(text) if self._cut else [text]):
            if not segment:
                continue
            ids = self._cache.get(segment)
            if ids is None:
                ids = self._encode_segment(segment)
                if len(self._cache) < 1 << 20:
                    self._cache[segment] = ids
            out += ids
        return out

    def _byte_id(self, byte: int) -> int:
        if self._byte_ids is None:
            missing = [b for b in range(256) if f"<0x{b:02X}>" not in self.ids]
            if missing:
                raise ValueError(f"the tokenizer has no byte piece <0x{missing[0]:02X}> (byte fallback) for "
                                 "a character it cannot spell")
            self._byte_ids = [self.ids[f"<0x{b:02X}>"] for b in range(256)]
        return self._byte_ids[byte]

    def _encode_segment(self, text: str) -> list[int]:
        # Symbol i starts at character i; a merge grows the left symbol and empties the right one.
        n = len(text)
        length = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        heap: list[tuple[float, int, int, int]] = []

        def add(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            size = length[left] + length[right]
            token = self.ids.get(text[left:left + size])
            if token is not None:
                heappush(heap, (-self.scores[token], left, right, size))

        for i in range(1, n):
            add(i - 1, i)
        while heap:
            _, left, right, size = heappop(heap)
            if not length[left] or not length[right] or length[left] + length[right] != size:
                continue  # one side was merged since this pair was queued
            length[left] = size
            length[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            add(prev[left], left)
            add(left, nxt[left])
        out = []
        i = 0
        while i != -1:
            piece = text[i:i + length[i]]
            token = self.ids.get(piece)
            if token is not None:
                out.append(token)
            else:
                out += [self._byte_id(b) for b in piece.encode("utf-8")]
            i = nxt[i]
        return out

    def decode(self, ids: list[int]) -> str:
        """Pieces back to text: '▁' -> space, byte pieces -> bytes, control pieces dropped, and the
        dummy-prefix space removed when the ids start with BOS (as llama-cpp-python's detokenize)."""
        out = bytearray()
        for i in ids:
            piece = self.model.pieces[i]
            if piece.type == PieceType.BYTE:
                out.append(int(piece.text[3:5], 16))
            elif piece.type in (PieceType.NORMAL, PieceType.USER_DEFINED):
                out += piece.text.replace(WHITESPACE, " ").encode("utf-8")
            elif piece.type == PieceType.UNKNOWN:
                out += self.model.trainer_spec.get("unk_surface", " \u2047 ").encode("utf-8")
        text = out.decode("utf-8", "replace")
        if ids and ids[0] == self.bos_id and self.model.add_dummy_prefix and text.startswith(" "):
            text = text[1:]
        return text
