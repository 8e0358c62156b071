"""bimamba-ppl: llama-perplexity's windowing, the same measure on the runtime and on the reference, and its errors.

The runtime side needs the built runtime (`bimamba-build`), as test_runtime.py does.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from bimamba_edge import ppl
from bimamba_edge.demo import DEMO_CHECKPOINT, HELDOUT_SLICE
from bimamba_edge.errors import BimambaError
from conftest import run_convert

# The bar for the shipped student: GGUF in the runtime (c) within 0.5 % of the reference (b).
SHIPPED_TOLERANCE = 0.005
# The bar for the opt-in f16 SSM state: it changes the shipped student's perplexity by at most 0.1 %.
F16_STATE_TOLERANCE = 0.001


def run_ppl(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bimamba_edge.ppl", *map(str, args)], capture_output=True, text=True)


def ppl_json(*args) -> dict:
    proc = run_ppl(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_windows_are_llama_perplexitys():
    tokens = [1] + list(range(100, 125))  # 26 tokens, BOS first
    windows = ppl.llama_windows(tokens, 8, bos_id=1)
    assert windows == [[1, *range(100, 107)], [1, *range(108, 115)], [1, *range(116, 123)]]  # 2 left over
    assert ppl.llama_windows(tokens, 8, 1, max_windows=2) == windows[:2]
    with pytest.raises(BimambaError, match="only 26 tokens; a context of 16 needs at least 32"):
        ppl.llama_windows(tokens, 16, 1)


def test_second_half_of_each_window_is_scored():
    n_ctx, vocab = 8, 5
    window = [1, 0, 0, 0, 0, 2, 3, 4]
    logits = torch.zeros(n_ctx, vocab)
    logits[4, 2] = logits[5, 3] = logits[6, 4] = math.log(4.0)  # p = 4/8 for the tokens at positions 5, 6, 7
    logits[:4] = 100.0 * torch.randn(4, vocab)                    # first half: never scored
    result = ppl.Perplexity(n_ctx)
    result.add(logits, window)
    assert result.count == n_ctx // 2 - 1 == 3
    assert result.ppl == pytest.approx(2.0)  # every scored token had p = 1/2
    assert result.error == pytest.approx(0.0, abs=1e-6)
    result.add(torch.zeros(n_ctx, vocab), window)  # uniform: p = 1/5
    assert result.ppl == pytest.approx(math.exp((3 * math.log(2) + 3 * math.log(5)) / 6))
    assert result.running == [pytest.approx(2.0), pytest.approx(result.ppl)]
    mean = (3 * math.log(2) + 3 * math.log(5)) / 6
    variance = (3 * math.log(2) ** 2 + 3 * math.log(5) ** 2) / 6 - mean ** 2
    assert result.error == pytest.approx(math.sqrt(variance / 5) * result.ppl)


def test_file_text_drops_one_trailing_newline(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n")
    assert ppl.read_text(tmp_path / "a.txt") == "one\n"


@pytest.fixture(scope="module")
def fixture_pair(tmp_path_factory):
    """A random column-scaled checkpoint (own tiny tokenizer) and its BM1 GGUF."""
    from bimamba_edge.testing import FixtureSpec, small_config, write_checkpoint

    directory = write_checkpoint(tmp_path_factory.mktemp("ckpt"), FixtureSpec(small_config()))
    proc = run_convert(directory, directory / "m.gguf")
    assert proc.returncode == 0, proc.stderr
    return directory, directory / "m.gguf"


def test_both_sides_tokenize_identically(fixture_pair):
    directory, gguf_path = fixture_pair
    text = ppl.read_text(HELDOUT_SLICE)
    reference_tokens = ppl.scorer_for(directory, 64, 2).tokens(text)
    assert ppl.scorer_for(gguf_path, 64, 2).tokens(text) == reference_tokens
    assert reference_tokens[0] == 1 and len(reference_tokens) > 1000


def test_runtime_and_reference_perplexity_agree_on_a_random_fixture(fixture_pair):
    directory, gguf_path = fixture_pair
    common = ("--file", HELDOUT_SLICE, "--ctx", 64, "--chunks", 6)
    ours, reference = ppl_json(gguf_path, *common, "-t", 2), ppl_json(directory, *common, "-t", 1)
    assert ours["tokens"] == reference["tokens"] and ours["scored_tokens"] == reference["scored_tokens"] == 6 * 31
    assert "llama.cpp" in ours["backend"] and "reference" in reference["backend"]
    # Random weights predict confidently and wrongly (PPL ~1e18, mean NLL ~42), so PPL magnifies any rounding;
    # the mean NLL, which PPL exponentiates, is the fair comparison here.
    assert ours["mean_nll"] == pytest.approx(reference["mean_nll"], rel=1e-4)


def test_cli_prints_the_final_estimate_and_the_windowing(fixture_pair):
    _, gguf_path = fixture_pair
    proc = run_ppl(gguf_path, "-f", HELDOUT_SLICE, "-c", 64, "--chunks", 2, "-t", 2)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Final estimate: PPL = ") and "+/-" in proc.stdout
    assert "2 windows of 64, 31 scored in each" in proc.stderr and "[2]" in proc.stderr
    help_text = run_ppl("--help").stdout
    assert "non-overlapping windows" in " ".join(help_text.split()) and "BOS" in help_text


def test_errors_are_one_line(fixture_pair, tmp_path):
    directory, gguf_path = fixture_pair
    short = tmp_path / "short.txt"
    short.write_text("Too short.\n")
    cases = [
        ((gguf_path, "-f", tmp_path / "absent.txt"), "absent.txt: no such file"),
        ((tmp_path / "nothing", "-f", HELDOUT_SLICE), "no such file or checkpoint directory"),
        ((directory, "-f", short, "-c", 64), "needs at least 128"),
        ((gguf_path, "-f", HELDOUT_SLICE, "--chunks", 0), "--chunks 0"),
    ]
    for args, words in cases:
        proc = run_ppl(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and words in lines[0], (args, proc.stderr)
        assert lines[0].startswith("bimamba-ppl: error: ")


def test_shipped_student_gguf_is_within_half_a_percent_of_the_reference(tmp_path):
    """Fidelity (c) vs (b): the shipped student converted to BM1 and run by llama.cpp, against the PyTorch
    reference on the same checkpoint, on the held-out slice of Persuasion. Fails, never skips, without it."""
    assert (DEMO_CHECKPOINT / "config.json").is_file(), f"no trained student at {DEMO_CHECKPOINT}"
    proc = run_convert(DEMO_CHECKPOINT, tmp_path / "student.gguf")
    assert proc.returncode == 0, proc.stderr
    common = ("--file", HELDOUT_SLICE, "--ctx", 512, "--chunks", 8)
    runtime_result = ppl_json(tmp_path / "student.gguf", *common, "-t", 2)
    reference_result = ppl_json(DEMO_CHECKPOINT, *common, "-t", 1)
    assert runtime_result["scored_tokens"] == reference_result["scored_tokens"] == 8 * 255
    relative = abs(runtime_result["ppl"] - reference_result["ppl"]) / reference_result["ppl"]
    assert relative <= SHIPPED_TOLERANCE, (runtime_result["ppl"], reference_result["ppl"])


def test_f16_state_changes_the_shipped_students_perplexity_by_at_most_a_tenth_of_a_percent(tmp_path):
    assert (DEMO_CHECKPOINT / "config.json").is_file(), f"no trained student at {DEMO_CHECKPOINT}"
    proc = run_convert(DEMO_CHECKPOINT, tmp_path / "student.gguf")
    assert proc.returncode == 0, proc.stderr
    common = (tmp_path / "student.gguf", "--file", HELDOUT_SLICE, "--ctx", 512, "--chunks", 8, "-t", 2)
    f32, f16 = ppl_json(*common), ppl_json(*common, "--state-type", "f16")
    assert f32["backend"].endswith("f32 state") and f16["backend"].endswith("f16 state")
    relative = abs(f16["ppl"] - f32["ppl"]) / f32["ppl"]
    assert relative <= F16_STATE_TOLERANCE, (f16["ppl"], f32["ppl"])
