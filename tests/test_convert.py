"""bimamba-convert: what the GGUF holds, and how bad input is refused."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bimamba_edge import quants
from bimamba_edge.checkpoint import Checkpoint
from bimamba_edge.testing import small_config
from conftest import run_convert


def read_gguf(path):
    import gguf  # the patched gguf-py (installed by bimamba-build) knows BM1

    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    return reader, tensors


def field(reader, key):
    value = reader.fields[key]
    if value.types[0] == 8:  # string
        return bytes(value.parts[-1]).decode()
    return value.parts[-1][0]


def bm1_values(tensor) -> np.ndarray:
    assert int(tensor.tensor_type) == quants.GGML_TYPE_BM1
    return quants.dequantize(np.asarray(tensor.data))


# -- what the GGUF holds ------------------------------------------------------------------------


@pytest.mark.parametrize("scaling", ["column", "row", "single"])
def test_effective_weights_rebuilt_from_gguf_equal_the_reference(make_checkpoint, tmp_path, scaling):
    directory = make_checkpoint(scaling=scaling, dtype="float16", zero_fraction=0.01)
    out = tmp_path / "model.gguf"
    assert run_convert(directory, out).returncode == 0
    reader, tensors = read_gguf(out)
    ckpt = Checkpoint(directory)
    zeros = 0
    for i in range(ckpt.config.n_layer):
        for proj, name in (("in_proj", "ssm_in"), ("out_proj", "ssm_out")):
            base = f"backbone.layers.{i}.mixer.{proj}."
            latent, wscale, wbias = (ckpt.load(base + p) for p in ("weight", "wscale", "wbias"))
            expected = (wscale * torch.sign(latent) + wbias).numpy()
            signs = bm1_values(tensors[f"blk.{i}.{name}.weight"])
            scale = np.asarray(tensors[f"blk.{i}.{name}.fbi_scale"].data)
            shift = np.asarray(tensors[f"blk.{i}.{name}.fbi_shift"].data)
            if scaling == "row":
                rebuilt = scale[:, None] * signs + shift[:, None]
            else:
                rebuilt = scale[None, :] * signs + shift[None, :]
            zero = (latent == 0).numpy()
            zeros += int(zero.sum())
            np.testing.assert_array_equal(rebuilt[~zero], expected[~zero])
            # an exact-zero latent is stored as +1: off by exactly one scale
            scale_at = np.broadcast_to(scale[:, None] if scaling == "row" else scale[None, :], zero.shape)
            np.testing.assert_array_equal(rebuilt[zero] - expected[zero], scale_at[zero])
    assert zeros > 0
    assert field(reader, "bimamba2.zero_latent_count") == zeros
    expected_id = 2 if scaling == "row" else 1
    assert field(reader, "bimamba2.ssm_in.fbi_scaling") == expected_id
    assert field(reader, "bimamba2.ssm_out.fbi_scaling") == expected_id


def test_layout_of_the_other_tensors(make_checkpoint, tmp_path):
    cfg = small_config(ngroups=2, d_has_hdim=True, tie_embeddings=False, vocab_size=300)
    directory = make_checkpoint(config=cfg, in_proj_only=True)
    out = tmp_path / "model.gguf"
    assert run_convert(directory, out, "--head-type", "q8_0").returncode == 0
    reader, tensors = read_gguf(out)
    ckpt = Checkpoint(directory)
    assert field(reader, "general.architecture") == "bimamba2"
    assert field(reader, "bimamba2.ssm.group_count") == 2
    assert field(reader, "bimamba2.ssm_out.fbi_scaling") == 0
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == cfg.n_vocab  # padded with [PADn]
    assert tensors["token_embd.weight"].tensor_type.name == "Q8_0"
    assert "output.weight" in tensors
    assert tensors["blk.0.ssm_out.weight"].tensor_type.name == "F16"  # in_proj-only: out_proj stays dense
    assert "blk.0.ssm_out.fbi_scale" not in tensors
    m = "backbone.layers.1.mixer."
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ssm_a"].data).reshape(-1),
                                  (-torch.exp(ckpt.load(m + "A_log"))).numpy())
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ssm_d"].data).reshape(cfg.nheads, cfg.headdim),
                                  ckpt.load(m + "D").reshape(cfg.nheads, cfg.headdim).numpy())
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ssm_conv1d.weight"].data),
                                  ckpt.load(m + "conv1d.weight")[:, 0, :].numpy())
    assert list(tensors["blk.1.ssm_norm.weight"].shape) == [cfg.d_inner // 2, 2]  # ggml order


@pytest.mark.parametrize("head_type,rel_error", [("f16", 1e-3), ("q8_0", 1e-2), ("q6_K", 3e-2)])
def test_head_types(make_checkpoint, tmp_path, head_type, rel_error):
    import gguf

    directory = make_checkpoint()
    out = tmp_path / "model.gguf"
    assert run_convert(directory, out, "--head-type", head_type).returncode == 0
    _, tensors = read_gguf(out)
    head = tensors["token_embd.weight"]
    assert head.tensor_type.name == head_type.upper()
    values = np.asarray(head.data) if head_type == "f16" else gguf.quants.dequantize(np.asarray(head.data), head.tensor_type)
    expected = Checkpoint(directory).load("backbone.embedding.weight").numpy()
    assert np.sqrt(np.mean((values - expected) ** 2)) / np.sqrt(np.mean(expected ** 2)) < rel_error


def test_dense_export_is_plain_mamba2_with_effective_weights(make_checkpoint, tmp_path):
    directory = make_checkpoint(scaling="column")
    out = tmp_path / "model.gguf"
    assert run_convert(directory, out, "--outtype", "f32").returncode == 0
    reader, tensors = read_gguf(out)
    assert field(reader, "general.architecture") == "mamba2"
    assert not any(name.endswith(("fbi_scale", "fbi_shift")) for name in tensors)
    ckpt = Checkpoint(directory)
    base = "backbone.layers.0.mixer.in_proj."
    expected = ckpt.load(base + "wscale") * torch.sign(ckpt.load(base + "weight")) + ckpt.load(base + "wbias")
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.ssm_in.weight"].data), expected.numpy())


def test_post_training_sign_binarization(make_checkpoint, tmp_path):
    directory = make_checkpoint(scaling="none")
    out = tmp_path / "model.gguf"
    assert run_convert(directory, out, "--binarize", "sign").returncode == 0
    _, tensors = read_gguf(out)
    latent = Checkpoint(directory).load("backbone.layers.1.mixer.out_proj.weight").numpy()
    np.testing.assert_array_equal(np.asarray(tensors["blk.1.ssm_out.weight"].data), quants.quantize(latent))


def test_summary_reports_sizes_and_zeros(make_checkpoint, tmp_path):
    proc = run_convert(make_checkpoint(dtype="float16", zero_fraction=0.01), tmp_path / "m.gguf")
    assert proc.returncode == 0, proc.stderr
    assert "BM1" in proc.stdout and "1.0625 bits/weight" in proc.stdout
    assert "exact-zero latent weights:" in proc.stdout


# -- bad input ---------------------------------------------------------------------------------


def edit_weights(directory, edit) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


class Evil:
    """A pickle that would run a command when unpickled without weights_only."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def bad_inputs(make_checkpoint, tmp_path):
    """(name, checkpoint directory, expected words in the one error line)."""
    layer0 = "backbone.layers.0.mixer."
    cases = []

    d = make_checkpoint()
    edit_weights(d, lambda t: t.pop(layer0 + "D"))
    cases.append(("missing tensor", d, "missing tensor backbone.layers.0.mixer.D"))

    d = make_checkpoint()
    edit_weights(d, lambda t: t.__setitem__("backbone.layers.0.mixer.extra", torch.zeros(3)))
    cases.append(("extra tensor", d, "unexpected tensor backbone.layers.0.mixer.extra"))

    d = make_checkpoint()
    edit_weights(d, lambda t: t.__setitem__(layer0 + "A_log", torch.zeros(5)))
    cases.append(("misshapen tensor", d, "A_log has shape [5]"))

    d = make_checkpoint()
    edit_weights(d, lambda t: t.pop(layer0 + "in_proj.wbias"))
    cases.append(("wscale without wbias", d, "missing tensor backbone.layers.0.mixer.in_proj.wbias"))

    d = make_checkpoint()
    edit_weights(d, lambda t: t.__setitem__(layer0 + "in_proj.wscale", torch.ones(3, 3)))
    cases.append(("misshapen scale", d, "in_proj.wscale has shape [3, 3]"))

    d = make_checkpoint()
    (d / "config.json").write_text(json.dumps({"hidden": 3}))
    cases.append(("unknown layout", d, "unknown checkpoint layout"))

    d = make_checkpoint()
    (d / "config.json").write_text("{not json")
    cases.append(("config not json", d, "not valid JSON"))

    d = make_checkpoint()
    (d / "model.safetensors").write_bytes(b"\xff" * 64)
    cases.append(("corrupt safetensors", d, "corrupt or truncated safetensors"))

    d = make_checkpoint()
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases.append(("truncated safetensors", d, "corrupt or truncated safetensors"))

    d = make_checkpoint(file_format="bin")
    sentinel = tmp_path / "pwned"
    torch.save({"backbone.norm_f.weight": Evil(sentinel)}, d / "pytorch_model.bin")
    cases.append(("pickle with code", d, "refused to unpickle"))

    d = make_checkpoint(file_format="bin")
    torch.save({"backbone.norm_f.weight": 3}, d / "pytorch_model.bin")
    cases.append(("pickle with a non-tensor", d, "is a int, not a tensor"))

    d = make_checkpoint()
    (d / "tokenizer.model").write_bytes(b"\x0a\xff\xff\xff")
    cases.append(("unreadable tokenizer", d, "unreadable SentencePiece model"))

    d = make_checkpoint(config=small_config(d_model=320))
    cases.append(("width BM1 cannot take", d, "BM1 needs a multiple of 256"))

    cases.append(("no checkpoint", tmp_path / "absent", "not a directory"))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append(("no config", empty, "no config.json"))
    return cases, sentinel


