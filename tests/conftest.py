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


def assert_c_test_passes(cmd: list[str], label: str) -> str:
    """Runs a C test binary (ggml's or ours); fails with the tail of its output unless it exits 0."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{label}:\n{output[-3000:]}"
    return output
