"""The tokenizer a GGUF carries: the checkpoint's SentencePiece model, or LLaMA-2's rebuilt.

Bi-Mamba was trained with the LLaMA-2 tokenizer. When a checkpoint directory has no
`tokenizer.model`, the canonical one is rebuilt byte for byte from the vocabulary that ships inside
the pinned llama.cpp sources (docs/format.md; the sha256 is checked in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf

from bimamba_edge import spm
from bimamba_edge.errors import BimambaError
from bimamba_edge.upstream import vendored_path

LLAMA2_VOCAB_GGUF = "models/ggml-vocab-llama-spm.gguf"
LLAMA2_TOKENIZER_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"


@dataclass
class Vocab:
    model: spm.SentencePieceModel
    source: str  # a path, or "llama-2 (rebuilt)"

    def write(self, writer: gguf.GGUFWriter, n_vocab: int) -> None:
        """Adds the llama.cpp SPM tokenizer keys, padding with unused pieces up to the embedding's rows."""
        pieces = self.model.pieces
        if len(pieces) > n_vocab:
            raise BimambaError(f"{self.source}: the tokenizer has {len(pieces)} pieces but the embedding only "
                               f"{n_vocab} rows")
        tokens = [p.text for p in pieces] + [f"[PAD{i}]" for i in range(len(pieces), n_vocab)]
        scores = [p.score for p in pieces] + [-1000.0] * (n_vocab - len(pieces))
        types = [int(p.type) for p in pieces] + [int(gguf.TokenType.UNUSED)] * (n_vocab - len(pieces))
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        m = self.model
        for add, token_id in ((writer.add_bos_token_id, m.bos_id), (writer.add_eos_token_id, m.eos_id),
                              (writer.add_unk_token_id, m.unk_id), (writer.add_pad_token_id, m.pad_id)):
            if 0 <= token_id < len(pieces):
                add(token_id)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(m.add_dummy_prefix)


def load_vocab(tokenizer_path: Path | None) -> Vocab:
    if tokenizer_path is None:
        return Vocab(spm.parse(llama2_tokenizer_bytes()), "llama-2 (rebuilt)")
    try:
        return Vocab(spm.parse(tokenizer_path.read_bytes()), str(tokenizer_path))
    except ValueError as e:
        raise BimambaError(f"{tokenizer_path}: unreadable SentencePiece model ({e})") from None


def llama2_tokenizer_bytes() -> bytes:
    return spm.llama2_tokenizer_model(vendored_path(LLAMA2_VOCAB_GGUF))
