"""Reading Bi-Mamba / Mamba-2 checkpoints in the layouts users bring.

Two layouts, both normalised to mamba_ssm's tensor names:
- mamba_ssm: `config.json` with `d_model`, `n_layer`, `ssm_cfg`; keys `backbone.embedding.weight`, ...
- transformers (`Mamba2ForCausalLM`): `config.json` with `hidden_size`, `state_size`, ...; keys
  `backbone.embeddings.weight`, ...
Weights come from `model.safetensors`, sharded safetensors with `model.safetensors.index.json`,
`pytorch_model.bin`, or several `*.bin` merged by key. Tensors are read one at a time (safetensors
and zip pickles are memory-mapped), so a 2.7B checkpoint never sits in memory whole. Pickles are
only read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import BimambaError

MAMBA_SSM = "mamba_ssm"
TRANSFORMERS = "transformers"

PROJECTIONS = ("in_proj", "out_proj")  # the FBI-Linear layers of a Mamba2 mixer
_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


@dataclass(frozen=True)
class MambaConfig:
    """Hyper-parameters of a Mamba-2 language model (mamba_ssm names and defaults)."""

    d_model: int
    n_layer: int
    vocab_size: int  # as in config.json; the embedding has `n_vocab` rows
    pad_vocab_size_multiple: int = 16
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    d_has_hdim: bool = False  # D per channel instead of per head
    conv_bias: bool = True
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    @property
    def n_vocab(self) -> int:
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self) -> int:
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    def validate(self, where: str) -> None:
        if self.d_inner % self.headdim:
            raise BimambaError(f"{where}: d_inner {self.d_inner} is not a multiple of headdim {self.headdim}")
        if self.nheads % self.ngroups:
            raise BimambaError(f"{where}: {self.nheads} heads do not split into {self.ngroups} groups")

    @classmethod
    def from_mamba_ssm(cls, cfg: dict, where: str) -> "MambaConfig":
        ssm = cfg.get("ssm_cfg") or {}
        if ssm.get("layer", "Mamba2") != "Mamba2":
            raise BimambaError(f"{where}: ssm_cfg.layer is {ssm['layer']!r}; only Mamba2 mixers are supported")
        if cfg.get("attn_layer_idx"):
            raise BimambaError(f"{where}: attention layers (attn_layer_idx) are not supported")
        if cfg.get("d_intermediate", 0):
            raise BimambaError(f"{where}: MLP blocks (d_intermediate > 0) are not supported")
        if not cfg.get("rms_norm", True) or not ssm.get("rmsnorm", True):
            raise BimambaError(f"{where}: only RMSNorm models are supported")
        if ssm.get("norm_before_gate", False):
            raise BimambaError(f"{where}: norm_before_gate=True is not supported")
        if ssm.get("bias", False):
            raise BimambaError(f"{where}: in_proj/out_proj with bias are not supported")
        unknown = set(ssm) - {"layer", "d_state", "d_conv", "expand", "headdim", "ngroups", "D_has_hdim",
                              "rmsnorm", "norm_before_gate", "bias", "conv_bias", "chunk_size", "dt_min",
                              "dt_max", "dt_init_floor", "dt_limit", "A_init_range", "d_ssm", "use_mem_eff_path"}
        if unknown:
            raise BimambaError(f"{where}: unknown ssm_cfg keys {sorted(unknown)}")
        if ssm.get("d_ssm") not in (None, ssm.get("expand", 2) * cfg.get("d_model", 0)):
            raise BimambaError(f"{where}: d_ssm != expand * d_model is not supported")
        return cls(
            d_model=_int(cfg, "d_model", where), n_layer=_int(cfg, "n_layer", where),
            vocab_size=_int(cfg, "vocab_size", where),
            pad_vocab_size_multiple=cfg.get("pad_vocab_size_multiple", 16),
            d_state=ssm.get("d_state", 128), d_conv=ssm.get("d_conv", 4), expand=ssm.get("expand", 2),
            headdim=ssm.get("headdim", 64), ngroups=ssm.get("ngroups", 1),
            d_has_hdim=ssm.get("D_has_hdim", False), conv_bias=ssm.get("conv_bias", True),
            norm_eps=cfg.get("norm_epsilon", 1e-5), tie_embeddings=cfg.get("tie_embeddings", True),
        )

    @classmethod
    def from_transformers(cls, cfg: dict, where: str) -> "MambaConfig":
        if cfg.get("use_bias", False):
            raise BimambaError(f"{where}: in_proj/out_proj with bias (use_bias) are not supported")
        if cfg.get("norm_before_gate", False):
            raise BimambaError(f"{where}: norm_before_gate=True is not supported")
        d_model = _int(cfg, "hidden_size", where)
        expand = cfg.get("expand", 2)
        headdim = cfg.get("head_dim", 64)
        if "num_heads" in cfg and cfg["num_heads"] * headdim != expand * d_model:
            raise BimambaError(f"{where}: num_heads * head_dim != expand * hidden_size")
        return cls(
            d_model=d_model, n_layer=_int(cfg, "num_hidden_layers", where), vocab_size=_int(cfg, "vocab_size", where),
            pad_vocab_size_multiple=cfg.get("pad_vocab_size_multiple", 1),
            d_state=cfg.get("state_size", 128), d_conv=cfg.get("conv_kernel", 4), expand=expand, headdim=headdim,
            ngroups=cfg.get("n_groups", 1), conv_bias=cfg.get("use_conv_bias", True),
            norm_eps=cfg.get("layer_norm_epsilon", 1e-5), tie_embeddings=cfg.get("tie_word_embeddings", True),
        )

    def to_mamba_ssm(self) -> dict:
        return {
            "d_model": self.d_model, "d_intermediate": 0, "n_layer": self.n_layer, "vocab_size": self.vocab_size,
            "ssm_cfg": {"layer": "Mamba2", "d_state": self.d_state, "d_conv": self.d_conv, "expand": self.expand,
                        "headdim": self.headdim, "ngroups": self.ngroups, "D_has_hdim": self.d_has_hdim,
                        "conv_bias": self.conv_bias},
            "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
            "fused_add_norm": True, "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
            "tie_embeddings": self.tie_embeddings, "norm_epsilon": self.norm_eps,
        }

    def to_transformers(self) -> dict:
        if self.d_has_hdim:
            raise ValueError("the transformers layout has no per-channel D")
        return {
            "architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer, "vocab_size": self.vocab_size, "state_size": self.d_state,
            "conv_kernel": self.d_conv, "expand": self.expand, "head_dim": self.headdim, "num_heads": self.nheads,
            "n_groups": self.ngroups, "use_bias": False, "use_conv_bias": self.conv_bias,
            "layer_norm_epsilon": self.norm_eps, "tie_word_embeddings": self.tie_embeddings,
            "pad_vocab_size_multiple": self.pad_vocab_size_multiple, "rms_norm": True,
        }


# The published Bi-Mamba models (paper §4, LLaMA-2 vocabulary) and their storage in GB (paper Table 6).
PAPER_SHAPES = {
    "780m": MambaConfig(d_model=1536, n_layer=48, vocab_size=32000),
    "1.3b": MambaConfig(d_model=2048, n_layer=48, vocab_size=32000),
    "2.7b": MambaConfig(d_model=2560, n_layer=64, vocab_size=32000),
}
PAPER_BIMAMBA_GB = {"780m": 0.22, "1.3b": 0.33, "2.7b": 0.55}


def _int(cfg: dict, key: str, where: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or value <= 0:
        raise BimambaError(f"{where}: {key} must be a positive integer, found {value!r}")
    return value


def _safetensors_index(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype, int]]:
    """Shape, dtype and absolute byte offset of every tensor, with the header checked against the file.

    Tensors are then read with plain positioned reads rather than a memory map: mapped pages of a
    multi-GB checkpoint would stay in this process's resident set until the end of the conversion.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        if n > size - 8:
            raise BimambaError(f"{path}: corrupt or truncated safetensors file (header of {n} bytes in a "
                               f"{size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BimambaError(f"{path}: corrupt or truncated safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise BimambaError(f"{path}: corrupt safetensors file (header is not a JSON object)")
    index = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = _SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise BimambaError(f"{path}: tensor {key} has an unsupported dtype or a malformed header entry "
                               f"({json.dumps(info)[:80]})") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin < 0 or 8 + n + end > size:
            raise BimambaError(f"{path}: corrupt or truncated safetensors file (tensor {key} lies outside the file)")
        index[key] = (shape, dtype, 8 + n + begin)
    return index


def _read_tensor(path: Path, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    buffer = bytearray(math.prod(shape) * torch.empty((), dtype=dtype).element_size())
    with open(path, "rb") as f:
        f.seek(offset)
        if f.readinto(buffer) != len(buffer):
            raise BimambaError(f"{path}: truncated while reading a tensor at byte {offset}")
    if not buffer:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype).reshape(shape)


def expected_shapes(cfg: MambaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of this config must hold (FBI scale/shift excepted), by canonical name."""
    shapes: dict[str, tuple[int, ...]] = {
        "backbone.embedding.weight": (cfg.n_vocab, cfg.d_model),
        "backbone.norm_f.weight": (cfg.d_model,),
    }
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.n_vocab, cfg.d_model)
    for i in range(cfg.n_layer):
        p = f"backbone.layers.{i}."
        shapes[p + "norm.weight"] = (cfg.d_model,)
        shapes[p + "mixer.in_proj.weight"] = (cfg.d_in_proj, cfg.d_model)
        shapes[p + "mixer.conv1d.weight"] = (cfg.conv_dim, 1, cfg.d_conv)
        if cfg.conv_bias:
            shapes[p + "mixer.conv1d.bias"] = (cfg.conv_dim,)
        shapes[p + "mixer.dt_bias"] = (cfg.nheads,)
        shapes[p + "mixer.A_log"] = (cfg.nheads,)
        shapes[p + "mixer.D"] = (cfg.d_inner,) if cfg.d_has_hdim else (cfg.nheads,)
        shapes[p + "mixer.norm.weight"] = (cfg.d_inner,)
        shapes[p + "mixer.out_proj.weight"] = (cfg.d_model, cfg.d_inner)
    return shapes


def fbi_pattern(scale_shape: tuple[int, ...], weight_shape: tuple[int, ...]) -> str | None:
    """Which FBI scaling a `wscale` of this shape means for a weight [out, in], or None if none fits."""
    out_f, in_f = weight_shape
    if scale_shape == (1, in_f):
        return "column"
    if scale_shape == (out_f, 1):
        return "row"
    if scale_shape in ((1,), ()):
        return "single"
    return None


class Checkpoint:
    """A checkpoint directory, opened lazily: tensors are read when asked for, as float32."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise BimambaError(f"{self.directory}: not a directory")
        config_path = self.directory / "config.json"
        if not config_path.is_file():
            raise BimambaError(f"{self.directory}: no config.json")
        try:
            raw = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BimambaError(f"{config_path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise BimambaError(f"{config_path}: not a JSON object")
        where = str(config_path)
        if "d_model" in raw and "n_layer" in raw:
            self.layout = MAMBA_SSM
            self.config = MambaConfig.from_mamba_ssm(raw, where)
        elif raw.get("model_type") == "mamba2" or "Mamba2ForCausalLM" in raw.get("architectures", []):
            self.layout = TRANSFORMERS
            self.config = MambaConfig.from_transformers(raw, where)
        else:
            raise BimambaError(f"{where}: unknown checkpoint layout (neither mamba_ssm's d_model/n_layer "
                               "nor a transformers Mamba2ForCausalLM config)")
        self.config.validate(where)
        self._readers: dict[str, Callable[[], torch.Tensor]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str] = {}
        self.files = self._open_weight_files()
        self.scaling = self._check_tensors()

    # -- files ------------------------------------------------------------------------------------

    def _open_weight_files(self) -> list[Path]:
        d = self.directory
        index = d / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise BimambaError(f"{index}: not a safetensors index with a weight_map ({e})") from None
            files = sorted({d / name for name in weight_map.values()})
        elif (d / "model.safetensors").is_file():
            files = [d / "model.safetensors"]
        else:
            files = sorted(d.glob("*.bin"))
        if not files:
            raise BimambaError(f"{d}: no weights (model.safetensors, a safetensors index, or *.bin)")
        for path in files:
            if not path.is_file():
                raise BimambaError(f"{path}: listed in the safetensors index but missing")
            if path.suffix == ".safetensors":
                self._add_safetensors(path)
            else:
                self._add_pickle(path)
        return files

    def _add(self, path: Path, key: str, shape: tuple[int, ...], dtype: str, read: Callable[[], torch.Tensor]):
        name = self._canonical(key)
        if name in self._readers:
            raise BimambaError(f"{path}: tensor {key} appears in more than one file")
        self._readers[name] = read
        self._shapes[name] = shape
        self._dtypes[name] = dtype

    def _add_safetensors(self, path: Path) -> None:
        for key, (shape, dtype, offset) in _safetensors_index(path).items():
            self._add(path, key, shape, str(dtype).removeprefix("torch."),
                      lambda o=offset, s=shape, d=dtype: _read_tensor(path, o, s, d))

    def _add_pickle(self, path: Path) -> None:
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # legacy (non-zip) pickles cannot be memory-mapped
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only rejects any object that is not plain tensor data
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BimambaError(f"{path}: not a plain tensor checkpoint, refused to unpickle it ({first})") from None
        if not isinstance(state, dict):
            raise BimambaError(f"{path}: holds a {type(state).__name__}, not a dict of tensors")
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise BimambaError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
            self._add(path, key, tuple(value.shape), str(value.dtype).removeprefix("torch."),
                      lambda v=value: v)

    def _canonical(self, key: str) -> str:
        if self.layout == TRANSFORMERS and key.startswith("backbone.embeddings."):
            return "backbone.embedding." + key.removeprefix("backbone.embeddings.")
        return key

    # -- validation -------------------------------------------------------------------------------

    def _check_tensors(self) -> dict[str, str | None]:
        """Checks names and shapes; returns the FBI pattern of every projection by weight name."""
        cfg = self.config
        expected = expected_shapes(cfg)
        scaling: dict[str, str | None] = {}
        for i in range(cfg.n_layer):
            for proj in PROJECTIONS:
                base = f"backbone.layers.{i}.mixer.{proj}."
                has_scale, has_shift = base + "wscale" in self._shapes, base + "wbias" in self._shapes
                if has_scale != has_shift:
                    missing = base + ("wbias" if has_scale else "wscale")
                    raise BimambaError(f"{self.directory}: missing tensor {missing} (wscale and wbias come in pairs)")
                scaling[base + "weight"] = None
                if has_scale:
                    weight_shape = expected[base + "weight"]
                    pattern = fbi_pattern(self._shapes[base + "wscale"], weight_shape)
                    for part in ("wscale", "wbias"):
                        if fbi_pattern(self._shapes[base + part], weight_shape) != pattern or pattern is None:
                            raise BimambaError(f"{self.directory}: {base + part} has shape "
                                               f"{list(self._shapes[base + part])}; expected [1, {weight_shape[1]}] "
                                               f"(column), [{weight_shape[0]}, 1] (row) or [1] (single)")
                    scaling[base + "weight"] = pattern
                    expected[base + "wscale"] = self._shapes[base + "wscale"]
                    expected[base + "wbias"] = self._shapes[base + "wbias"]
        if cfg.tie_embeddings and "lm_head.weight" in self._shapes:
            expected["lm_head.weight"] = (cfg.n_vocab, cfg.d_model)  # tied copy, checked equal on use
        for name, shape in expected.items():
            if name not in self._shapes:
                raise BimambaError(f"{self.directory}: missing tensor {name}")
            if self._shapes[name] != shape:
                raise BimambaError(f"{self.directory}: tensor {name} has shape {list(self._shapes[name])}, "
                                   f"expected {list(shape)}")
        extra = sorted(set(self._shapes) - set(expected))
        if extra:
            more = f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""
            raise BimambaError(f"{self.directory}: unexpected tensor {extra[0]}{more} for this config")
        return scaling

    # -- access -----------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._readers)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def dtype(self, name: str) -> str:
        return self._dtypes[name]

    def __contains__(self, name: str) -> bool:
        return name in self._readers

    def load(self, name: str) -> torch.Tensor:
        """One tensor as float32, exactly (bf16 and fp16 widen without rounding)."""
        if name not in self._readers:
            raise BimambaError(f"{self.directory}: missing tensor {name}")
        tensor = self._readers[name]()
        if not tensor.is_floating_point():
            raise BimambaError(f"{self.directory}: tensor {name} is {tensor.dtype}, not floating point")
        tensor = tensor.to(torch.float32)
        if not bool(torch.isfinite(tensor).all()):
            raise BimambaError(f"{self.directory}: tensor {name} holds NaN or infinity")
        return tensor

    def lm_head(self) -> torch.Tensor:
        """The output matrix: `lm_head.weight`, or the embedding when tied."""
        embedding = self.load("backbone.embedding.weight")
        if not self.config.tie_embeddings:
            return self.load("lm_head.weight")
        if "lm_head.weight" in self and not torch.equal(self.load("lm_head.weight"), embedding):
            raise BimambaError(f"{self.directory}: config ties lm_head to the embedding but lm_head.weight differs")
        return embedding

    def tokenizer_path(self) -> Path | None:
        path = self.directory / "tokenizer.model"
        return path if path.is_file() else None

    def parameter_count(self) -> int:
        return sum(math.prod(s) for n, s in self._shapes.items() if n != "lm_head.weight" or not self.config.tie_embeddings)
