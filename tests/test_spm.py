"""SentencePiece ModelProto codec, the LLaMA-2 tokenizer.model rebuild, and the BPE trainer."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from bimamba_edge import spm
from bimamba_edge.spm import ModelType, Piece, PieceType, SentencePieceModel
from bimamba_edge.upstream import vendored_path

PARAGRAPH = """\
The quick brown fox jumps over the lazy dog. The dog does not jump; the dog sleeps.
Then the fox jumps again, and again, over the sleeping dog, until the dog wakes up.
  Two leading spaces, digits 1234 and 2024, and a word with an accent: café.
"""


@pytest.fixture(scope="module")
def llama2_model() -> bytes:
    return spm.llama2_tokenizer_model(vendored_path("models/ggml-vocab-llama-spm.gguf"))


def test_llama2_rebuild_is_metas_file(llama2_model):
    assert len(llama2_model) == 499_723
    assert hashlib.sha256(llama2_model).hexdigest() == spm.LLAMA2_TOKENIZER_SHA256
    assert spm.LLAMA2_TOKENIZER_SHA256 == "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"


def test_llama2_parse_then_serialize_gives_the_same_bytes(llama2_model):
    model = spm.parse(llama2_model)
    assert spm.serialize(model) == llama2_model
    assert len(model.pieces) == 32000
    assert model.pieces[:3] == [Piece("<unk>", 0.0, PieceType.UNKNOWN), Piece("<s>", 0.0, PieceType.CONTROL),
                                Piece("</s>", 0.0, PieceType.CONTROL)]
    assert model.pieces[3] == Piece("<0x00>", 0.0, PieceType.BYTE)
    assert model.model_type == ModelType.BPE
    assert model.byte_fallback and model.add_dummy_prefix and not model.remove_extra_whitespaces
    assert (model.unk_id, model.bos_id, model.eos_id, model.pad_id) == (0, 1, 2, -1)
    assert model.trainer_spec["unk_surface"] == " \u2047 "


def test_token_types_are_gguf_token_types(llama2_model):
    types = spm.parse(llama2_model).token_types
    assert types[:4] == [spm.gguf.TokenType.UNKNOWN, spm.gguf.TokenType.CONTROL, spm.gguf.TokenType.CONTROL,
                         spm.gguf.TokenType.BYTE]
    assert Counter(types) == {spm.gguf.TokenType.NORMAL: 31741, spm.gguf.TokenType.BYTE: 256,
                              spm.gguf.TokenType.CONTROL: 2, spm.gguf.TokenType.UNKNOWN: 1}


def test_parse_of_serialize_round_trips():
    model = SentencePieceModel(
        pieces=[Piece("<unk>", 0.0, PieceType.UNKNOWN), Piece("▁hello", -1.5, PieceType.NORMAL),
                Piece("<sep>", 0.0, PieceType.USER_DEFINED), Piece("x", 0.25, PieceType.UNUSED)],
        trainer_spec={"input": ["a.txt", "b.txt"], "model_type": ModelType.UNIGRAM, "vocab_size": 4,
                      "character_coverage": 0.75, "input_sentence_size": 1 << 40, "split_digits": False,
                      "pad_id": -1, "unk_surface": " \u2047 "},
        normalizer_spec={"name": "nmt_nfkc", "precompiled_charsmap": b"\x00\xff\x01",
                         "remove_extra_whitespaces": True},
    )
    assert spm.parse(spm.serialize(model)) == model


def test_unset_fields_are_not_written_and_read_as_proto_defaults():
    model = SentencePieceModel([Piece("a", 0.0, PieceType.NORMAL)])
    # One piece: text and score; type NORMAL and both specs left out.
    assert spm.serialize(model) == b"\x0a\x08" b"\x0a\x01a" b"\x15\x00\x00\x00\x00"
    assert model.model_type == ModelType.UNIGRAM and not model.byte_fallback
    assert model.add_dummy_prefix and model.remove_extra_whitespaces
    assert (model.unk_id, model.bos_id, model.eos_id, model.pad_id) == (0, 1, 2, -1)


def test_negative_int32_is_a_ten_byte_varint():
    data = spm.serialize(SentencePieceModel([Piece("a", 0.0, PieceType.NORMAL)], {"pad_id": -1}))
    assert data.endswith(b"\x12\x0c" b"\xd8\x02" + b"\xff" * 9 + b"\x01")  # field 43, varint
    assert spm.parse(data).pad_id == -1


def test_unknown_fields_of_every_wire_type_are_skipped():
    piece = b"\x0a\x01a" b"\x15\x00\x00\x80\x3f"                 # "a", score 1.0
    unknown = (b"\xa0\x06\x96\x01"                                 # field 100 varint
               b"\xa1\x06" + b"\x01" * 8 +                         # field 100 fixed64
               b"\xa2\x06\x02hi"                                   # field 100 length-delimited
               b"\xa3\x06\x08\x01\xa4\x06"                         # field 100 group holding a varint
               b"\xa5\x06\x00\x00\x00\x00")                        # field 100 fixed32
    body = piece + unknown
    data = b"\x0a" + bytes([len(body)]) + body + unknown
    assert spm.parse(data) == SentencePieceModel([Piece("a", 1.0, PieceType.NORMAL)])


@pytest.mark.parametrize("data, message", [
    (b"\x50\x80", "truncated varint at byte offset 1"),
    (b"\x0a\x05ab", "field 1 at byte offset 0 is 5 bytes long, past the end of its message at byte offset 4"),
    (b"\x0a\x05\x0a\x01a\x10\x00", "SentencePiece.score (field 2) has wire type 0, expected 5, at byte offset 5"),
    (b"\x0a\x03\x0a\x01\xff", "invalid UTF-8 in SentencePiece.piece at byte offset 4"),
    (b"\x0a\x02\x18\x09", "piece 0 has unknown type 9, at byte offset 0"),
    (b"\x1a\x02\x1a\x00", "NormalizerSpec.add_dummy_prefix (field 3) has wire type 2, expected 0, at byte offset 2"),
    (b"\x12\x02\x08\x00", "TrainerSpec.input (field 1) has wire type 0, expected 2, at byte offset 2"),
    (b"\x08\x01", "ModelProto field 1 has wire type 0, expected 2, at byte offset 0"),
    (b"\x0f", "invalid wire type 7 at byte offset 0"),
    (b"\x0b\x08\x01", "group 1 at byte offset 0 has no end"),
    (b"\x0b\x14", "group 1 at byte offset 0 ends as group 2"),
    (b"\x0c", "end-group tag without a group at byte offset 0"),
    (b"\x50" + b"\xff" * 10 + b"\x01", "varint longer than 10 bytes at byte offset 1"),
    (b"\x12\x02\x20\x05", "no pieces (ModelProto field 1) in the 4 bytes from byte offset 0"),
    (b"", "no pieces"),
])
def test_malformed_input_names_what_and_where(data, message):
    with pytest.raises(ValueError) as error:
        spm.parse(data)
    assert message in str(error.value)
    assert "byte offset" in str(error.value) and "\n" not in str(error.value)


def naive_bpe(text: str, vocab_size: int, line_prefix: bool = True) -> list[str]:
    """Plain BPE, recounting every pair each step: the merged texts train_bpe must produce (before its
    final '▁' piece)."""
    words = {tuple(word): count for word, count in spm._words(text, line_prefix).items()}
    merged_texts: list[str] = []
    while 260 + len(merged_texts) < vocab_size:
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if best[0] + best[1] not in merged_texts:
            merged_texts.append(best[0] + best[1])
        merged_words: Counter = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words[tuple(out)] += count
        words = merged_words
    return merged_texts


def test_train_bpe_layout():
    model = spm.train_bpe(PARAGRAPH, 320)
    texts = [piece.text for piece in model.pieces]
    assert len(texts) == 320 and len(set(texts)) == len(texts)
    assert model.pieces[:3] == [Piece("<unk>", 0.0, PieceType.UNKNOWN), Piece("<s>", 0.0, PieceType.CONTROL),
                                Piece("</s>", 0.0, PieceType.CONTROL)]
    assert model.pieces[3:259] == [Piece(f"<0x{b:02X}>", 0.0, PieceType.BYTE) for b in range(256)]
    merges, space = model.pieces[259:-1], model.pieces[-1]
    assert all(piece.type == PieceType.NORMAL and len(piece.text) >= 2 for piece in merges)
    assert [piece.score for piece in merges] == [float(-rank) for rank in range(len(merges))]
    assert space == Piece("▁", float(-len(merges)), PieceType.NORMAL)
    assert "▁the" in texts and "▁dog" in texts and not any("\n" in text or " " in text for text in texts)
    assert model.model_type == ModelType.BPE and model.byte_fallback
    assert model.add_dummy_prefix and not model.remove_extra_whitespaces


def test_train_bpe_round_trips_and_is_deterministic():
    model = spm.train_bpe(PARAGRAPH, 300)
    assert spm.parse(spm.serialize(model)) == model
    assert spm.serialize(spm.train_bpe(PARAGRAPH, 300)) == spm.serialize(model)


def test_train_bpe_merges_are_plain_bpe():
    text = PARAGRAPH * 3 + "aaaa aaaaa abab ababab bbbb abba baba\n"
    assert [piece.text for piece in spm.train_bpe(text, 400).pieces[259:]] == naive_bpe(text, 400) + ["▁"]


def test_train_bpe_stops_when_nothing_is_left_to_merge():
    assert [piece.text for piece in spm.train_bpe("ab ab", 1000).pieces[259:]] == ["ab", "▁ab", "▁"]


def test_train_bpe_without_line_prefix_sees_one_document():
    """Only the text's first word gets the dummy prefix: words opening later lines are counted bare."""
    assert spm._words("ab cd\nef gh\n\nij", line_prefix=False) == Counter(["▁ab", "▁cd", "ef", "▁gh", "ij"])
    assert spm._words("ab cd\nef", line_prefix=True) == Counter(["▁ab", "▁cd", "▁ef"])
    text = "The dog.\nThe cat.\nThe end of it.\n"
    texts = [piece.text for piece in spm.train_bpe(text, 300, line_prefix=False).pieces[259:]]
    assert texts == naive_bpe(text, 300, line_prefix=False) + ["▁"] and "The" in texts


