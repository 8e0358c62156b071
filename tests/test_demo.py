"""The README's demo: the shipped student converts and generates English with the built runtime."""

from __future__ import annotations

import subprocess
import sys

from bimamba_edge.demo import DEMO_CHECKPOINT, PROMPT


def test_demo_converts_the_shipped_student_and_generates_text():
    assert (DEMO_CHECKPOINT / "model.safetensors").is_file(), f"the demo model is missing at {DEMO_CHECKPOINT}"
    proc = subprocess.run([sys.executable, "-m", "bimamba_edge.demo"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    generated = proc.stdout.split(PROMPT, 1)[1].split("==========")[0]
    words = generated.split()
    assert len(words) >= 20, proc.stdout
    # a trained model writes mostly ordinary words; a broken conversion or kernel writes fragments
    common = {"the", "and", "of", "to", "a", "i", "in", "was", "her", "it", "be", "not", "that", "she", "he"}
    assert sum(w.strip('.,;:!?"\'').lower() in common for w in words) >= len(words) // 6, generated
