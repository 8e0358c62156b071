"""Writes the GGUF: metadata and tensor infos first, then each tensor's data as it is produced.

The file is written beside the target under a temporary name and renamed only when complete, so a
failure never leaves a partial OUT.gguf behind.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gguf
import numpy as np

from bimamba_edge import quants
from bimamba_edge.checkpoint import PAPER_BIMAMBA_GB, PAPER_SHAPES, Checkpoint
from bimamba_edge.errors import BimambaError
from bimamba_edge.runtime import STATE_F16_KEY, STATE_TYPES

from .tensors import F16, F32, HEAD_TYPES, PlannedTensor, count_zero_latents, plan_tensors, type_name
from .vocab import load_vocab

BIMAMBA_ARCH = "bimamba2"   # BM1 matrices + FBI scale/shift: needs the patched llama.cpp
MAMBA2_ARCH = "mamba2"      # dense effective weights: runs on stock llama.cpp
OUTTYPES = {"bm1": F16, "f16": F16, "f32": F32}  # with bm1: the type of matrices that are not binarized
LLAMA_FTYPE = {F32: gguf.LlamaFileType.ALL_F32, F16: gguf.LlamaFileType.MOSTLY_F16}


@dataclass(frozen=True)
class ConvertOptions:
    outtype: str = "bm1"            # bm1 | f16 | f32
    head_type: str | None = None    # f32 | f16 | q8_0; default f32 for --outtype f32, else f16
    binarize: str | None = None     # "sign": post-training sign binarization of plain matrices
    state_type: str = "f32"         # f16: the file asks for an f16 SSM state cache (bimamba2 only)


@dataclass
class ConvertSummary:
    path: Path
    arch: str
    file_bytes: int
    parameters: int
    bytes_by_group: dict[str, int]
    elements_by_group: dict[str, int]
    types_by_group: dict[str, set[str]]
    zero_latents: int
    zero_latent_tensors: int
    paper_shape: str | None  # the paper's model of this shape, when there is one

    def lines(self) -> list[str]:
        out = [f"wrote {self.path} ({self.arch}): {self.file_bytes / 1e9:.3f} GB, {self.parameters / 1e6:.1f} M parameters"]
        for group, nbytes in self.bytes_by_group.items():
            elements = self.elements_by_group[group]
            types = ",".join(sorted(self.types_by_group[group]))
            out.append(f"  {group:<16} {types:<12} {nbytes / 1e6:10.2f} MB  {8 * nbytes / elements:7.4f} bits/weight")
        out.append(f"  exact-zero latent weights: {self.zero_latents} in {self.zero_latent_tensors} FBI matrices"
                   + (" (stored as +1: off by one wscale each, docs/format.md)" if self.zero_latents else ""))
        if self.paper_shape:
            paper = PAPER_BIMAMBA_GB[self.paper_shape]
            out.append(f"  paper Table 6 ({self.paper_shape} Bi-Mamba): {paper:.2f} GB; this file is "
                       f"{self.file_bytes / 1e9 / paper:.2f}x that")
        return out


def convert(checkpoint_dir: str | Path, out_path: str | Path, options: ConvertOptions = ConvertOptions(),
            progress: Callable[[list[PlannedTensor]], object] | None = None) -> ConvertSummary:
    """Converts a checkpoint directory to one GGUF file; `progress` may wrap the tensor list (e.g. tqdm)."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise BimambaError(f"{out_path}: is a directory; give the output file name")
    if not out_path.parent.is_dir():
        raise BimambaError(f"{out_path.parent}: output directory does not exist")
    if options.outtype not in OUTTYPES:
        raise BimambaError(f"unknown --outtype {options.outtype!r}; choose from {', '.join(OUTTYPES)}")
    if options.binarize not in (None, "sign"):
        raise BimambaError(f"unknown --binarize {options.binarize!r}; the only method is 'sign'")
    bimamba = options.outtype == "bm1"
    if options.binarize and not bimamba:
        raise BimambaError("--binarize sign writes BM1 matrices; it cannot be combined with --outtype f16/f32")
    if options.state_type not in STATE_TYPES:
        raise BimambaError(f"unknown --state-type {options.state_type!r}; choose from {', '.join(STATE_TYPES)}")
    if options.state_type == "f16" and not bimamba:
        raise BimambaError("--state-type f16 needs the bimamba2 architecture (--outtype bm1); stock mamba2 "
                           "keeps an f32 state")
    head_name = options.head_type or ("f32" if options.outtype == "f32" else "f16")
    if head_name not in HEAD_TYPES:
        raise BimambaError(f"unknown --head-type {head_name!r}; choose from {', '.join(HEAD_TYPES)}")

    ckpt = Checkpoint(checkpoint_dir)
    cfg = ckpt.config
    has_fbi = any(p is not None for p in ckpt.scaling.values())
    if bimamba and not has_fbi and not options.binarize:
        raise BimambaError(f"{ckpt.directory}: no FBI-Linear layers (wscale/wbias); pass --binarize sign for "
                           "post-training binarization, or --outtype f16 for a plain mamba2 file")
    if not bimamba and cfg.d_has_hdim:
        raise BimambaError(f"{ckpt.directory}: per-channel D (D_has_hdim) needs the bimamba2 architecture; "
                           "use --outtype bm1")
    vocab = load_vocab(ckpt.tokenizer_path())
    dense_type = OUTTYPES[options.outtype]
    plan, scaling = plan_tensors(ckpt, bimamba=bimamba, dense_type=dense_type, head_type=HEAD_TYPES[head_name],
                                 binarize_sign=options.binarize == "sign")
    zeros = count_zero_latents(ckpt) if bimamba else {}

    arch = BIMAMBA_ARCH if bimamba else MAMBA2_ARCH
    tmp_path = out_path.with_name(f".{out_path.name}.partial-{os.getpid()}")
    try:
        writer = gguf.GGUFWriter(tmp_path, arch=arch, use_temp_file=False)
        _write_metadata(writer, ckpt, arch, vocab, scaling, sum(zeros.values()),
                        quants.LLAMA_FTYPE_MOSTLY_BM1 if bimamba else LLAMA_FTYPE[dense_type], options.state_type)
        for t in plan:
            # Logical shape for every type: gguf turns byte shapes into element shapes only for uint8 arrays.
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes,
                                   raw_dtype=None if t.ggml_type == F32 else t.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in (progress(plan) if progress else plan):
            data = t.produce()
            if data.nbytes != t.nbytes:
                raise AssertionError(f"{t.name}: produced {data.nbytes} bytes, planned {t.nbytes}")
            writer.write_tensor_data(data)
        writer.close()
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)

    bytes_by, elements_by, types_by = defaultdict(int), defaultdict(int), defaultdict(set)
    for t in plan:
        bytes_by[t.group] += t.nbytes
        elements_by[t.group] += t.n_elements
        types_by[t.group].add(type_name(t.ggml_type))
    paper_shape = next((k for k, c in PAPER_SHAPES.items()
                        if (c.d_model, c.n_layer) == (cfg.d_model, cfg.n_layer) and bimamba and has_fbi), None)
    summary = ConvertSummary(out_path, arch, out_path.stat().st_size, ckpt.parameter_count(), dict(bytes_by),
                             dict(elements_by), dict(types_by), sum(zeros.values()),
                             sum(1 for z in zeros.values() if z), paper_shape)
    return summary