# ---- Tokenizer: llama.cpp's SPM algorithm (checked against the runtime in test_ppl.py) ---------------------

def toy_model(merges: list[tuple[str, float]]) -> SentencePieceModel:
    pieces = [Piece("<unk>", 0.0, PieceType.UNKNOWN), Piece("<s>", 0.0, PieceType.CONTROL),
              Piece("</s>", 0.0, PieceType.CONTROL)]
    pieces += [Piece(f"<0x{b:02X}>", 0.0, PieceType.BYTE) for b in range(256)]
    pieces += [Piece(text, score, PieceType.NORMAL) for text, score in merges]
    return SentencePieceModel(pieces, {"model_type": ModelType.BPE, "byte_fallback": True},
                              {"add_dummy_prefix": True, "remove_extra_whitespaces": False})


def test_tokenizer_merges_best_score_first_then_leftmost():
    model = toy_model([("ab", -1.0), ("bc", 0.0), ("▁a", -2.0), ("▁abc", -0.5), ("aa", -3.0)])
    tok = spm.Tokenizer(model)
    ids = {piece.text: i for i, piece in enumerate(model.pieces)}
    # "▁abc": bc (0.0) beats ab (-1.0), which is then stale; ▁a (-2.0) next; then ▁a + bc is a piece
    assert tok.encode("abc", add_bos=False) == [ids["▁abc"]]
    space_bytes = [3 + b for b in "▁".encode()]  # no '▁' piece in this toy: byte fallback
    assert tok.encode("xbc", add_bos=False) == [*space_bytes, 3 + ord("x"), ids["bc"]]
    # equal scores: the leftmost pair wins ("▁aaa" -> ▁ a a a -> ▁ aa a, never ▁ a aa)
    tied = toy_model([("aa", -1.0)])
    a_byte, aa = 3 + ord("a"), len(tied.pieces) - 1
    assert spm.Tokenizer(tied).encode("aaa", add_bos=False) == [*space_bytes, aa, a_byte]
    assert tok.encode("", add_bos=True) == [1] and tok.encode("", add_bos=False) == []


def test_tokenizer_byte_fallback_and_decode():
    tok = spm.Tokenizer(toy_model([("▁a", 0.0)]))
    ids = tok.encode("a é", add_bos=True)
    # "▁" before "é" is no piece here: its three UTF-8 bytes, then é's two
    assert ids == [1, 259, *(3 + b for b in "▁".encode()), *(3 + b for b in "é".encode())]
    assert tok.decode(ids) == "a▁é"  # which is why train_bpe always keeps a '▁' piece


def test_tokenizer_cuts_are_exact():
    """Cutting the text at '▁' and newlines (the speed-up) gives what one whole-text pass gives."""
    model = spm.train_bpe(PARAGRAPH * 2, 400, line_prefix=False)
    tok = spm.Tokenizer(model)
    assert tok._cut is not None
    whole = spm.Tokenizer(model)
    whole._cut = None
    for text in (PARAGRAPH, "  two  spaces\n\nand lines\n", "tail ", "é\nb"):
        assert tok.encode(text) == whole.encode(text)
        assert tok.decode(tok.encode(text)) == text
