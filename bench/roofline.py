"""Bytes a decoded token has to move, from the GGUF's own tensor sizes and its SSM dimensions.

Decoding one token reads every matrix once (the batch is one row, so nothing is reused), the whole head
(the output matrix, or the tied token embedding), one embedding row, and reads and writes each layer's
recurrent state: the SSM state `n_heads x head_dim x d_state` and the conv state `(d_conv - 1) x conv_dim`,
both f32 in llama.cpp (the SSM state f16 in a bimamba2 file with `ssm.state_f16`). Counted once each way,
which is what BM1's bimamba2 graph moves (its conv and scan update both states in place). Stock mamba2 graphs
write the new states and then copy them, so for them the figure is a lower bound on bytes, i.e. the t/s ceiling
`bandwidth / bytes` is an upper bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bimamba_edge.errors import BimambaError

from .gguf_header import GGUFHeader

STATE_BYTES_PER_VALUE = 4  # f32 recurrent state
F16_STATE_BYTES_PER_VALUE = 2


@dataclass(frozen=True)
class DecodeTraffic:
    matrices: int        # every tensor other than the head and the embedding (projections, norms, conv, ...)
    head: int            # output.weight, or the tied token_embd.weight read whole
    embedding_row: int   # the one token_embd row looked up (0 when tied: it is inside `head`)
    ssm_state: int       # read + written
    conv_state: int      # read + written

    @property
    def total(self) -> int:
        return self.matrices + self.head + self.embedding_row + self.ssm_state + self.conv_state

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def decode_traffic(header: GGUFHeader) -> DecodeTraffic:
    tensors = header.tensors
    if "token_embd.weight" not in tensors:
        raise BimambaError(f"{header.path}: no token_embd.weight: not a Mamba-2 GGUF")
    embd = tensors["token_embd.weight"]
    if "output.weight" in tensors:
        head = tensors["output.weight"].nbytes
        n_vocab = embd.shape[-1]
        row = embd.nbytes // n_vocab
    else:
        head, row = embd.nbytes, 0
    matrices = sum(t.nbytes for name, t in tensors.items() if name not in ("token_embd.weight", "output.weight"))

    def need(key: str) -> int:
        value = header.arch_value(key)
        if not isinstance(value, int) or value <= 0:
            raise BimambaError(f"{header.path}: metadata {header.arch}.{key} missing")
        return value

    n_layer, d_conv = need("block_count"), need("ssm.conv_kernel")
    d_inner, d_state = need("ssm.inner_size"), need("ssm.state_size")
    n_heads = need("ssm.time_step_rank")
    n_groups = header.arch_value("ssm.group_count", 1) or 1
    head_dim = d_inner // n_heads
    conv_dim = d_inner + 2 * n_groups * d_state
    ssm_value = F16_STATE_BYTES_PER_VALUE if header.state_f16 else STATE_BYTES_PER_VALUE
    ssm = n_layer * n_heads * head_dim * d_state * ssm_value * 2
    conv = n_layer * (d_conv - 1) * conv_dim * STATE_BYTES_PER_VALUE * 2
    return DecodeTraffic(matrices, head, row, ssm, conv)


def ceiling_tps(bandwidth_bytes_per_s: float | None, traffic: DecodeTraffic) -> float | None:
    """Decode tokens/s if every byte moved at the measured read bandwidth and nothing else cost time."""
    if not bandwidth_bytes_per_s:
        return None
    return bandwidth_bytes_per_s / traffic.total
