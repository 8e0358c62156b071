"""Readers: every layout, file format and dtype yields the same tensors under mamba_ssm names."""

from __future__ import annotations

import itertools

import pytest
import torch

from bimamba_edge.checkpoint import Checkpoint
from bimamba_edge.testing import DTYPES, FILE_FORMATS, LAYOUTS


def tensors(directory) -> dict[str, torch.Tensor]:
    ckpt = Checkpoint(directory)
    return {name: ckpt.load(name) for name in sorted(ckpt.names())}


@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_and_file_formats_agree(make_checkpoint, dtype):
    baseline = tensors(make_checkpoint(dtype=dtype, tokenizer=None))
    for layout, file_format in itertools.product(LAYOUTS, FILE_FORMATS):
        other = tensors(make_checkpoint(dtype=dtype, layout=layout, file_format=file_format, tokenizer=None))
        assert other.keys() == baseline.keys(), (layout, file_format)
        for name in baseline:
            assert torch.equal(other[name], baseline[name]), (layout, file_format, name)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "mixed"])
def test_low_precision_latents_widen_exactly(make_checkpoint, dtype):
    exact = tensors(make_checkpoint(tokenizer=None))
    stored = Checkpoint(make_checkpoint(dtype=dtype, tokenizer=None))
    for name, value in exact.items():
        source_dtype = getattr(torch, stored.dtype(name))
        assert torch.equal(stored.load(name), value.to(source_dtype).to(torch.float32)), name


@pytest.mark.parametrize("scaling", ["column", "row", "single", "none"])
def test_fbi_pattern_is_read_from_scale_shapes(make_checkpoint, scaling):
    ckpt = Checkpoint(make_checkpoint(scaling=scaling, tokenizer=None))
    expected = None if scaling == "none" else scaling
    assert set(ckpt.scaling.values()) == {expected}


def test_in_proj_only_binarization(make_checkpoint):
    ckpt = Checkpoint(make_checkpoint(in_proj_only=True, tokenizer=None))
    patterns = {name.rsplit(".", 2)[-2]: p for name, p in ckpt.scaling.items()}
    assert patterns == {"in_proj": "column", "out_proj": None}


def test_config_overrides_in_ssm_cfg_are_honoured(make_checkpoint):
    from bimamba_edge.testing import small_config

    ckpt = Checkpoint(make_checkpoint(config=small_config(d_state=32, ngroups=2, headdim=64), tokenizer=None))
    cfg = ckpt.config
    assert (cfg.d_state, cfg.ngroups, cfg.headdim, cfg.nheads) == (32, 2, 64, 8)
    assert ckpt.shape("backbone.layers.0.mixer.in_proj.weight") == (2 * 512 + 2 * 2 * 32 + 8, 256)
