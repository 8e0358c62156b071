"""tools/train_tiny.py: the chunked SSD scan, the training model against bimamba_edge.reference, FBI-Linear's
straight-through sign, the saved layout, and a --smoke run whose checkpoints convert and run.

The smoke run and the conversions need the built runtime (`bimamba-build`), as test_runtime.py does.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_tiny as tt
from bimamba_edge import ppl, runtime, spm
from bimamba_edge.checkpoint import Checkpoint, MambaConfig
from bimamba_edge.reference import ReferenceModel
from conftest import run_convert

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "bimamba_edge" / "data" / "persuasion-slice.txt"


def sequential_scan(x, dt, A, B, C):
    """The recurrence, one step at a time: state = exp(dt A) state + dt x B^T; y = state C."""
    b, l, h, p = x.shape
    state = torch.zeros(b, h, p, B.size(-1), dtype=torch.float64)
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + (dt[:, t, :, None, None] * x[:, t, :, :, None] * B[:, t, :, None, :])
        ys.append((state @ C[:, t, :, :, None])[..., 0])
    return torch.stack(ys, 1)


@pytest.mark.parametrize("length, chunk", [(37, 8), (16, 16), (5, 64)])
def test_ssd_scan_equals_the_recurrence(length, chunk):
    g = torch.Generator().manual_seed(length)
    b, h, p, n = 2, 3, 4, 5
    x = torch.randn(b, length, h, p, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(b, length, h, generator=g))
    A = -torch.rand(h, generator=g) * 2
    B, C = torch.randn(b, length, h, n, generator=g), torch.randn(b, length, h, n, generator=g)
    expected = sequential_scan(*(t.double() for t in (x, dt, A, B, C)))
    torch.testing.assert_close(tt.ssd_scan(x, dt, A, B, C, chunk).double(), expected, rtol=1e-4, atol=1e-4)


def random_model(cfg: MambaConfig, fbi: bool, seed: int = 0) -> tt.MambaLM:
    model = tt.MambaLM(cfg, fbi=fbi, chunk=8)
    model.init_weights(torch.Generator().manual_seed(seed))
    with torch.no_grad():  # away from the initial values: faster decay, larger dt, non-trivial norms and D
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "dt_bias", "D", "norm.weight", "wbias")):
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("fbi, ngroups", [(False, 1), (False, 2), (True, 1)])
def test_training_forward_equals_the_reference_on_the_saved_checkpoint(tmp_path, fbi, ngroups):
    cfg = MambaConfig(d_model=64, n_layer=2, vocab_size=300, d_state=16, headdim=16, ngroups=ngroups)
    model = random_model(cfg, fbi)
    tt.round_to_storage(model)
    tt.save_checkpoint(model, tmp_path, spm.serialize(spm.train_bpe("a tiny text, a tiny text", 300)))
    tokens = torch.randint(0, 300, (45,), generator=torch.Generator().manual_seed(2))
    model.eval()
    ours = model(tokens[None])[0]
    reference = ReferenceModel(Checkpoint(tmp_path)).forward(tokens)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    assert torch.equal(tt.load_checkpoint(tmp_path, chunk=8).eval()(tokens[None])[0], ours)


def test_fbi_linear_forward_init_and_straight_through_gradient():
    lin = tt.FBILinear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -0.25, 0.0], [-1.0, 2.0, 0.5]]))
    lin.init_scales()
    assert torch.equal(lin.wscale, torch.tensor([[0.75, 1.125, 0.25]])) and torch.equal(lin.wbias, torch.zeros(1, 3))
    with torch.no_grad():
        lin.wbias.copy_(torch.tensor([[0.1, 0.2, 0.3]]))
    effective = torch.tensor([[0.75 + 0.1, -1.125 + 0.2, 0.0 + 0.3], [-0.75 + 0.1, 1.125 + 0.2, 0.25 + 0.3]])
    torch.testing.assert_close(lin.effective_weight(), effective)  # torch.sign(0) == 0, as the reference
    x = torch.tensor([[1.0, 2.0, 3.0]])
    out = lin(x)
    torch.testing.assert_close(out, x @ effective.T)
    out.sum().backward()
    # sign's gradient passes straight through: d out / d W[j, i] = x[i] * wscale[i]
    torch.testing.assert_close(lin.weight.grad, (x * lin.wscale).expand(2, 3).detach())
    torch.testing.assert_close(lin.wbias.grad, 2 * x)


def test_checkpoint_layout_dtypes_and_shards(tmp_path):
    cfg = MambaConfig(d_model=64, n_layer=2, vocab_size=300, d_state=16, headdim=16)
    tokenizer = spm.serialize(spm.train_bpe("some text here", 300))
    student = random_model(cfg, fbi=True)
    assert tt.save_checkpoint(student, tmp_path / "s", tokenizer) == ["model.safetensors"]
    ckpt = Checkpoint(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "config.json").read_text()) == cfg.to_mamba_ssm()
    assert (tmp_path / "s" / "tokenizer.model").read_bytes() == tokenizer
    assert "lm_head.weight" not in ckpt and set(ckpt.scaling.values()) == {"column"}
    assert ckpt.dtype("backbone.layers.0.mixer.in_proj.weight") == "bfloat16"
    assert ckpt.dtype("backbone.embedding.weight") == "float16"
    assert ckpt.dtype("backbone.layers.1.mixer.out_proj.wscale") == "float32"
    assert ckpt.shape("backbone.layers.1.mixer.out_proj.wscale") == (1, cfg.d_inner)

    teacher = random_model(cfg, fbi=False)
    files = tt.save_checkpoint(teacher, tmp_path / "t", tokenizer, shard_bytes=60_000)
    assert len(files) > 1 and (tmp_path / "t" / "model.safetensors.index.json").is_file()
    ckpt = Checkpoint(tmp_path / "t")
    assert all(ckpt.scaling[w] is None for w in ckpt.scaling)
    for name, p in teacher.named_parameters():
        assert torch.equal(ckpt.load(name), p.detach())


def test_dropout_acts_only_in_training():
    cfg = MambaConfig(d_model=64, n_layer=1, vocab_size=300, d_state=16, headdim=16)
    model = tt.MambaLM(cfg, dropout=0.5)
    model.init_weights(torch.Generator().manual_seed(0))
    tokens = torch.arange(1, 20)[None]
    model.eval()
    assert torch.equal(model(tokens), model(tokens))
    model.train()
    assert not torch.equal(model(tokens), model(tokens))


# ---- the smoke run --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A --smoke run on a corpus cut from the committed Persuasion slice: (output folder, log, stdout)."""
    root = tmp_path_factory.mktemp("smoke")
    text = SLICE.read_text(encoding="utf-8")
    cut = text.index("\n", 20000) + 1
    (root / "corpus" / "train").mkdir(parents=True)
    (root / "corpus" / "heldout").mkdir()
    (root / "corpus" / "train" / "part.txt").write_text(text[:cut])
    (root / "corpus" / "heldout" / "rest.txt").write_text(text[cut:])
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train_tiny.py"), "--corpus", str(root / "corpus"),
                           "--out", str(root / "out"), "--device", "cpu", "--smoke"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, json.loads((root / "out" / "train_log.json").read_text()), proc.stdout


