"""Shared fixtures: small random checkpoints written by bimamba_edge.testing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bimamba_edge.testing import FixtureSpec, small_config, write_checkpoint


@pytest.fixture
def make_checkpoint(tmp_path_factory):
    """make_checkpoint(**FixtureSpec fields, config=...) -> directory of a fresh fixture checkpoint."""

    def make(config=None, **fields):
        spec = FixtureSpec(config or small_config(), **fields)
        return write_checkpoint(tmp_path_factory.mktemp("ckpt"), spec)

    return make


def run_convert(*args) -> subprocess.CompletedProcess:
    """bimamba-convert as a user runs it, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "bimamba_edge.convert.cli", *map(str, args)],
                          capture_output=True, text=True)


# what each kernel test prints when it did test what matters: test-bm1 the 2 x 2 prefill tiles (every
# build we test has them: AVX-512, AVX2, NEON with and without dotprod), test-quantize-fns the type BM1
KERNEL_TEST_PROOF = {"test-bm1": "BM1 vec_dot rows per call: 2", "test-quantize-fns": "bm1"}


def assert_kernel_test_passes(cmd: list[str], test: str, build: str) -> None:
    """Runs a kernel test binary (ggml's or ours): it must exit 0 and print its KERNEL_TEST_PROOF."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{test} ({build}):\n{output[-3000:]}"
    assert KERNEL_TEST_PROOF[test] in output, f"{test} ({build}) passed without printing {KERNEL_TEST_PROOF[test]!r}"
