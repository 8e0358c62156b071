"""The NEON BM1 kernels, cross-built for aarch64 and run under qemu-user, with and without dotprod.

In CI (CI=true) the cross toolchain and qemu are required (.ci/run installs them); elsewhere the test is
skipped when they are absent, with the reason.
"""

from __future__ import annotations

import os
import shutil

import pytest

from bimamba_edge.build import AARCH64_VARIANTS, KERNEL_TESTS, cross_build_aarch64
from conftest import assert_kernel_test_passes

# a CPU without dotprod for the plain build: an sdot there would die with SIGILL instead of passing
QEMU_CPU = {"dotprod": "max", "plain": "cortex-a53"}


@pytest.mark.heavy
@pytest.mark.parametrize("variant", AARCH64_VARIANTS)
def test_bm1_kernels_pass_under_qemu(variant):
    missing = [tool for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64") if shutil.which(tool) is None]
    if missing and os.environ.get("CI") != "true":
        pytest.skip(f"{', '.join(missing)} not installed (Debian: g++-aarch64-linux-gnu qemu-user)")
    bin_dir = cross_build_aarch64(variant)
    for test in KERNEL_TESTS:
        assert_kernel_test_passes(["qemu-aarch64", "-cpu", QEMU_CPU[variant], str(bin_dir / test)], test, variant)
