"""The AVX2 BM1 kernel, from ggml built with AVX2 and no AVX-512.

The runtime's native build takes the AVX-512 path on a CPU that has it (this project's machines do), so
without this build the AVX2 kernel would go untested there. Skipped only on a host that is not x86-64.
"""

from __future__ import annotations

import platform
import subprocess

import pytest

from bimamba_edge.build import KERNEL_TESTS, build_x86_avx2


@pytest.mark.heavy
def test_bm1_avx2_kernel_passes():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"an x86-64 build; this host is {platform.machine()}")
    bin_dir = build_x86_avx2()
    for test in KERNEL_TESTS:
        proc = subprocess.run([str(bin_dir / test)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{test} (AVX2):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
