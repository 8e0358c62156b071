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
