"""The patched llama.cpp, driven through llama-cpp-python: load a GGUF, get logits, generate.

A thin layer: llama_cpp.Llama does the work. What it adds is what a user of the 1-bit files needs:
a preflight that turns a truncated file, a foreign architecture or corrupted tensor data into one
clear error (ggml's own `ggml_validate_row_data` checks every tensor, BM1 included), llama.cpp's log
captured instead of sprayed on stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import BimambaError

ARCHITECTURES = ("bimamba2", "mamba2")
# Storage of the SSM state cache between tokens: f32 (the default, exact) or f16 (opt-in: half the state
# stream, the update itself still computed in f32). A bimamba2 file may set it with this key (bimamba-convert
# --state-type); loading can override it either way (docs/format.md).
STATE_TYPES = ("f32", "f16")
STATE_F16_KEY = "bimamba2.ssm.state_f16"
_log_lines: list[str] = []


def _import_llama_cpp():
    """llama_cpp from the patched build (bimamba-build), with llama.cpp's log kept for error messages."""
    from .build import current_runtime

    current_runtime()  # refuses a missing or stale build with a clear message
    try:
        import llama_cpp
    except (ImportError, OSError) as e:
        raise BimambaError(f"llama_cpp from the patched build cannot be loaded ({e}); run `bimamba-build`") from None
    if not hasattr(_import_llama_cpp, "callback"):
        @llama_cpp.llama_log_callback
        def keep(level, text, user_data):
            _log_lines.append(text.decode("utf-8", "replace"))
            del _log_lines[:-200]
        llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
        _import_llama_cpp.callback = keep  # the C side holds a pointer: keep the function alive
    return llama_cpp


def _last_error() -> str:
    errors = [line.strip() for line in _log_lines if "error" in line.lower() or "failed" in line.lower()]
    return errors[-1] if errors else "no reason given by llama.cpp"


def preflight(path: Path) -> dict:
    """Reads the GGUF's header and validates every tensor's data with ggml; returns the metadata that matters."""
    import gguf  # the patched gguf-py knows BM1

    _import_llama_cpp()
    if not path.is_file():
        raise BimambaError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # gguf-py raises bare ValueError/IndexError/KeyError on damaged files
        raise BimambaError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch_field = reader.fields.get("general.architecture")
    arch = bytes(arch_field.parts[-1]).decode() if arch_field else "(none)"
    if arch not in ARCHITECTURES:
        raise BimambaError(f"{path}: architecture {arch!r} is not a Mamba-2 model ({' or '.join(ARCHITECTURES)})")
    from llama_cpp._utils import suppress_stdout_stderr

    from .ggml import validate_row_data

    for tensor in reader.tensors:
        data = np.ascontiguousarray(tensor.data)
        if data.nbytes != tensor.n_bytes:
            raise BimambaError(f"{path}: tensor {tensor.name} is cut short (file truncated?)")
        with suppress_stdout_stderr(disable=False):  # ggml prints its own finding; ours is the one line
            valid = validate_row_data(int(tensor.tensor_type), data)
        if not valid:
            raise BimambaError(f"{path}: tensor {tensor.name} holds invalid data (NaN/inf scales or values)")
    return {"arch": arch, "n_tensors": len(reader.tensors)}


@contextlib.contextmanager
def _model_params(llama_cpp, **fields):
    """llama_model_params fields that Llama() takes no argument for, set on the defaults it starts from."""
    low = llama_cpp.llama_cpp
    defaults = low.llama_model_default_params

    def with_fields():
        params = defaults()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    low.llama_model_default_params = with_fields
    try:
        yield
    finally:
        low.llama_model_default_params = defaults


class Model:
    """A GGUF loaded in the patched llama.cpp. `logits` and `generate` restart from an empty state."""

    def __init__(self, path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None, seed: int = 0,
                 state_type: str | None = None, repack: bool = True, check: bool = True):
        """state_type: "f32" or "f16" overrides the file's SSM state storage (STATE_TYPES); None keeps it.
        repack: let llama.cpp repack weights at load for its faster kernels (BM1: the lookup-table matmul where
        the build has one), as llama.cpp does by default; False keeps the file's layout (llama-bench --repack 0)."""
        self.path = Path(path)
        if state_type is not None and state_type not in STATE_TYPES:
            raise BimambaError(f"unknown state type {state_type!r}; choose from {', '.join(STATE_TYPES)}")
        self.info = preflight(self.path) if check else {}
        llama_cpp = _import_llama_cpp()
        threads = n_threads or os.cpu_count() or 1
        overrides = {STATE_F16_KEY: state_type == "f16"} if state_type else None
        try:
            with _model_params(llama_cpp, use_extra_bufts=repack):
                self.llama = llama_cpp.Llama(str(self.path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=threads,
                                             n_threads_batch=threads, logits_all=True, seed=seed,
                                             kv_overrides=overrides, verbose=False)
        except ValueError:
            raise BimambaError(f"{self.path}: llama.cpp could not load it: {_last_error()}") from None
        arch = self.llama.metadata.get("general.architecture")
        if state_type == "f16" and arch != "bimamba2":
            raise BimambaError(f"{self.path}: an f16 state needs a bimamba2 file (this one is {arch})")
        self.state_type = state_type or ("f16" if self.llama.metadata.get(STATE_F16_KEY) == "true" else "f32")
        self.n_vocab = self.llama.n_vocab()

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.llama.tokenize(text.encode(), add_bos=add_bos)

    def detokenize(self, tokens: list[int]) -> str:
        return self.llama.detokenize(tokens).decode("utf-8", "replace")

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits (len(tokens), n_vocab) of every position, from an empty state."""
        self.llama.reset()
        self.llama.eval(tokens)
        return np.array(self.llama.scores[: len(tokens)], dtype=np.float32)

    def generate(self, prompt_tokens: list[int], max_tokens: int, *, temp: float = 0.0, top_k: int = 40,
                 top_p: float = 0.95) -> Iterator[int]:
        """Token ids as they come; temp 0 is greedy (deterministic). Stops at end-of-sequence."""
        eos = self.llama.token_eos()
        self.llama.reset()  # never reuse a cached prefix: a recurrent state cannot be rolled back
        for n, token in enumerate(self.llama.generate(prompt_tokens, top_k=top_k, top_p=top_p, min_p=0.0,
                                                      temp=temp, repeat_penalty=1.0, reset=True)):
            if token == eos or n >= max_tokens:
                return
            yield token


def load(path: str | Path, **kwargs) -> Model:
    """`bimamba_edge.load("model.gguf")` -> Model with tokenize / logits / generate."""
    return Model(path, **kwargs)


def maxrss_bytes(ru_maxrss: int) -> int:
    """rusage's ru_maxrss in bytes: it is KiB on Linux and bytes on macOS."""
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


def peak_rss_bytes() -> int:
    import resource

    return maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
