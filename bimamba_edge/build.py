"""`bimamba-build`: the patched llama.cpp runtime, built from the pinned upstream sdist.

1. fetch llama-cpp-python's sdist by exact version with pip and verify its sha256 (upstream.py);
2. copy its tree and apply every `ggml-patches/*.patch` in name order (a hunk that does not apply stops
   the build, naming the patch);
3. build llama.cpp with CMake: shared libraries, the tools (llama-bench, llama-quantize,
   llama-perplexity) and the tests (test-quantize-fns, test-bm1);
4. install that tree's llama-cpp-python (Python part only) and gguf-py into the current environment and
   put the freshly built libraries into `llama_cpp/lib`, so `import llama_cpp` loads the patched build.

Everything is cached under a key hashed from the sdist, the patches' contents and the build flags:
nothing is rebuilt unless one of them changes, and a changed input can never reuse a stale build.
Builds of other patch sets stay in the cache until `bimamba-build --prune` removes them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from . import upstream
from .cli_util import run_main
from .errors import BimambaError

REPO_ROOT = Path(__file__).resolve().parents[1]
PATCH_DIR = REPO_ROOT / "ggml-patches"
TOOLS = ("llama-bench", "llama-quantize", "llama-perplexity")
# test-backend-ops is left out: it checks other backends against the CPU one, and only the CPU is built here.
TESTS = ("test-quantize-fns", "test-bm1")
RUNTIME_RECORD = "runtime.json"


@dataclass(frozen=True)
class Runtime:
    """Where a finished build lives."""

    key: str
    source: str      # patched llama.cpp tree
    build_dir: str   # CMake build; binaries and libraries in bin/
    flags: list[str]

    def binary(self, name: str) -> Path:
        return Path(self.build_dir) / "bin" / name


def patches() -> list[Path]:
    found = sorted(PATCH_DIR.glob("*.patch"))
    if not found:
        raise BimambaError(f"{PATCH_DIR}: no patches found (run from a clone of bimamba-edge)")
    return found


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def patches_key() -> str:
    return _digest(upstream.SDIST_SHA256.encode(), *(p.name.encode() + b"\0" + p.read_bytes() for p in patches()))


def cmake_flags(portable: bool) -> list[str]:
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
             "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=ON", "-DLLAMA_BUILD_TOOLS=ON",
             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DGGML_METAL=OFF", "-DGGML_BLAS=OFF"]
    if not portable:
        return flags + ["-DGGML_NATIVE=ON"]
    flags.append("-DGGML_NATIVE=OFF")
    if platform.machine().lower() in ("x86_64", "amd64"):  # AVX2 machines (2013 on) as the portable floor
        flags += ["-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"]
    return flags


def patched_tree_name() -> str:
    return f"patched-{patches_key()}"


def patched_tree() -> Path:
    """A copy of the sdist with our patches applied, cached by the patches' hash."""
    tree = upstream.cache_dir() / patched_tree_name()
    complete = tree / ".bimamba-complete"
    if complete.exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    staging = tree.with_name(tree.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(upstream.source_tree(), staging, symlinks=True)
    llama_dir = staging / "vendor" / "llama.cpp"
    for patch in patches():
        proc = subprocess.run(["git", "apply", "--whitespace=nowarn", str(patch)], cwd=llama_dir,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["no message"])[0]
            shutil.rmtree(staging, ignore_errors=True)
            raise BimambaError(f"{patch.name} does not apply to llama-cpp-python "
                               f"{upstream.LLAMA_CPP_PYTHON_VERSION}: {first}")
    os.replace(staging, tree)
    complete.write_text(patches_key() + "\n")
    return tree


def _run(cmd: list[str], what: str, log: Path, **kwargs) -> None:
    """Runs a build step with its output in a log file; a failure names the step and the log."""
    print(f"bimamba-build: {what}", file=sys.stderr, flush=True)
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        print("\n".join(tail), file=sys.stderr)
        raise BimambaError(f"{what} failed (exit {proc.returncode}); full log: {log}")


def runtime_key(portable: bool) -> str:
    return _digest(patches_key().encode(), " ".join(cmake_flags(portable) + list(TOOLS + TESTS)).encode(),
                   platform.machine().encode())


def build(portable: bool = False, jobs: int | None = None) -> Runtime:
    source = patched_tree()
    flags = cmake_flags(portable)
    key = runtime_key(portable)
    build_dir = upstream.cache_dir() / f"build-{key}"
    runtime = Runtime(key, str(source), str(build_dir), flags)
    log = upstream.cache_dir() / f"build-{key}.log"
    done = build_dir / ".bimamba-complete"
    if not done.exists():
        llama_dir = source / "vendor" / "llama.cpp"
        jobs = jobs or os.cpu_count() or 2
        _run(["cmake", "-S", str(llama_dir), "-B", str(build_dir), *flags], "configuring llama.cpp", log)
        _run(["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(jobs), "--target", "llama",
              *TOOLS, *TESTS], f"compiling llama.cpp with {jobs} jobs (several minutes on 2 cores)", log)
        done.write_text(key + "\n")
    _install_python(runtime, log)
    (upstream.cache_dir() / RUNTIME_RECORD).write_text(json.dumps(asdict(runtime), indent=2))
    stale = stale_entries()
    if stale:
        print(f"bimamba-build: {len(stale)} cache entries of other patch sets in {upstream.cache_dir()}; "
              "`bimamba-build --prune` removes them", file=sys.stderr)
    return runtime


def _install_python(runtime: Runtime, log: Path) -> None:
    """llama-cpp-python (without its own compile) and gguf-py from the patched tree, then our libraries."""
    spec = importlib.util.find_spec("llama_cpp")
    lib_dir = Path(spec.origin).parent / "lib" if spec and spec.origin else None
    if lib_dir and (lib_dir / ".bimamba-build").exists() and (lib_dir / ".bimamba-build").read_text() == runtime.key:
        return
    source = Path(runtime.source)
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--disable-pip-version-check"]
    env = dict(os.environ, CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF")
    _run([*pip, str(source)], "installing llama-cpp-python (bindings only)", log, env=env)
    _run([*pip, str(source / "vendor" / "llama.cpp" / "gguf-py")], "installing the patched gguf-py", log)
    spec = importlib.util.find_spec("llama_cpp")
    lib_dir = Path(spec.origin).parent / "lib"
    lib_dir.mkdir(exist_ok=True)
    suffixes = (".so", ".dylib")
    for lib in Path(runtime.build_dir, "bin").iterdir():
        if lib.name.startswith("lib") and (lib.suffix in suffixes or ".so." in lib.name):
            shutil.copy2(lib, lib_dir / lib.name, follow_symlinks=True)
    (lib_dir / ".bimamba-build").write_text(runtime.key)


def current_runtime() -> Runtime:
    """The last build, provided it was built from the patches as they are now."""
    record = upstream.cache_dir() / RUNTIME_RECORD
    if not record.exists():
        raise BimambaError("the patched llama.cpp runtime is not built: run `bimamba-build` (README)")
    runtime = Runtime(**json.loads(record.read_text()))
    if not Path(runtime.source).name.endswith(patches_key()):
        raise BimambaError("ggml-patches/ changed since the runtime was built: run `bimamba-build` again")
    return runtime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bimamba-build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--portable", action="store_true",
                        help="no -march=native: AVX2 floor on x86-64, plain NEON on arm64")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="parallel compile jobs (default: all cores)")
    parser.add_argument("--prune", action="store_true",
                        help="remove the cached builds and patched trees of other patch sets, then exit")
    args = parser.parse_args(argv)

    def work() -> int:
        if args.prune:
            removed, freed = prune()
            print(f"removed {removed} cache entries of other patch sets ({freed / 1e9:.2f} GB) from {upstream.cache_dir()}")
            return 0
        runtime = build(portable=args.portable, jobs=args.jobs)
        print(f"runtime {runtime.key}: {runtime.build_dir}")
        return 0

    return run_main("bimamba-build", work)


