"""Train a tiny Bi-Mamba the paper's way: a full-precision Mamba-2 teacher, then a 1-bit student distilled from it.

    python tools/train_tiny.py --corpus .corpus --out runs/austen            # GPU (bf16 autocast)
    python tools/train_tiny.py --corpus DIR --out DIR --device cpu --smoke   # tiny shapes, seconds

Corpus: `train/*.txt` (the training novels) and `heldout/*.txt` (Persuasion), as tools/austen_corpus.py
writes them. Steps:
1. tokenizer: SentencePiece BPE trained on the training text (bimamba_edge.spm.train_bpe, one-document
   view), unless --tokenizer gives one; all text is tokenized by bimamba_edge.spm.Tokenizer, which gives
   llama.cpp's ids. The last 5 % of each training novel is the validation split.
2. teacher: full-precision Mamba-2 (mamba_ssm's Mamba2 mixer semantics, bimamba_edge.reference), trained on
   next-token cross-entropy.
3. student: the same architecture with in_proj and out_proj as FBI-Linear with column scaling,
   W~[j, i] = wscale[i] * sign(W[j, i]) + wbias[i] (wscale, wbias of shape (1, in_features)), sign through
   a straight-through estimator; trained from scratch, as the paper trains Bi-Mamba, by autoregressive
   distillation: cross-entropy between the teacher's next-token distribution and the student's (§3.2).
   Both: AdamW(0.9, 0.95), linear warm-up then cosine decay to a tenth of the peak, gradient clipping
   1.0, bf16 autocast on GPU. Each phase stops at --*-steps or --*-minutes, whichever comes first; the
   learning-rate schedule follows whichever is further along, and the weights with the best validation
   loss are kept.
4. both models saved in mamba_ssm's layout (config.json + model.safetensors + tokenizer.model; the tied
   lm_head copy left out), the teacher in float32 (sharded when large), the student with bf16 latent
   weights, an fp16 embedding and float32 for the rest; perplexity on the held-out novel with
   llama-perplexity's windowing (bimamba_edge.ppl) for both; a JSON log (train_log.json).

On a GPU machine whose results must travel back as a few files of at most 16 MB (the teacher is ~48 MB):

    set -o pipefail; python3 tools/train_tiny.py --corpus .corpus --out /tmp/austen-tiny 2>&1 | tee $OUT/train_stdout.txt \
      && cd /tmp/austen-tiny && tar cf $OUT/student.tar student && cp train_log.json $OUT/ \
      && tar cf - teacher | split -b 15000000 -d - $OUT/teacher.tar.part-

and back home `tar xf student.tar`, `cat teacher.tar.part-* | tar xf -`. Defaults are sized for one H100:
6.2 minutes in all (tokenizer and data 0.2, teacher 0.85, student 5.0, final evaluation and saving 0.1).

The scan is Mamba-2's chunked SSD form (the "ssd minimal" formulation): within a chunk, attention-like
products with a decay mask; across chunks, a short recurrence on chunk states. Its forward equals
bimamba_edge.reference on the saved checkpoint (tests/test_train_tiny.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from a checkout: bimamba_edge need not be installed

from bimamba_edge import ppl, spm  # noqa: E402
from bimamba_edge.checkpoint import MambaConfig  # noqa: E402
from bimamba_edge.reference import GATED_NORM_EPS  # noqa: E402
from bimamba_edge.testing import write_safetensors  # noqa: E402

SHARD_BYTES = 15_000_000  # safetensors shards below the 16 MB a file may have to travel in


# ---- model -----------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class FBILinear(nn.Module):
    """FBI-Linear, column scaling: y = x @ (wscale * sign(W) + wbias)^T, sign with a straight-through gradient."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.wscale = nn.Parameter(torch.ones(1, in_features))
        self.wbias = nn.Parameter(torch.zeros(1, in_features))

    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        signs = w + (torch.sign(w) - w).detach()  # forward: sign(w) (torch.sign, 0 -> 0); backward: identity
        return self.wscale * signs + self.wbias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight())

    @torch.no_grad()
    def init_scales(self) -> None:
        """wscale = mean |W| of each input column (the scale that keeps the latent's magnitude), wbias = 0."""
        self.wscale.copy_(self.weight.abs().mean(0, keepdim=True))
        self.wbias.zero_()


