"""The README demo: checkpoint -> bimamba-convert -> GGUF -> patched llama.cpp -> text, on this machine.

Until a trained tiny Bi-Mamba ships with the repository, the demo model is a random-weight fixture at a
small shape: the text is gibberish, but every stage of the real chain runs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from .testing import FixtureSpec, small_config, write_checkpoint


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bimamba-demo-"))
    checkpoint = write_checkpoint(work / "checkpoint", FixtureSpec(small_config(n_layer=4)))
    gguf_path = work / "demo.gguf"
    print(f"$ bimamba-convert {checkpoint} {gguf_path}", flush=True)
    steps = [
        [sys.executable, "-m", "bimamba_edge.convert.cli", str(checkpoint), str(gguf_path)],
        [sys.executable, "-m", "bimamba_edge.run", str(gguf_path), "-p", "It is a truth universally", "-n", "32"],
    ]
    for i, cmd in enumerate(steps):
        if i:
            print(f"$ bimamba-run {gguf_path} -p 'It is a truth universally' -n 32", flush=True)
        if subprocess.run(cmd).returncode != 0:
            return 1
    print("(random weights: the text is gibberish until the trained demo model ships)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