# -- Kernels of other ISAs: ggml alone, built for one ISA, with the BM1 kernel tests linked in ----------------
# NEON without a Mac (cross-built for aarch64, run under qemu-user), and AVX2 on x86 hosts whose native build
# takes the AVX-512 path (so the AVX2 kernel is tested wherever the suite runs).

AARCH64_VARIANTS = {"dotprod": "armv8.2-a+dotprod", "plain": "armv8-a"}
KERNEL_TESTS = ("test-bm1", "test-quantize-fns")  # need only ggml, so they are linked against it directly
# configured through llama.cpp's top level (the sdist lacks files for a standalone ggml), ggml targets only
_GGML_ONLY = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF", "-DBUILD_SHARED_LIBS=OFF",
              "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
              "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF"]


def _ggml_with_kernel_tests(name: str, what: str, cmake_flags: list[str], cxx: list[str], jobs: int | None) -> Path:
    """Static ggml configured with cmake_flags, the kernel tests linked with cxx; returns their directory."""
    source = patched_tree() / "vendor" / "llama.cpp"
    build_dir = upstream.cache_dir() / name
    bin_dir = build_dir / "tests"
    if (build_dir / ".bimamba-complete").exists():
        return bin_dir
    log = upstream.cache_dir() / f"{name}.log"
    _run(["cmake", "-S", str(source), "-B", str(build_dir), *_GGML_ONLY, *cmake_flags], f"configuring ggml for {what}", log)
    _run(["cmake", "--build", str(build_dir), "-j", str(jobs or os.cpu_count() or 2), "--target", "ggml", "ggml-cpu",
          "ggml-base"], f"compiling ggml for {what}", log)
    bin_dir.mkdir(exist_ok=True)
    libs = [next(build_dir.rglob(f"lib{lib}.a")) for lib in ("ggml", "ggml-cpu", "ggml-base")]
    for test in KERNEL_TESTS:
        _run([*cxx, "-O2", "-std=c++17", f"-I{source / 'ggml' / 'include'}", str(source / "tests" / f"{test}.cpp"),
              *map(str, libs), "-lpthread", "-lm", "-o", str(bin_dir / test)], f"linking {test} for {what}", log)
    (build_dir / ".bimamba-complete").write_text(name + "\n")
    return bin_dir