def test_bad_input_gives_one_clear_line_and_no_output(make_checkpoint, tmp_path):
    cases, sentinel = bad_inputs(make_checkpoint, tmp_path)
    for name, directory, words in cases:
        out = tmp_path / f"{name.replace(' ', '_')}.gguf"
        proc = run_convert(directory, out)
        assert proc.returncode != 0, name
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bimamba-convert: error: "), (name, proc.stderr)
        assert words in lines[0], (name, lines[0])
        assert "Traceback" not in proc.stderr, name
        assert not out.exists(), name
        assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name], name
    assert not sentinel.exists(), "the pickle's code ran"


def test_f16_state_needs_the_bimamba2_architecture(make_checkpoint, tmp_path):
    out = tmp_path / "dense.gguf"
    proc = run_convert(make_checkpoint(), out, "--outtype", "f16", "--state-type", "f16")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "--state-type f16 needs the bimamba2 architecture" in lines[0]
    assert not out.exists()


def test_missing_output_directory(make_checkpoint, tmp_path):
    proc = run_convert(make_checkpoint(), tmp_path / "no" / "such" / "m.gguf")
    assert proc.returncode != 0 and "output directory does not exist" in proc.stderr


# -- the paper's shapes ------------------------------------------------------------------------


@pytest.mark.heavy
def test_780m_shape_converts_near_the_papers_size(make_checkpoint, tmp_path):
    from bimamba_edge.checkpoint import PAPER_SHAPES

    directory = make_checkpoint(config=PAPER_SHAPES["780m"], dtype="bfloat16", tokenizer=None)
    out = tmp_path / "780m.gguf"
    proc = run_convert(directory, out)
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    size_gb = out.stat().st_size / 1e9
    # paper Table 6: 0.22 GB; BM1 at 1.0625 bpw + an f16 head lands a little under it
    assert 0.17 < size_gb < 0.242