def _write_metadata(writer: gguf.GGUFWriter, ckpt: Checkpoint, arch: str, vocab, scaling: dict[str, int],
                    zero_latents: int, file_type: int, state_type: str) -> None:
    """mamba2's keys (as upstream's convert_hf_to_gguf writes them), the tokenizer, and ours."""
    cfg = ckpt.config
    writer.add_name(ckpt.directory.name)
    writer.add_context_length(2**20)     # a recurrent model has no trained context limit; upstream's value
    writer.add_embedding_length(cfg.d_model)
    writer.add_feed_forward_length(0)    # unused by mamba2 but required by the loader
    writer.add_head_count(0)
    writer.add_block_count(cfg.n_layer)
    writer.add_ssm_conv_kernel(cfg.d_conv)
    writer.add_ssm_inner_size(cfg.d_inner)
    writer.add_ssm_state_size(cfg.d_state)
    writer.add_ssm_time_step_rank(cfg.nheads)
    writer.add_ssm_group_count(cfg.ngroups)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_file_type(int(file_type))
    vocab.write(writer, cfg.n_vocab)
    if arch == BIMAMBA_ARCH:
        writer.add_uint32(f"{arch}.ssm_in.fbi_scaling", scaling["in_proj"])
        writer.add_uint32(f"{arch}.ssm_out.fbi_scaling", scaling["out_proj"])
        writer.add_uint64(f"{arch}.zero_latent_count", zero_latents)
        if state_type == "f16":
            writer.add_bool(STATE_F16_KEY, True)
    writer.add_string(f"{arch}.source.layout", ckpt.layout)
    writer.add_array(f"{arch}.source.files", [p.name for p in ckpt.files])
    writer.add_string(f"{arch}.source.tokenizer", vocab.source if vocab.source.startswith("llama-2") else "tokenizer.model")