def aarch64_name(variant: str) -> str:
    return f"aarch64-{variant}-{_digest(patches_key().encode(), AARCH64_VARIANTS[variant].encode(), b'aarch64-ggml')}"


def cross_build_aarch64(variant: str, jobs: int | None = None) -> Path:
    """Static ggml for aarch64 with -march from AARCH64_VARIANTS, plus the BM1 kernel tests; returns bin dir.

    Needs Debian's g++-aarch64-linux-gnu. Only ggml is built (llama.cpp's own test targets would drag in
    libllama and its HTTP client, ten minutes a variant on 2 cores).
    """
    if shutil.which("aarch64-linux-gnu-g++") is None:
        raise BimambaError("aarch64-linux-gnu-g++ not found (Debian: apt-get install g++-aarch64-linux-gnu qemu-user)")
    march = AARCH64_VARIANTS[variant]
    return _ggml_with_kernel_tests(
        aarch64_name(variant), f"aarch64 ({march})",
        ["-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64", "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc",
         "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++", f"-DGGML_CPU_ARM_ARCH={march}"],
        ["aarch64-linux-gnu-g++", "-static"], jobs)


def x86_avx2_name() -> str:
    return f"x86-avx2-{_digest(patches_key().encode(), b'x86-avx2-ggml')}"


def build_x86_avx2(jobs: int | None = None) -> Path:
    """Static ggml for x86-64 with AVX2 and FMA but no AVX-512, plus the BM1 kernel tests; returns bin dir."""
    return _ggml_with_kernel_tests(
        x86_avx2_name(), "x86-64 AVX2 (no AVX-512)",
        ["-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON"], ["c++"], jobs)


# -- The cache across patch sets ----------------------------------------------------------------------------
# Every build above is named <family>-<16 hex digits>, with its log beside it as <name>.log. Entries of other
# patch sets are never used again by this checkout; they stay until pruned, since another checkout may use them.
_PATCH_SET_ENTRY = re.compile(r"(patched|build|x86-avx2|aarch64-[a-z]+)-[0-9a-f]{16}")


def entries_in_use() -> set[str]:
    """The cache entries that the patches as they are now use: the patched tree, the runtime built natively and
    portably, and the kernel-test builds."""
    return {patched_tree_name(), f"build-{runtime_key(False)}", f"build-{runtime_key(True)}", x86_avx2_name(),
            *(aarch64_name(variant) for variant in AARCH64_VARIANTS)}


def stale_entries() -> list[Path]:
    """Builds, patched trees and their logs made from other patch sets (older checkouts)."""
    in_use = entries_in_use()
    stale = []
    for path in sorted(upstream.cache_dir().iterdir()):
        name = path.name.removesuffix(".log").removesuffix(".staging")
        if _PATCH_SET_ENTRY.fullmatch(name) and name not in in_use:
            stale.append(path)
    return stale


def prune() -> tuple[int, int]:
    """Removes stale_entries(); returns how many and their bytes."""
    removed = freed = 0
    for path in stale_entries():
        if path.is_dir() and not path.is_symlink():
            freed += sum(f.lstat().st_size for f in path.rglob("*") if not f.is_dir() or f.is_symlink())
            shutil.rmtree(path)
        else:
            freed += path.lstat().st_size
            path.unlink()
        removed += 1
    return removed, freed
