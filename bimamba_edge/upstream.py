"""The pinned upstream: llama.cpp as vendored in the llama-cpp-python sdist on PyPI.

The sdist is fetched with pip by exact version, checked against its sha256 every time it is used,
and unpacked once into the cache. Nothing from it is ever committed to this repository.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .errors import BimambaError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"


def cache_dir() -> Path:
    root = os.environ.get("BIMAMBA_EDGE_CACHE") or Path.home() / ".cache" / "bimamba-edge"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_sdist() -> Path:
    """Path of the verified sdist tarball, downloading it with pip when it is not cached."""
    target = cache_dir() / SDIST_NAME
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
                   "--disable-pip-version-check", "-d", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            downloaded = Path(tmp) / SDIST_NAME
            if proc.returncode != 0 or not downloaded.exists():
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise BimambaError(f"could not download llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} with pip: {last}")
            os.replace(downloaded, target)
    actual = sha256_file(target)
    if actual != SDIST_SHA256:
        target.unlink()
        raise BimambaError(f"{target}: sha256 {actual} is not the pinned {SDIST_SHA256}; removed it, run again")
    return target


def source_tree() -> Path:
    """The unpacked, unpatched sdist (its llama.cpp is under vendor/llama.cpp)."""
    tarball = fetch_sdist()
    tree = cache_dir() / f"src-{SDIST_SHA256[:16]}"
    complete = tree / ".bimamba-complete"
    if not complete.exists():
        shutil.rmtree(tree, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
        with tarfile.open(tarball) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}", tree)
        shutil.rmtree(tmp)
        complete.write_text(SDIST_SHA256 + "\n")
    return tree


def vendored_path(relpath: str) -> Path:
    """A file of the pinned llama.cpp, e.g. vendored_path("models/ggml-vocab-llama-spm.gguf")."""
    path = source_tree() / "vendor" / "llama.cpp" / relpath
    if not path.exists():
        raise BimambaError(f"{relpath} is not in llama.cpp from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}")
    return path
