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


def demo_checkpoint(work: Path) -> tuple[Path, bool]:
    """(checkpoint directory, whether it is the trained model)."""
    if (DEMO_CHECKPOINT / "config.json").is_file():
        return DEMO_CHECKPOINT, True
    # TODO(lead): remove this fallback once the trained student is committed at DEMO_CHECKPOINT
    # (tools/train_tiny.py; see the README's "Training the demo model"). Until then the demo runs the same
    # chain on a random-weight fixture, and its text is gibberish.
    from .testing import FixtureSpec, small_config, write_checkpoint

    return write_checkpoint(work / "checkpoint", FixtureSpec(small_config(n_layer=4))), False


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bimamba-demo-"))
    checkpoint, trained = demo_checkpoint(work)
    if not trained:
        print(f"(no trained model at {DEMO_CHECKPOINT}: using a random-weight fixture)", flush=True)
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
    if not trained:
        print("(random weights: the text is gibberish until the trained demo model ships)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
