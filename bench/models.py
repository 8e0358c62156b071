"""The comparison set: from one checkpoint, our BM1 files and the stock llama.cpp types, all the same weights.

- `bm1-q6_K`, `bm1-f16`: `bimamba-convert CKPT out.gguf --head-type q6_K|f16` (arch bimamba2);
  `bm1-q6_K-f16state` adds `--state-type f16` (the opt-in f16 SSM state).
- `f16`: `bimamba-convert CKPT out.gguf --outtype f16`: the effective FBI weights, plain mamba2.
- `q8_0` (Q8_0 head), `q4_0`, `tq2_0`, `tq1_0`, `q1_0` (Q6_K head): the patched build's `llama-quantize`
  from that F16 file. Stock files are plain mamba2 and run on the same patched build as ours.

Files are cached per checkpoint (a fingerprint of config.json and the weight files' names, sizes and
mtimes) and per converter version (a hash of the converter's sources); a stock file remembers the F16
file it was made from. The stock quantizers are upstream code our patches do not touch, so a rebuilt
runtime does not invalidate them. `scan_models(DIR)` instead takes already-made files and names each from
its own header, for machines with only a llama-bench binary.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bimamba_edge.errors import BimambaError

from .gguf_header import GGUFHeader, read_header


@dataclass(frozen=True)
class Variant:
    id: str
    label: str
    convert_args: tuple[str, ...] = ()     # bimamba-convert options (made from the checkpoint)
    quantize_type: str | None = None        # llama-quantize type (made from the f16 file)
    head_type: str | None = None            # llama-quantize --token-embedding-type / --output-tensor-type


COMPARISON_SET = (
    Variant("bm1-q6_K", "BM1 (ours), Q6_K head", convert_args=("--head-type", "q6_K")),
    Variant("bm1-f16", "BM1 (ours), F16 head", convert_args=("--head-type", "f16")),
    Variant("bm1-q6_K-f16state", "BM1 (ours), Q6_K head, F16 state",
            convert_args=("--head-type", "q6_K", "--state-type", "f16")),
    Variant("f16", "F16", convert_args=("--outtype", "f16")),
    Variant("q8_0", "Q8_0, Q8_0 head", quantize_type="Q8_0", head_type="q8_0"),
    Variant("q4_0", "Q4_0, Q6_K head", quantize_type="Q4_0", head_type="q6_K"),
    Variant("tq2_0", "TQ2_0, Q6_K head", quantize_type="TQ2_0", head_type="q6_K"),
    Variant("tq1_0", "TQ1_0, Q6_K head", quantize_type="TQ1_0", head_type="q6_K"),
    Variant("q1_0", "Q1_0, Q6_K head", quantize_type="Q1_0", head_type="q6_K"),
)
VARIANTS = {v.id: v for v in COMPARISON_SET}
# the head a stock type gets in the comparison set (a file with another head gets it in its id)
DEFAULT_HEAD = {"f16": "F16", "q8_0": "Q8_0"}


@dataclass(frozen=True)
class ModelFile:
    id: str
    label: str
    path: Path
    header: GGUFHeader

    @property
    def matrix_type(self) -> str:
        return self.header.tensors["blk.0.ssm_in.weight"].type_name

    @property
    def head_type(self) -> str:
        t = self.header.tensors.get("output.weight") or self.header.tensors["token_embd.weight"]
        return t.type_name

    def describe(self) -> dict:
        return {"id": self.id, "label": self.label, "path": str(self.path), "file_bytes": self.header.file_bytes,
                "arch": self.header.arch, "matrix_type": self.matrix_type, "head_type": self.head_type,
                "tied_head": "output.weight" not in self.header.tensors}


def _type_id_form(name: str) -> str:
    return name.lower().replace("_k", "_K")


def identify(path: Path) -> ModelFile:
    """Names a GGUF from its header: bm1-<head> for ours, <matrix type>[-<head> when unusual] for stock."""
    header = read_header(path)
    if header.arch not in ("bimamba2", "mamba2"):
        raise BimambaError(f"{path}: architecture {header.arch!r} is not mamba2 / bimamba2")
    if "blk.0.ssm_in.weight" not in header.tensors or "token_embd.weight" not in header.tensors:
        raise BimambaError(f"{path}: no blk.0.ssm_in.weight / token_embd.weight: not a Mamba-2 GGUF")
    probe = ModelFile("", "", path, header)
    matrix, head = probe.matrix_type, probe.head_type
    if header.arch == "bimamba2":
        mid = f"{_type_id_form(matrix)}-{_type_id_form(head)}"
        label = f"{matrix} (ours), {head} head"
        if header.state_f16:
            mid, label = mid + "-f16state", label + ", F16 state"
    else:
        mid = _type_id_form(matrix)
        if head != DEFAULT_HEAD.get(mid, "Q6_K"):
            mid += f"-{_type_id_form(head)}"
        label = matrix if matrix == head == "F16" else f"{matrix}, {head} head"
    known = VARIANTS.get(mid)
    return ModelFile(mid, known.label if known else label, path, header)


def scan_models(directory: Path, ids: list[str] | None = None) -> list[ModelFile]:
    files = sorted(Path(directory).glob("*.gguf"))
    if not files:
        raise BimambaError(f"{directory}: no .gguf files")
    models = {}
    for f in files:
        m = identify(f)
        if m.id in models:
            raise BimambaError(f"{f} and {models[m.id].path} are both {m.id}: keep one per type in {directory}")
        models[m.id] = m
    if ids:
        missing = [i for i in ids if i not in models]
        if missing:
            raise BimambaError(f"{directory}: no file for {', '.join(missing)} (found: {', '.join(models)})")
        return [models[i] for i in ids]
    order = {v.id: n for n, v in enumerate(COMPARISON_SET)}
    return sorted(models.values(), key=lambda m: (order.get(m.id, len(order)), m.id))


# -- building the set from a checkpoint ---------------------------------------------------------------------

def checkpoint_key(checkpoint: Path) -> str:
    checkpoint = Path(checkpoint)
    config = checkpoint / "config.json"
    if not config.is_file():
        raise BimambaError(f"{checkpoint}: no config.json (not a checkpoint directory)")
    h = hashlib.sha256(config.read_bytes())
    for f in sorted(checkpoint.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".json", ".model") and f.is_file():
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def converter_key() -> str:
    """Hash of the sources that decide what bimamba-convert writes."""
    import bimamba_edge
    import bimamba_edge.convert

    pkg = Path(bimamba_edge.__file__).parent
    sources = sorted(Path(bimamba_edge.convert.__file__).parent.glob("*.py"))
    sources += [pkg / n for n in ("quants.py", "checkpoint.py", "spm.py")]
    h = hashlib.sha256()
    for s in sources:
        if s.exists():
            h.update(s.name.encode() + b"\0" + s.read_bytes())
    return h.hexdigest()[:16]


def _sidecar(path: Path) -> dict | None:
    side = path.with_suffix(".json")
    if path.exists() and side.exists():
        try:
            return json.loads(side.read_text())
        except json.JSONDecodeError:
            return None
    return None


def _run_step(cmd: list[str], what: str, log) -> float:
    log(f"making {what}: {' '.join(cmd)}")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-3:]
        raise BimambaError(f"making {what} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return time.monotonic() - t0


def build_set(checkpoint: Path, ids: list[str], cache_root: Path, quantize_bin: Path | None,
              log=lambda msg: print(msg, file=sys.stderr)) -> list[ModelFile]:
    """Makes (or reuses) every requested variant; returns them in the order asked."""
    unknown = [i for i in ids if i not in VARIANTS]
    if unknown:
        raise BimambaError(f"unknown model type(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    checkpoint = Path(checkpoint)
    directory = Path(cache_root) / checkpoint_key(checkpoint)
    directory.mkdir(parents=True, exist_ok=True)
    conv = converter_key()
    made: dict[str, dict] = {}

    def ensure(variant: Variant) -> Path:
        out = directory / f"{variant.id}.gguf"
        if variant.quantize_type:
            source = ensure(VARIANTS["f16"])
            key = {"from": made["f16"]["key"], "type": variant.quantize_type, "head": variant.head_type}
        else:
            key = {"checkpoint": str(checkpoint.resolve()), "converter": conv, "args": list(variant.convert_args)}
        key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        side = _sidecar(out)
        if side and side.get("key") == key_hash:
            made[variant.id] = side
            return out
        tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
        try:
            if variant.quantize_type:
                if quantize_bin is None:
                    raise BimambaError("llama-quantize is needed to make the stock types (pass --llama-quantize "
                                       "or run bimamba-build), or give already-made files with --models DIR")
                cmd = [str(quantize_bin), "--token-embedding-type", variant.head_type, "--output-tensor-type",
                       variant.head_type, str(source), str(tmp), variant.quantize_type]
            else:
                cmd = [sys.executable, "-m", "bimamba_edge.convert.cli", str(checkpoint), str(tmp),
                       *variant.convert_args]
            seconds = _run_step(cmd, f"{variant.id} ({variant.label})", log)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        record = {"key": key_hash, "inputs": key, "seconds": round(seconds, 1), "command": cmd}
        out.with_suffix(".json").write_text(json.dumps(record, indent=2))
        made[variant.id] = record
        return out

    models = []
    for i in ids:
        path = ensure(VARIANTS[i])
        m = identify(path)
        models.append(ModelFile(i, VARIANTS[i].label, path, m.header))
    return models
