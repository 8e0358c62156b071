"""The README demo: the shipped tiny Bi-Mamba -> bimamba-convert -> GGUF -> patched llama.cpp -> text, on this machine.

The demo model is a 1-bit student (d_model 256, 8 layers, 4096-token SentencePiece vocabulary) distilled from a
full-precision Mamba-2 teacher on five Jane Austen novels by tools/train_tiny.py; it lives in the package at
DEMO_CHECKPOINT (mamba_ssm layout: config.json, model.safetensors, tokenizer.model).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "data" / "austen-tiny"
HELDOUT_SLICE = Path(__file__).resolve().parent / "data" / "persuasion-slice.txt"
PROMPT = "It is a truth universally acknowledged"
N_TOKENS = 64


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bimamba-demo-"))
    checkpoint = DEMO_CHECKPOINT
    gguf_path = work / "austen-tiny.gguf"
    steps = [
        (f"bimamba-convert {checkpoint} {gguf_path}",
         [sys.executable, "-m", "bimamba_edge.convert.cli", str(checkpoint), str(gguf_path)]),
        (f"bimamba-run {gguf_path} -p '{PROMPT}' -n {N_TOKENS}",
         [sys.executable, "-m", "bimamba_edge.run", str(gguf_path), "-p", PROMPT, "-n", str(N_TOKENS)]),
    ]
    for shown, cmd in steps:
        print(f"$ {shown}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
