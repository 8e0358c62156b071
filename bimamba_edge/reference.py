"""The ground truth: a plain PyTorch (CPU, float32) forward of a Bi-Mamba / Mamba-2 checkpoint.

Everything the runtime computes is checked against this. It follows mamba_ssm's reference path
(`MambaLMHeadModel` with `Mamba2` mixers) literally and favours obviousness over speed: one
sequential scan, one token at a time, for the whole-sequence forward too.

One Mamba2 mixer, for an input u (d_model):
    z, xBC, dt = split(in_proj(u), [d_inner, d_inner + 2*ngroups*d_state, nheads])
    xBC        = silu(causal_depthwise_conv1d(xBC) + conv_bias)
    x, B, C    = split(xBC, [d_inner, ngroups*d_state, ngroups*d_state])
    dt         = softplus(dt + dt_bias);   A = -exp(A_log)
    per head h (group g = h // (nheads/ngroups)):
        state_h = exp(dt_h*A_h) * state_h + dt_h * outer(x_h, B_g)
        y_h     = state_h @ C_g + D_h * x_h
    y = rmsnorm_per_group(y * silu(z)) * norm.weight;   out = out_proj(y)
FBI-Linear layers use the effective weight W~ = wscale * sign(W) + wbias (torch.sign: sign(0) == 0).
Block: residual = hidden + residual; hidden = mixer(rmsnorm(residual)); logits = norm_f(hidden + residual) @ head^T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checkpoint import PROJECTIONS, Checkpoint, MambaConfig

GATED_NORM_EPS = 1e-5  # mamba_ssm's Mamba2 builds its gated RMSNorm with eps=1e-5 whatever the config says


def fbi_weight(weight: torch.Tensor, wscale: torch.Tensor | None, wbias: torch.Tensor | None) -> torch.Tensor:
    """FBI-Linear's effective weight; broadcasting covers column (1,in), row (out,1) and single (1,) scales."""
    if wscale is None:
        return weight
    return wscale * torch.sign(weight) + wbias


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@dataclass
class LayerState:
    conv: torch.Tensor  # (d_conv - 1, conv_dim): the last inputs of the causal convolution
    ssm: torch.Tensor   # (nheads, headdim, d_state)


class ReferenceModel:
    """All weights in float32, FBI matrices already materialized as their effective weights.

    state_dtype torch.float16 stores the SSM state rounded to f16 between tokens, as the runtime's opt-in f16
    state does (each update computed in float32 from the stored state, y from the unrounded new state).
    """

    def __init__(self, ckpt: Checkpoint, state_dtype: torch.dtype = torch.float32):
        self.config: MambaConfig = ckpt.config
        self.state_dtype = state_dtype
        cfg = self.config
        self.embedding = ckpt.load("backbone.embedding.weight")
        self.head = ckpt.lm_head()
        self.norm_f = ckpt.load("backbone.norm_f.weight")
        self.layers = []
        for i in range(cfg.n_layer):
            p = f"backbone.layers.{i}."
            layer = {name: ckpt.load(p + "mixer." + name) for name in ("dt_bias", "A_log", "D", "norm.weight")}
            layer["norm"] = ckpt.load(p + "norm.weight")
            layer["conv.weight"] = ckpt.load(p + "mixer.conv1d.weight")[:, 0, :]  # (conv_dim, d_conv)
            conv_bias = p + "mixer.conv1d.bias"
            layer["conv.bias"] = ckpt.load(conv_bias) if conv_bias in ckpt else torch.zeros(cfg.conv_dim)
            for proj in PROJECTIONS:
                base = p + f"mixer.{proj}."
                scaled = base + "wscale" in ckpt
                layer[proj] = fbi_weight(ckpt.load(base + "weight"),
                                         ckpt.load(base + "wscale") if scaled else None,
                                         ckpt.load(base + "wbias") if scaled else None)
            self.layers.append(layer)

    def new_state(self) -> list[LayerState]:
        cfg = self.config
        return [LayerState(torch.zeros(cfg.d_conv - 1, cfg.conv_dim), torch.zeros(cfg.nheads, cfg.headdim, cfg.d_state))
                for _ in range(cfg.n_layer)]

    @torch.no_grad()
    def step(self, token: int, state: list[LayerState]) -> torch.Tensor:
        """Logits (n_vocab,) for one token; `state` is advanced in place."""
        hidden = self.embedding[token]
        residual = torch.zeros_like(hidden)
        for layer, layer_state in zip(self.layers, state):
            residual = hidden + residual
            hidden = self._mixer(layer, rms_norm(residual, layer["norm"], self.config.norm_eps), layer_state)
        return rms_norm(hidden + residual, self.norm_f, self.config.norm_eps) @ self.head.T

    @torch.no_grad()
    def forward(self, tokens: list[int] | torch.Tensor) -> torch.Tensor:
        """Logits (len(tokens), n_vocab) for a whole sequence from an empty state.

        Runs layer by layer over the sequence (the order mamba_ssm uses), which shares the mixer with
        `step` but not the loop structure, so comparing the two checks the state handling.
        """
        cfg = self.config
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        hidden = self.embedding[tokens]
        residual = torch.zeros_like(hidden)
        for layer in self.layers:
            residual = hidden + residual
            normed = rms_norm(residual, layer["norm"], cfg.norm_eps)
            layer_state = self.new_state()[0]
            hidden = torch.stack([self._mixer(layer, u, layer_state) for u in normed])
        return rms_norm(hidden + residual, self.norm_f, cfg.norm_eps) @ self.head.T

    def _mixer(self, layer: dict, u: torch.Tensor, state: LayerState) -> torch.Tensor:
        cfg = self.config
        z, xBC, dt = torch.split(layer["in_proj"] @ u, [cfg.d_inner, cfg.conv_dim, cfg.nheads])

        window = torch.cat([state.conv, xBC[None]])  # (d_conv, conv_dim), oldest first
        state.conv = window[1:]
        xBC = F.silu((window.T * layer["conv.weight"]).sum(-1) + layer["conv.bias"])
        x, B, C = torch.split(xBC, [cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.ngroups * cfg.d_state])

        dt = F.softplus(dt + layer["dt_bias"])                      # (nheads,)
        A = -torch.exp(layer["A_log"])
        heads_per_group = cfg.nheads // cfg.ngroups
        B = B.view(cfg.ngroups, cfg.d_state).repeat_interleave(heads_per_group, 0)  # (nheads, d_state)
        C = C.view(cfg.ngroups, cfg.d_state).repeat_interleave(heads_per_group, 0)
        x = x.view(cfg.nheads, cfg.headdim)
        ssm = torch.exp(dt * A)[:, None, None] * state.ssm + dt[:, None, None] * x[:, :, None] * B[:, None, :]
        state.ssm = ssm.to(self.state_dtype).float()
        D = layer["D"].view(cfg.nheads, cfg.headdim) if cfg.d_has_hdim else layer["D"][:, None]
        y = (ssm @ C[:, :, None])[..., 0] + D * x                   # (nheads, headdim)

        y = y.reshape(cfg.d_inner) * F.silu(z)
        y = rms_norm(y.view(cfg.ngroups, -1), layer["norm.weight"].view(cfg.ngroups, -1), GATED_NORM_EPS)
        return layer["out_proj"] @ y.reshape(cfg.d_inner)
