"""The PyTorch reference: token-by-token with carried state equals the whole-sequence forward."""

from __future__ import annotations

import pytest
import torch

from bimamba_edge.checkpoint import Checkpoint
from bimamba_edge.reference import ReferenceModel, fbi_weight
from bimamba_edge.testing import small_config

VARIANTS = {
    "column": dict(scaling="column"),
    "row": dict(scaling="row"),
    "single": dict(scaling="single"),
    "in_proj_only": dict(in_proj_only=True),
    "plain": dict(scaling="none"),
    "ngroups2_D_per_channel": dict(config=small_config(ngroups=2, d_has_hdim=True)),
    "untied_padded_vocab": dict(config=small_config(vocab_size=300, tie_embeddings=False)),
    "fp16_zeros": dict(dtype="float16", zero_fraction=0.02),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_step_matches_sequence(make_checkpoint, variant):
    model = ReferenceModel(Checkpoint(make_checkpoint(tokenizer=None, **VARIANTS[variant])))
    tokens = torch.randint(0, model.config.vocab_size, (24,), generator=torch.Generator().manual_seed(1))
    sequence = model.forward(tokens)
    state = model.new_state()
    steps = torch.stack([model.step(int(t), state) for t in tokens])
    assert sequence.shape == (24, model.config.n_vocab)
    torch.testing.assert_close(steps, sequence, rtol=1e-4, atol=1e-4)


def test_fbi_weight_patterns_and_sign_of_zero():
    w = torch.tensor([[0.5, -0.25, 0.0], [-1.0, 2.0, 0.0]])
    column_scale, column_shift = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.1, 0.2, 0.3]])
    assert torch.equal(fbi_weight(w, column_scale, column_shift),
                       torch.tensor([[1.1, -1.8, 0.3], [-0.9, 2.2, 0.3]]))  # sign(0) == 0 leaves the shift alone
    row_scale, row_shift = torch.tensor([[2.0], [3.0]]), torch.tensor([[0.5], [-0.5]])
    assert torch.equal(fbi_weight(w, row_scale, row_shift), torch.tensor([[2.5, -1.5, 0.5], [-3.5, 2.5, -0.5]]))
    assert torch.equal(fbi_weight(w, torch.tensor([2.0]), torch.tensor([1.0])),
                       torch.tensor([[3.0, -1.0, 1.0], [-1.0, 3.0, 1.0]]))
    assert fbi_weight(w, None, None) is w


def test_state_carries_information(make_checkpoint):
    """The recurrence matters: the same token after different prefixes gives different logits."""
    model = ReferenceModel(Checkpoint(make_checkpoint(tokenizer=None)))
    a, b = model.forward([5, 9, 7]), model.forward([11, 2, 7])
    assert not torch.allclose(a[-1], b[-1], atol=1e-3)
