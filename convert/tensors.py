"""The tensor plan: every GGUF tensor with its name, shape, type, and how to make its data.

Names and layouts are llama.cpp's mamba2 ones (src/models/mamba2.cpp) plus the FBI scale/shift vectors
of docs/format.md. Shapes here are numpy order (rows first); GGUF stores them reversed.
The plan is made from shapes alone, so all tensor infos can be written before any data is produced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize

from bimamba_edge import quants
from bimamba_edge.checkpoint import Checkpoint
from bimamba_edge.errors import BimambaError
from bimamba_edge.reference import fbi_weight

F32, F16, Q8_0, Q6_K = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.Q8_0,
                        GGMLQuantizationType.Q6_K)
HEAD_TYPES = {"f32": F32, "f16": F16, "q8_0": Q8_0, "q6_K": Q6_K}
FBI_SCALING_IDS = {None: 0, "column": 1, "row": 2, "single": 1}  # single is written as column

GGUF_PROJ_NAMES = {"in_proj": "ssm_in", "out_proj": "ssm_out"}

# summary groups
EMBEDDING, PROJECTIONS, FBI_VECTORS, SSM, NORMS = "embedding/head", "projections", "fbi scale/shift", "ssm", "norms"


def type_name(ggml_type: int) -> str:
    return "BM1" if ggml_type == quants.GGML_TYPE_BM1 else GGMLQuantizationType(ggml_type).name


def tensor_nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    block, size = (quants.QK_BM1, quants.BLOCK_BYTES) if ggml_type == quants.GGML_TYPE_BM1 \
        else GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    return math.prod(shape) // block * size


@dataclass
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    group: str
    produce: Callable[[], np.ndarray]  # final bytes (uint8) for block types, else float32/float16 values

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.ggml_type)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def _encode(values: torch.Tensor, ggml_type: int) -> np.ndarray:
    array = values.numpy()
    if ggml_type == F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if ggml_type == F16:
        return array.astype(np.float16)
    if ggml_type == Q6_K:  # gguf-py has no Q6_K quantizer: use ggml's own, from the patched build
        from bimamba_edge import ggml
        return ggml.quantize(array, ggml_type)
    return gguf_quantize(array, GGMLQuantizationType(ggml_type))


@dataclass
class ProjectionPlan:
    """How one in_proj/out_proj is stored."""

    weight: str            # canonical checkpoint name of the latent weight
    pattern: str | None    # FBI pattern in the checkpoint: column, row, single, or None
    ggml_type: int
    binarize: bool         # post-training sign binarization of a plain matrix


def plan_tensors(ckpt: Checkpoint, *, bimamba: bool, dense_type: int, head_type: int,
                 binarize_sign: bool) -> tuple[list[PlannedTensor], dict[str, int]]:
    """The tensor plan, and the FBI scaling id of in_proj / out_proj for the metadata.

    bimamba=True: FBI matrices as BM1 signs with scale/shift vectors beside (arch bimamba2);
    plain matrices stay `dense_type`, or become BM1 (absmean) with `binarize_sign`.
    bimamba=False: every matrix materialized to its effective weight in `dense_type` (arch mamba2).
    """
    cfg = ckpt.config
    load = ckpt.load
    plan = [
        PlannedTensor("token_embd.weight", (cfg.n_vocab, cfg.d_model), head_type, EMBEDDING,
                      lambda: _encode(load("backbone.embedding.weight"), head_type)),
        PlannedTensor("output_norm.weight", (cfg.d_model,), F32, NORMS,
                      lambda: _encode(load("backbone.norm_f.weight"), F32)),
    ]
    if not cfg.tie_embeddings:
        plan.append(PlannedTensor("output.weight", (cfg.n_vocab, cfg.d_model), head_type, EMBEDDING,
                                  lambda: _encode(load("lm_head.weight"), head_type)))
    elif "lm_head.weight" in ckpt:
        ckpt.lm_head()  # a tied copy must equal the embedding: checked before anything is written

    scaling_ids: dict[str, set[int]] = {"in_proj": set(), "out_proj": set()}
    for i in range(cfg.n_layer):
        p, blk = f"backbone.layers.{i}.", f"blk.{i}."
        m = p + "mixer."
        plan += [
            PlannedTensor(blk + "attn_norm.weight", (cfg.d_model,), F32, NORMS, lambda n=p + "norm.weight": _encode(load(n), F32)),
            PlannedTensor(blk + "ssm_conv1d.weight", (cfg.conv_dim, cfg.d_conv), F32, SSM,
                          lambda n=m + "conv1d.weight": _encode(load(n)[:, 0, :], F32)),
        ]
        plan.append(PlannedTensor(blk + "ssm_conv1d.bias", (cfg.conv_dim,), F32, SSM,  # llama.cpp needs one: 0 if none
                                  lambda n=m + "conv1d.bias": _encode(load(n) if n in ckpt else torch.zeros(cfg.conv_dim), F32)))
        d_shape = (cfg.nheads, cfg.headdim) if cfg.d_has_hdim else (cfg.nheads, 1)
        plan += [
            PlannedTensor(blk + "ssm_dt.bias", (cfg.nheads,), F32, SSM, lambda n=m + "dt_bias": _encode(load(n), F32)),
            PlannedTensor(blk + "ssm_a", (cfg.nheads, 1), F32, SSM,
                          lambda n=m + "A_log": _encode(-torch.exp(load(n)).reshape(-1, 1), F32)),
            PlannedTensor(blk + "ssm_d", d_shape, F32, SSM, lambda n=m + "D", s=d_shape: _encode(load(n).reshape(s), F32)),
            PlannedTensor(blk + "ssm_norm.weight", (cfg.ngroups, cfg.d_inner // cfg.ngroups), F32, NORMS,
                          lambda n=m + "norm.weight": _encode(load(n).reshape(cfg.ngroups, -1), F32)),
        ]
        for proj, gguf_proj in GGUF_PROJ_NAMES.items():
            weight = m + proj + ".weight"
            pattern = ckpt.scaling[weight]
            out_f, in_f = ckpt.shape(weight)
            name = blk + gguf_proj
            if not bimamba:
                plan.append(PlannedTensor(name + ".weight", (out_f, in_f), dense_type, PROJECTIONS,
                                          lambda w=weight: _encode(_effective(ckpt, w), dense_type)))
                continue
            binarized = pattern is not None or binarize_sign
            if binarized and in_f % quants.QK_BM1:
                raise BimambaError(f"{ckpt.directory}: {weight} has {in_f} input features; BM1 needs a multiple "
                                   f"of {quants.QK_BM1} (use --outtype f16 for this model)")
            if pattern is None:
                ggml_type = quants.GGML_TYPE_BM1 if binarize_sign else dense_type
                plan.append(PlannedTensor(name + ".weight", (out_f, in_f), ggml_type, PROJECTIONS,
                                          lambda w=weight, t=ggml_type: _plain_matrix(ckpt, w, t)))
                scaling_ids[proj].add(FBI_SCALING_IDS[None])
                continue
            scaling_ids[proj].add(FBI_SCALING_IDS[pattern])
            n = out_f if pattern == "row" else in_f
            plan += [
                PlannedTensor(name + ".weight", (out_f, in_f), quants.GGML_TYPE_BM1, PROJECTIONS,
                              lambda w=weight: _sign_matrix(ckpt, w)),
                PlannedTensor(name + ".fbi_scale", (n,), F32, FBI_VECTORS,
                              lambda s=m + proj + ".wscale", n=n: _encode(load(s).reshape(-1).expand(n), F32)),
                PlannedTensor(name + ".fbi_shift", (n,), F32, FBI_VECTORS,
                              lambda s=m + proj + ".wbias", n=n: _encode(load(s).reshape(-1).expand(n), F32)),
            ]
    for proj, ids in scaling_ids.items():
        if len(ids) > 1:
            raise BimambaError(f"{ckpt.directory}: {proj} mixes FBI scaling patterns across layers; "
                               "one pattern per projection is supported")
    return plan, {proj: next(iter(ids), 0) for proj, ids in scaling_ids.items()}


def _effective(ckpt: Checkpoint, weight: str) -> torch.Tensor:
    base = weight.removesuffix("weight")
    if ckpt.scaling[weight] is None:
        return ckpt.load(weight)
    return fbi_weight(ckpt.load(weight), ckpt.load(base + "wscale"), ckpt.load(base + "wbias"))


def _sign_matrix(ckpt: Checkpoint, weight: str) -> np.ndarray:
    """sign(W) as BM1 with d = 1; an exact 0 becomes +1 (docs/format.md, counted by count_zero_latents)."""
    latent = ckpt.load(weight).numpy()
    return quants.pack(latent >= 0, np.ones((latent.shape[0], latent.shape[1] // quants.QK_BM1), np.float32))


def _plain_matrix(ckpt: Checkpoint, weight: str, ggml_type: int) -> np.ndarray:
    if ggml_type == quants.GGML_TYPE_BM1:
        return quants.quantize(ckpt.load(weight).numpy())
    return _encode(ckpt.load(weight), ggml_type)


def count_zero_latents(ckpt: Checkpoint) -> dict[str, int]:
    """Exact-zero latent weights of every FBI matrix (torch.sign(0) == 0, which BM1 stores as +1)."""
    return {w: int((ckpt.load(w) == 0).sum()) for w, pattern in ckpt.scaling.items() if pattern is not None}