def segsum(x: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): out[i, j] = x[j+1] + ... + x[i] for j <= i, -inf above the diagonal."""
    T = x.size(-1)
    strict = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    sums = x[..., :, None].expand(*x.shape, T).masked_fill(~strict, 0).cumsum(-2)
    return sums.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), -torch.inf)


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             chunk: int) -> torch.Tensor:
    """The selective scan of Mamba-2 from an empty state, in chunks; float32 throughout.

    x (b, l, h, p), dt (b, l, h) after softplus, A (h,) negative, B and C (b, l, h, n) per head.
    Returns y (b, l, h, p) with state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_t^T and y_t = state_t C_t.
    """
    b, l, h, p = x.shape
    pad = -l % chunk
    if pad:  # zeros after the end change nothing before it
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    c = x.size(1) // chunk
    X = (x * dt[..., None]).view(b, c, chunk, h, p)
    Adt = (dt * A).view(b, c, chunk, h).permute(0, 3, 1, 2)          # (b, h, c, T)
    B = B.view(b, c, chunk, h, -1)
    C = C.view(b, c, chunk, h, -1)
    A_cum = Adt.cumsum(-1)

    decay = torch.exp(segsum(Adt))                                    # (b, h, c, T, T)
    scores = torch.einsum("bclhn,bcshn->bhcls", C, B) * decay
    y_diag = torch.einsum("bhcls,bcshp->bclhp", scores, X)

    to_end = torch.exp(A_cum[..., -1:] - A_cum)                       # (b, h, c, T)
    states = torch.einsum("bclhn,bclhp->bchpn", B * to_end.permute(0, 2, 3, 1)[..., None], X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], 1)  # (b, c+1, h, p, n)
    chunk_decay = torch.exp(segsum(F.pad(A_cum[..., -1], (1, 0))))    # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)[:, :-1]  # state entering each chunk

    from_start = torch.exp(A_cum).permute(0, 2, 3, 1)[..., None]      # (b, c, T, h, 1)
    y_off = torch.einsum("bclhn,bchpn->bclhp", C * from_start, states)
    return (y_diag + y_off).reshape(b, c * chunk, h, p)[:, :l]


class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: MambaConfig, fbi: bool, chunk: int):
        super().__init__()
        self.cfg, self.chunk = cfg, chunk
        linear = FBILinear if fbi else (lambda i, o: nn.Linear(i, o, bias=False))
        self.in_proj = linear(cfg.d_model, cfg.d_in_proj)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim, bias=cfg.conv_bias,
                                padding=cfg.d_conv - 1)
        self.dt_bias = nn.Parameter(torch.empty(cfg.nheads))
        self.A_log = nn.Parameter(torch.empty(cfg.nheads))
        self.D = nn.Parameter(torch.ones(cfg.nheads))
        self.norm = RMSNorm(cfg.d_inner, GATED_NORM_EPS)  # holds the weight; applied per group in forward
        self.out_proj = linear(cfg.d_inner, cfg.d_model)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, l, _ = u.shape
        z, xBC, dt = torch.split(self.in_proj(u), [cfg.d_inner, cfg.conv_dim, cfg.nheads], -1)
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :l].transpose(1, 2))
        x, B, C = torch.split(xBC.float(), [cfg.d_inner, cfg.ngroups * cfg.d_state, cfg.ngroups * cfg.d_state], -1)
        dt = F.softplus(dt.float() + self.dt_bias)
        A = -torch.exp(self.A_log.float())
        per_group = cfg.nheads // cfg.ngroups
        B = B.view(b, l, cfg.ngroups, cfg.d_state).repeat_interleave(per_group, 2)
        C = C.view(b, l, cfg.ngroups, cfg.d_state).repeat_interleave(per_group, 2)
        x = x.view(b, l, cfg.nheads, cfg.headdim)
        y = ssd_scan(x, dt, A, B, C, self.chunk) + x * self.D.float()[:, None]
        y = (y.reshape(b, l, cfg.d_inner) * F.silu(z.float())).view(b, l, cfg.ngroups, -1)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + GATED_NORM_EPS)  # gated RMSNorm, per group
        return self.out_proj(y.reshape(b, l, cfg.d_inner) * self.norm.weight)


class Block(nn.Module):
    def __init__(self, cfg: MambaConfig, fbi: bool, chunk: int):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg, fbi, chunk)


class Backbone(nn.Module):
    def __init__(self, cfg: MambaConfig, fbi: bool, chunk: int):
        super().__init__()
        self.embedding = nn.Embedding(cfg.n_vocab, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, fbi, chunk) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)


class MambaLM(nn.Module):
    """mamba_ssm's MambaLMHeadModel with Mamba2 mixers, no MLP, tied head; parameter names are its state-dict keys."""

    def __init__(self, cfg: MambaConfig, fbi: bool = False, chunk: int = 64, dropout: float = 0.0):
        super().__init__()
        if not cfg.tie_embeddings or cfg.d_has_hdim:
            raise ValueError("only tied embeddings and per-head D are implemented")
        self.cfg, self.fbi, self.dropout = cfg, fbi, dropout
        self.backbone = Backbone(cfg, fbi, chunk)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (b, l, n_vocab) in float32 for tokens (b, l), from an empty state.

        Dropout (training only; a regulariser for small data, not part of the checkpoint's semantics) acts on
        the embedding and on each mixer's output before it joins the residual stream."""
        drop = self.dropout if self.training else 0.0
        hidden = F.dropout(self.backbone.embedding(tokens), drop)
        residual = torch.zeros_like(hidden, dtype=torch.float32)
        for layer in self.backbone.layers:
            residual = hidden.float() + residual
            hidden = F.dropout(layer.mixer(layer.norm(residual)), drop)
        hidden = self.backbone.norm_f(hidden.float() + residual)
        return F.linear(hidden, self.backbone.embedding.weight).float()

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """mamba_ssm's initialisation: N(0, 0.02) embedding, default Linear/Conv1d init, out_proj scaled by
        1/sqrt(n_layer), dt log-uniform in [1e-3, 1e-1] (dt_bias = softplus^-1), A uniform in [1, 16], D = 1."""
        cfg = self.cfg
        self.backbone.embedding.weight.normal_(0, 0.02, generator=generator)
        for layer in self.backbone.layers:
            m = layer.mixer
            for lin, fan_in in ((m.in_proj, cfg.d_model), (m.out_proj, cfg.d_inner)):
                bound = 1 / math.sqrt(fan_in)
                lin.weight.uniform_(-bound, bound, generator=generator)
            m.out_proj.weight.div_(math.sqrt(cfg.n_layer))
            bound = 1 / math.sqrt(cfg.d_conv)  # Conv1d default for a depthwise kernel: fan_in = d_conv
            m.conv1d.weight.uniform_(-bound, bound, generator=generator)
            if m.conv1d.bias is not None:
                m.conv1d.bias.uniform_(-bound, bound, generator=generator)
            dt = torch.exp(torch.rand(cfg.nheads, generator=generator) * (math.log(0.1) - math.log(1e-3))
                           + math.log(1e-3)).clamp(min=1e-4)
            m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            m.A_log.copy_(torch.log(torch.empty(cfg.nheads).uniform_(1, 16, generator=generator)))
            m.D.fill_(1.0)
            if self.fbi:
                m.in_proj.init_scales()
                m.out_proj.init_scales()

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on the matrices (embedding, projections' latent weights), none on the rest."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (decay if p.dim() == 2 and not name.endswith(("wscale", "wbias")) else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---- checkpoints -----------------------------------------------------------------------------------

def storage_dtype(name: str, fbi: bool) -> torch.dtype:
    """Student: bf16 latent matrices (only their signs matter, and bf16 never rounds one to 0), fp16 embedding
    (what the GGUF head holds), float32 for the rest. Teacher: float32."""
    if not fbi:
        return torch.float32
    if name.endswith(("in_proj.weight", "out_proj.weight")):
        return torch.bfloat16
    if name == "backbone.embedding.weight":
        return torch.float16
    return torch.float32


@torch.no_grad()
def round_to_storage(model: MambaLM) -> None:
    """Rounds every parameter to the dtype it is saved in, so the model in memory is the checkpoint."""
    for name, p in model.named_parameters():
        p.copy_(p.to(storage_dtype(name, model.fbi)).to(p.dtype))


def save_checkpoint(model: MambaLM, directory: Path, tokenizer_bytes: bytes, shard_bytes: int = SHARD_BYTES) -> list[str]:
    """config.json + model.safetensors (or shards + index) + tokenizer.model, mamba_ssm names."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.cfg.to_mamba_ssm(), indent=2) + "\n")
    (directory / "tokenizer.model").write_bytes(tokenizer_bytes)
    tensors = {name: p.detach().to("cpu", storage_dtype(name, model.fbi)).contiguous()
               for name, p in model.named_parameters()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        files = ["model.safetensors"]
    else:
        files = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
        weight_map = {name: file for file, shard in zip(files, shards) for name in shard}
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1) + "\n")
    for file, shard in zip(files, shards):
        write_safetensors(directory / file, {n: (tuple(t.shape), t.dtype) for n, t in shard.items()},
                          iter(shard.items()))
    return files


def load_checkpoint(directory: Path, chunk: int = 64) -> MambaLM:
    """A training model from a checkpoint this tool wrote (or any tied, per-head-D mamba_ssm checkpoint)."""
    from bimamba_edge.checkpoint import Checkpoint

    ckpt = Checkpoint(directory)
    fbi = any(pattern is not None for pattern in ckpt.scaling.values())
    if fbi and set(ckpt.scaling.values()) != {"column"}:
        raise ValueError(f"{directory}: only column-scaled FBI layers on both projections are supported")
    model = MambaLM(ckpt.config, fbi=fbi, chunk=chunk)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(ckpt.load(name).reshape(p.shape))
    return model


# ---- data ------------------------------------------------------------------------------------------

@dataclass
class Corpus:
    tokenizer: spm.Tokenizer
    tokenizer_bytes: bytes
    train: torch.Tensor        # all training tokens, novels back to back
    train_starts: torch.Tensor # valid window starts (a window never crosses two novels)
    val: list[torch.Tensor]    # the last --val-frac of each training novel
    heldout: dict[str, list[int]]  # held-out novels, tokenized whole with BOS (as llama-perplexity does)
    stats: dict


def load_corpus(directory: Path, vocab_size: int, seq_len: int, val_frac: float,
                tokenizer_path: Path | None) -> Corpus:
    train_files = sorted((directory / "train").glob("*.txt"))
    heldout_files = sorted((directory / "heldout").glob("*.txt"))
    if not train_files:
        raise SystemExit(f"train_tiny: no {directory}/train/*.txt (write the corpus with tools/austen_corpus.py)")
    texts = [p.read_text(encoding="utf-8") for p in train_files]
    t0 = time.perf_counter()
    if tokenizer_path:
        model = spm.parse(tokenizer_path.read_bytes())
    else:
        model = spm.train_bpe("".join(texts), vocab_size, line_prefix=False)
    tokenizer_seconds = time.perf_counter() - t0
    tokenizer = spm.Tokenizer(model)
    train_parts, starts, val, offset = [], [], [], 0
    n_train_tokens = 0
    for text in texts:
        ids = tokenizer.encode(text, add_bos=False)
        cut = int(len(ids) * (1 - val_frac))
        train_ids, val_ids = ids[:cut], ids[cut:]
        train_parts.append(torch.tensor(train_ids, dtype=torch.long))
        starts.append(torch.arange(offset, offset + max(len(train_ids) - seq_len + 1, 0)))
        val.append(torch.tensor(val_ids, dtype=torch.long))
        offset += len(train_ids)
        n_train_tokens += len(train_ids)
    heldout = {}
    for path in heldout_files:
        text = path.read_text(encoding="utf-8")
        heldout[path.stem] = tokenizer.encode(text.removesuffix("\n"), add_bos=True)
    stats = {"tokenizer": {"vocab": len(model.pieces), "trained_seconds": round(tokenizer_seconds, 2),
                           "source": str(tokenizer_path) if tokenizer_path else "train_bpe on train/*.txt"},
             "train_files": [p.name for p in train_files], "heldout_files": [p.name for p in heldout_files],
             "train_tokens": n_train_tokens, "val_tokens": sum(len(v) for v in val),
             "train_chars": sum(map(len, texts)), "heldout_tokens": {k: len(v) for k, v in heldout.items()}}
    return Corpus(tokenizer, spm.serialize(model), torch.cat(train_parts), torch.cat(starts), val, heldout, stats)


def batch_windows(corpus: Corpus, batch: int, seq_len: int, generator: torch.Generator,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs [BOS, t_s .. t_{s+L-2}], targets [t_s .. t_{s+L-1}] (every window starts with BOS,
    as every llama-perplexity window does)."""
    pick = torch.randint(len(corpus.train_starts), (batch,), generator=generator)
    index = corpus.train_starts[pick][:, None] + torch.arange(seq_len)
    targets = corpus.train[index]
    inputs = torch.cat([torch.full((batch, 1), corpus.tokenizer.bos_id), targets[:, :-1]], 1)
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def val_windows(corpus: Corpus, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping validation windows, in the same form as training ones."""
    inputs, targets = [], []
    for ids in corpus.val:
        for s in range(0, len(ids) - seq_len + 1, seq_len):
            t = ids[s:s + seq_len]
            targets.append(t)
            inputs.append(torch.cat([torch.tensor([corpus.tokenizer.bos_id]), t[:-1]]))
    if not inputs:
        raise SystemExit(f"train_tiny: the validation split has no window of {seq_len} tokens")
    return torch.stack(inputs), torch.stack(targets)


# ---- training ----------------------------------------------------------------------------------------

@dataclass
class Phase:
    name: str
    steps: int
    minutes: float
    lr: float
    warmup: int
    weight_decay: float
    eval_every: int


def lr_at(progress: float, step: int, phase: Phase) -> float:
    if step < phase.warmup:
        return phase.lr * (step + 1) / phase.warmup
    floor = phase.lr / 10
    return floor + 0.5 * (phase.lr - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(model: MambaLM, inputs: torch.Tensor, targets: torch.Tensor, batch: int, device: torch.device,
             teacher: MambaLM | None = None) -> dict[str, float]:
    """Mean next-token cross-entropy (and distillation loss against a teacher) over fixed windows."""
    was_training = model.training
    model.eval()
    total, distill, count = 0.0, 0.0, 0
    for s in range(0, len(inputs), batch):
        x, y = inputs[s:s + batch].to(device), targets[s:s + batch].to(device)
        with autocast(device):
            logits = model(x)
            if teacher is not None:
                distill += float(soft_cross_entropy(logits, teacher(x)) * y.numel())
        total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    model.train(was_training)
    out = {"ce": total / count}
    if teacher is not None:
        out["distill"] = distill / count
    return out


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the teacher's next-token distribution and the student's, per token, mean."""
    target = F.softmax(teacher_logits.float(), -1)
    return -(target * F.log_softmax(student_logits.float(), -1)).sum(-1).mean()


def train_phase(model: MambaLM, phase: Phase, corpus: Corpus, args, device: torch.device,
                val: tuple[torch.Tensor, torch.Tensor], teacher: MambaLM | None, log: dict) -> None:
    generator = torch.Generator().manual_seed(args.seed + (1 if teacher is not None else 0))
    optimizer = torch.optim.AdamW(model.parameter_groups(phase.weight_decay), lr=phase.lr, betas=(0.9, 0.95),
                                  eps=1e-8, fused=device.type == "cuda")
    entry = log[phase.name] = {"parameters": sum(p.numel() for p in model.parameters()),
                               "config": model.cfg.to_mamba_ssm(), "lr": phase.lr, "warmup": phase.warmup,
                               "dropout": model.dropout, "weight_decay": phase.weight_decay,
                               "loss": "distillation: cross-entropy to the teacher's distribution" if teacher is not None
                               else "next-token cross-entropy", "losses": [], "val": []}
    best = (math.inf, -1, None)
    start = time.perf_counter()
    step, recent = 0, []
    model.train()
    while True:
        elapsed = time.perf_counter() - start
        progress = max(step / phase.steps, elapsed / (60 * phase.minutes))
        last = progress >= 1.0
        if step % phase.eval_every == 0 or last:
            result = evaluate(model, *val, args.batch, device, teacher)
            entry["val"].append({"step": step, "minutes": round(elapsed / 60, 3), **{k: round(v, 5) for k, v in result.items()}})
            if result["ce"] < best[0]:
                best = (result["ce"], step, {k: v.detach().clone() for k, v in model.state_dict().items()})
            print(f"[{phase.name}] step {step} val ce {result['ce']:.4f}"
                  + (f" distill {result['distill']:.4f}" if "distill" in result else "")
                  + f" ({elapsed / 60:.2f} min)", flush=True)
        if last:
            break
        lr = lr_at(progress, step, phase)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batch_windows(corpus, args.batch, args.seq_len, generator, device)
        with autocast(device):
            logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    target_logits = teacher(x)
                loss = soft_cross_entropy(logits, target_logits)
            else:
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        recent.append(loss.detach())
        if step % args.log_every == 0:
            mean = float(torch.stack(recent).mean())
            recent = []
            entry["losses"].append({"step": step, "loss": round(mean, 5), "lr": lr, "grad_norm": round(float(grad_norm), 4)})
            print(f"[{phase.name}] step {step} loss {mean:.4f} lr {lr:.2e} |g| {float(grad_norm):.3f}", flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    entry.update(steps=step, minutes=round((time.perf_counter() - start) / 60, 3),
                 tokens_seen=step * args.batch * args.seq_len,
                 epochs=round(step * args.batch * args.seq_len / corpus.stats["train_tokens"], 2),
                 best_val_step=best[1], best_val_ce=round(best[0], 5))
    model.load_state_dict(best[2])  # keep the weights that did best on validation


def heldout_perplexity(model: MambaLM, tokens: list[int], n_ctx: int, bos: int, device: torch.device,
                       batch: int, max_windows: int | None = None) -> dict:
    """llama-perplexity's measure (bimamba_edge.ppl) in float32 on this device."""
    model.eval()
    windows = ppl.llama_windows(tokens, n_ctx, bos, max_windows)
    result = ppl.Perplexity(n_ctx)
    with torch.no_grad():
        for s in range(0, len(windows), batch):
            chunk = torch.tensor(windows[s:s + batch], device=device)
            logits = model(chunk).cpu()
            for window, window_logits in zip(windows[s:s + batch], logits):
                result.add(window_logits, window)
    return result.summary()


# ---- command line ------------------------------------------------------------------------------------

SMOKE = dict(vocab=400, seq_len=64, batch=4, teacher_d_model=256, teacher_layers=1, student_d_model=256,
             student_layers=1, d_state=16, headdim=64, chunk=16, teacher_steps=8, student_steps=8,
             eval_every=4, log_every=2, ppl_ctx=64, heldout_windows=8, warmup=2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True, help="folder with train/*.txt and heldout/*.txt")
    p.add_argument("--out", type=Path, required=True, help="writes teacher/, student/ and train_log.json here")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes and a few steps: checks the pipeline in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", type=Path, default=None, help="an existing tokenizer.model instead of training one")
    p.add_argument("--vocab", type=int, default=4096, help="tokenizer vocabulary size")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--val-frac", type=float, default=0.05, help="tail of each training novel kept for validation")
    p.add_argument("--d-state", type=int, default=64)
    p.add_argument("--headdim", type=int, default=64)
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--chunk", type=int, default=64, help="SSD chunk length")
    p.add_argument("--teacher-d-model", type=int, default=512)
    p.add_argument("--teacher-layers", type=int, default=6)
    p.add_argument("--teacher-steps", type=int, default=800)
    p.add_argument("--teacher-minutes", type=float, default=1.5)
    p.add_argument("--teacher-lr", type=float, default=1e-3)
    p.add_argument("--teacher-dropout", type=float, default=0.35)
    p.add_argument("--student-d-model", type=int, default=256)
    p.add_argument("--student-layers", type=int, default=8)
    p.add_argument("--student-steps", type=int, default=4000)
    p.add_argument("--student-minutes", type=float, default=5.0)
    p.add_argument("--student-lr", type=float, default=2e-3)
    p.add_argument("--student-dropout", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps of each phase")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--ppl-ctx", type=int, default=512, help="window of the held-out perplexity (llama-perplexity -c)")
    p.add_argument("--heldout-windows", type=int, default=None, help="score at most this many held-out windows")
    args = p.parse_args(argv)
    if args.smoke:
        defaults = {a.dest: a.default for a in p._actions}
        for key, value in SMOKE.items():
            if getattr(args, key) == defaults[key]:  # explicit options still win
                setattr(args, key, value)
    return args


def hardware(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    wall = time.perf_counter()
    log: dict = {"hardware": hardware(device), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    print(f"hardware: {log['hardware']}", flush=True)

    corpus = load_corpus(args.corpus, args.vocab, args.seq_len, args.val_frac, args.tokenizer)
    log["corpus"] = corpus.stats
    print(f"corpus: {corpus.stats}", flush=True)
    val = val_windows(corpus, args.seq_len)
    vocab = len(corpus.tokenizer.model.pieces)

    def config(d_model: int, n_layer: int) -> MambaConfig:
        cfg = MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=vocab, d_state=args.d_state,
                          expand=args.expand, headdim=args.headdim)
        cfg.validate("train_tiny")
        return cfg

    def phase(name: str) -> Phase:
        return Phase(name, getattr(args, f"{name}_steps"), getattr(args, f"{name}_minutes"),
                     getattr(args, f"{name}_lr"), args.warmup, args.weight_decay, args.eval_every)

    generator = torch.Generator().manual_seed(args.seed)
    teacher = MambaLM(config(args.teacher_d_model, args.teacher_layers), fbi=False, chunk=args.chunk,
                      dropout=args.teacher_dropout)
    teacher.init_weights(generator)
    teacher.to(device)
    train_phase(teacher, phase("teacher"), corpus, args, device, val, None, log)
    round_to_storage(teacher)
    teacher.eval().requires_grad_(False)

    student = MambaLM(config(args.student_d_model, args.student_layers), fbi=True, chunk=args.chunk,
                      dropout=args.student_dropout)
    student.init_weights(generator)
    student.to(device)
    train_phase(student, phase("student"), corpus, args, device, val, teacher, log)
    round_to_storage(student)
    student.eval()
    torch.backends.cuda.matmul.allow_tf32 = False  # the held-out figures in true float32
    torch.backends.cudnn.allow_tf32 = False

    for name, model in (("teacher", teacher), ("student", student)):
        entry = log[name]
        entry["final_train"] = {k: round(v, 5) for k, v in evaluate(
            model, *val_like_train(corpus, args, len(val[0])), args.batch, device,
            teacher if name == "student" else None).items()}
        entry["final_val"] = {k: round(v, 5) for k, v in evaluate(
            model, *val, args.batch, device, teacher if name == "student" else None).items()}
        entry["heldout"] = {k: heldout_perplexity(model, ids, args.ppl_ctx, corpus.tokenizer.bos_id, device, args.batch,
                                                  args.heldout_windows)
                            for k, ids in corpus.heldout.items() if len(ids) >= 2 * args.ppl_ctx}
        entry["files"] = save_checkpoint(model, args.out / name, corpus.tokenizer_bytes)
        entry["stored_bytes"] = sum(p.stat().st_size for p in (args.out / name).iterdir())
        print(f"[{name}] final train {entry['final_train']} val {entry['final_val']} held-out {entry['heldout']}",
              flush=True)
    log["heldout_windowing"] = ppl.WINDOWING
    log["wall_minutes"] = round((time.perf_counter() - wall) / 60, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"wall {log['wall_minutes']} min; wrote {args.out}/teacher, {args.out}/student, {args.out}/train_log.json")
    return 0


def val_like_train(corpus: Corpus, args, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n fixed training windows (seeded), to report a final training loss measured like the validation one."""
    generator = torch.Generator().manual_seed(args.seed + 7)
    return batch_windows(corpus, n, args.seq_len, generator, torch.device("cpu"))


if __name__ == "__main__":
    sys.exit(main())
