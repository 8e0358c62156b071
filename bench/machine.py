"""What machine the figures come from: CPU model, cores, the SIMD features that matter, OS, memory."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

# x86 /proc/cpuinfo flags and arm64 features that decide which ggml kernels run
ISA_OF_INTEREST = ("sse3", "ssse3", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                   "avx512_bf16", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "sve2", "fphp")


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_info() -> dict:
    info = {"os": platform.platform(), "arch": platform.machine(), "python": platform.python_version(),
            "cores_logical": os.cpu_count(), "cores_physical": None, "cpu": None, "isa": [], "memory_bytes": None}
    try:
        import psutil

        info["cores_physical"] = psutil.cpu_count(logical=False)
        info["memory_bytes"] = psutil.virtual_memory().total
    except Exception:  # psutil is a dependency, but the figures must not hang on it
        pass
    if sys.platform.startswith("linux"):
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
        flags: set[str] = set()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "Hardware") and not info["cpu"]:
                info["cpu"] = value.strip()
            elif key in ("flags", "Features"):
                flags.update(value.split())
        info["isa"] = [f for f in ISA_OF_INTEREST if f in flags]
    elif sys.platform == "darwin":
        info["cpu"] = _sysctl("machdep.cpu.brand_string")
        features = {"asimd": "hw.optional.AdvSIMD", "asimddp": "hw.optional.arm.FEAT_DotProd",
                    "i8mm": "hw.optional.arm.FEAT_I8MM", "fphp": "hw.optional.arm.FEAT_FP16"}
        info["isa"] = [name for name, key in features.items() if _sysctl(key) == "1"]
        perf = _sysctl("hw.perflevel0.physicalcpu")
        eff = _sysctl("hw.perflevel1.physicalcpu")
        if perf:
            info["cores_performance"] = int(perf)
        if eff:
            info["cores_efficiency"] = int(eff)
    info["cpu"] = info["cpu"] or platform.processor() or "unknown"
    return info
