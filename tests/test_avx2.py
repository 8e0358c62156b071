"""The AVX2 BM1 kernel, from ggml built with AVX2 and no AVX-512.

The runtime's native build takes the AVX-512 path on a CPU that has it (the Intel hosts of sessions 1-8 did), so
without this build the AVX2 kernel would go untested there. On an AVX2-only host (session 9's AMD EPYC) it
repeats what the native build tests. Skipped only on a host that is not x86-64.
"""

from __future__ import annotations

import platform

import pytest

from bimamba_edge.build import KERNEL_TESTS, build_x86_avx2
from conftest import assert_kernel_test_passes


@pytest.mark.heavy
def test_bm1_avx2_kernel_passes():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"an x86-64 build; this host is {platform.machine()}")
    bin_dir = build_x86_avx2()
    for test in KERNEL_TESTS:
        assert_kernel_test_passes([str(bin_dir / test)], test, "AVX2")