def test_smoke_run_logs_what_the_note_needs(smoke):
    _, log, stdout = smoke
    assert log["hardware"]["device"] == "cpu" and "cpu_count" in log["hardware"]
    assert 0 < log["wall_minutes"] < 5
    for name in ("teacher", "student"):
        entry = log[name]
        assert entry["steps"] == tt.SMOKE[f"{name}_steps"] and entry["losses"] and entry["val"]
        assert all(math.isfinite(row["loss"]) for row in entry["losses"])
        assert entry["final_train"]["ce"] > 0 and entry["final_val"]["ce"] > 0
        assert entry["heldout"]["rest"]["windows"] == tt.SMOKE["heldout_windows"]
    assert "distill" in log["student"]["final_val"] and log["student"]["config"]["d_model"] == 256
    assert log["heldout_windowing"] == ppl.WINDOWING
    assert "[student] final" in stdout


def test_smoke_checkpoints_convert_and_run(smoke, tmp_path):
    root, log, _ = smoke
    student, teacher = root / "out" / "student", root / "out" / "teacher"
    proc = run_convert(student, tmp_path / "student.gguf")
    assert proc.returncode == 0, proc.stderr
    model = runtime.load(tmp_path / "student.gguf", n_ctx=256, n_threads=2)
    text = (root / "corpus" / "heldout" / "rest.txt").read_text()
    assert model.tokenize(text) == spm.Tokenizer.from_file(student / "tokenizer.model").encode(text)
    assert len(list(model.generate(model.tokenize("It was"), 8))) == 8

    proc = run_convert(teacher, tmp_path / "teacher.gguf", "--binarize", "sign")  # the paper's PTB baseline (d)
    assert proc.returncode == 0, proc.stderr
    logits = runtime.load(tmp_path / "teacher.gguf", n_ctx=64, n_threads=2).logits([1, 5, 9])
    assert logits.shape[0] == 3 and bool((abs(logits) < 1e6).all())


def test_smoke_heldout_figure_is_what_bimamba_ppl_measures_on_the_reference(smoke):
    """The tool's in-PyTorch held-out perplexity and bimamba-ppl on the saved checkpoint are one measure."""
    root, log, _ = smoke
    scorer = ppl.reference_scorer(root / "out" / "student", threads=1)
    text = ppl.read_text(root / "corpus" / "heldout" / "rest.txt")
    result = ppl.perplexity(scorer.tokens(text), tt.SMOKE["ppl_ctx"], scorer.bos_id, scorer.logits,
                            tt.SMOKE["heldout_windows"])
    assert result.count == log["student"]["heldout"]["rest"]["scored_tokens"]
    assert result.ppl == pytest.approx(log["student"]["heldout"]["rest"]["ppl"], rel=1e-4)
