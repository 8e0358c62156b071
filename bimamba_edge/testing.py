"""Random but sane Bi-Mamba checkpoints in every layout users bring, for tests and benchmarks.

Tensors are generated one at a time from a per-tensor seed and streamed to disk, so even the 2.7B
shape never needs the whole model in memory (safetensors layouts; the pickle layouts hold the model
in memory and are meant for small shapes).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from .checkpoint import PAPER_SHAPES, PROJECTIONS, MambaConfig, expected_shapes  # noqa: F401 (PAPER_SHAPES re-exported)

LAYOUTS = ("mamba_ssm", "transformers")
FILE_FORMATS = ("safetensors", "sharded", "bin", "bins")
SCALINGS = ("column", "row", "single", "none")
DTYPES = ("float32", "bfloat16", "float16", "mixed")

_SAFETENSORS_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}

SAMPLE_TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. However little known the feelings or views of such a man may be on his first entering "
    "a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is "
    "considered the rightful property of some one or other of their daughters. Call me Ishmael. Some years "
    "ago, never mind how long precisely, having little or no money in my purse, and nothing particular to "
    "interest me on shore, I thought I would sail about a little and see the watery part of the world. "
    "1234567890 !?., 'quoted' \"double\" (paren) [bracket] caf\u00e9 na\u00efve \u2014 \u00e9t\u00e9."
)


@dataclass(frozen=True)
class FixtureSpec:
    """What to write. `scaling` applies to both projections unless `in_proj_only`."""

    config: MambaConfig
    layout: str = "mamba_ssm"
    file_format: str = "safetensors"
    scaling: str = "column"
    in_proj_only: bool = False
    dtype: str = "float32"
    zero_fraction: float = 0.0   # share of latent projection weights set to exactly 0 (fp16 checkpoints do this)
    tokenizer: str | None = "tiny"  # "tiny": a BPE trained on SAMPLE_TEXT; None: no tokenizer.model
    seed: int = 0


def small_config(**overrides) -> MambaConfig:
    """The shape tests use: every dimension as small as BM1 (rows of 256) and a real Mamba2 allow."""
    values = dict(d_model=256, n_layer=2, vocab_size=384, pad_vocab_size_multiple=16, d_state=16,
                  headdim=32, ngroups=1)
    values.update(overrides)
    return MambaConfig(**values)


def tiny_tokenizer_bytes(vocab_size: int) -> bytes:
    from . import spm
    return spm.serialize(spm.train_bpe(SAMPLE_TEXT, vocab_size))


def _storage_dtype(name: str, spec: FixtureSpec) -> torch.dtype:
    if spec.dtype == "mixed":  # what real checkpoints mix: bf16 big matrices, fp16 scales, fp32 the rest
        if name.endswith(("in_proj.weight", "out_proj.weight", "embedding.weight", "lm_head.weight")):
            return torch.bfloat16
        if name.endswith(("wscale", "wbias")):
            return torch.float16
        return torch.float32
    return getattr(torch, spec.dtype)


def _tensor_specs(spec: FixtureSpec) -> dict[str, tuple[int, ...]]:
    cfg = spec.config
    shapes = expected_shapes(cfg)
    if cfg.tie_embeddings:
        shapes["lm_head.weight"] = shapes["backbone.embedding.weight"]  # mamba_ssm saves the tied copy too
    if spec.scaling != "none":
        for i in range(cfg.n_layer):
            for proj in PROJECTIONS[:1] if spec.in_proj_only else PROJECTIONS:
                out_f, in_f = shapes[f"backbone.layers.{i}.mixer.{proj}.weight"]
                scale_shape = {"column": (1, in_f), "row": (out_f, 1), "single": (1,)}[spec.scaling]
                shapes[f"backbone.layers.{i}.mixer.{proj}.wscale"] = scale_shape
                shapes[f"backbone.layers.{i}.mixer.{proj}.wbias"] = scale_shape
    return shapes


def _generate(name: str, shape: tuple[int, ...], spec: FixtureSpec) -> torch.Tensor:
    """One tensor, from a seed derived from its name: independent of generation order."""
    cfg = spec.config
    dtype = _storage_dtype(name, spec)
    if name == "lm_head.weight" and cfg.tie_embeddings:
        name = "backbone.embedding.weight"  # the tied copy: same values
    gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + zlib.crc32(name.encode()))
    leaf = name.rsplit(".", 2)
    kind = ".".join(leaf[-2:]) if leaf[-1] in ("weight", "bias", "wscale", "wbias") else leaf[-1]
    rand = lambda: torch.randn(shape, generator=gen)  # noqa: E731
    if kind in ("embedding.weight", "lm_head.weight"):
        t = rand() * 0.5  # large enough that logits have clear winners (stable greedy comparisons)
    elif kind in ("in_proj.weight", "out_proj.weight"):
        t = rand() * 0.02
        if spec.zero_fraction:
            t[torch.rand(shape, generator=gen) < spec.zero_fraction] = 0.0
    elif kind in ("in_proj.wscale", "out_proj.wscale"):
        fan_in = cfg.d_model if "in_proj" in name else cfg.d_inner
        t = (1 + 0.3 * rand()).abs() / math.sqrt(fan_in)
    elif kind in ("in_proj.wbias", "out_proj.wbias"):
        fan_in = cfg.d_model if "in_proj" in name else cfg.d_inner
        t = 0.1 * rand() / math.sqrt(fan_in)
    elif kind == "conv1d.weight":
        t = rand() * 0.3
    elif kind == "conv1d.bias":
        t = rand() * 0.1
    elif kind == "dt_bias":  # softplus^-1 of dt, log-uniform in [1e-3, 1e-1] as mamba_ssm initialises it
        dt = torch.exp(torch.rand(shape, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        t = dt + torch.log(-torch.expm1(-dt))
    elif kind == "A_log":
        t = torch.log(1 + 15 * torch.rand(shape, generator=gen))
    elif kind == "D":
        t = 1 + 0.1 * rand()
    else:  # norm weights
        t = 1 + 0.1 * rand()
    return t.to(dtype).contiguous()


def _to_transformers(name: str) -> str:
    return name.replace("backbone.embedding.", "backbone.embeddings.")


def write_safetensors(path: Path, tensors: dict[str, tuple[tuple[int, ...], torch.dtype]],
                      produce: Iterator[tuple[str, torch.Tensor]]) -> None:
    """Streams a safetensors file: header from shapes first, then each tensor as `produce` yields it."""
    header, offset = {}, 0
    for name, (shape, dtype) in tensors.items():
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, tensor in produce:
            assert header[name]["dtype"] == _SAFETENSORS_DTYPE[tensor.dtype]
            f.write(tensor.contiguous().view(torch.uint8).numpy().tobytes())


def write_checkpoint(directory: str | Path, spec: FixtureSpec) -> Path:
    """Writes config.json, the weights and (optionally) tokenizer.model; returns the directory."""
    cfg = spec.config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = cfg.to_mamba_ssm() if spec.layout == "mamba_ssm" else cfg.to_transformers()
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if spec.tokenizer == "tiny":
        (directory / "tokenizer.model").write_bytes(tiny_tokenizer_bytes(cfg.vocab_size))

    shapes = _tensor_specs(spec)
    rename = _to_transformers if spec.layout == "transformers" else (lambda n: n)
    names = list(shapes)
    n_files = 3 if spec.file_format in ("sharded", "bins") else 1
    groups = [names[i::n_files] for i in range(n_files)]

    if spec.file_format in ("safetensors", "sharded"):
        files = ["model.safetensors"] if n_files == 1 else \
            [f"model-{k + 1:05d}-of-{n_files:05d}.safetensors" for k in range(n_files)]
        for file, group in zip(files, groups):
            layout = {rename(n): (shapes[n], _storage_dtype(n, spec)) for n in group}
            write_safetensors(directory / file, layout, ((rename(n), _generate(n, shapes[n], spec)) for n in group))
        if n_files > 1:
            weight_map = {rename(n): file for file, group in zip(files, groups) for n in group}
            (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        files = ["pytorch_model.bin"] if n_files == 1 else \
            [f"pytorch_model-{k + 1:05d}-of-{n_files:05d}.bin" for k in range(n_files)]
        for file, group in zip(files, groups):
            torch.save({rename(n): _generate(n, shapes[n], spec) for n in group}, directory / file)
    return directory
