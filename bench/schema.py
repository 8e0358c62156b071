"""The results document (`results.json`), schema `bimamba-bench/1`, and its validator.

Rules beyond shapes: every energy object either has numbers or says why it has none (`reason`), so a
missing counter can never read as a zero; tokens/s carry their repetitions and spread; sizes are bytes.
A change that breaks readers of version 1 bumps SCHEMA.
"""

from __future__ import annotations

from typing import Any

SCHEMA = "bimamba-bench/1"


class SchemaError(ValueError):
    pass


class Nullable:
    def __init__(self, spec):
        self.spec = spec


class MayLack:
    """A key that may be absent (its value, when present, must match)."""

    def __init__(self, spec):
        self.spec = spec


NUM = (int, float)
INT = (int,)
STR = (str,)
BOOL = (bool,)


def _non_negative(value, where):
    if isinstance(value, bool) or not isinstance(value, NUM) or value < 0:
        raise SchemaError(f"{where}: expected a number >= 0, found {value!r}")


def _positive_int(value, where):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SchemaError(f"{where}: expected a positive integer, found {value!r}")


def _schema_name(value, where):
    if value != SCHEMA:
        raise SchemaError(f"{where}: expected {SCHEMA!r}, found {value!r}")


def _energy(value, where):
    _check(value, {"joules_per_token": Nullable(NUM), "mean_power_w": Nullable(NUM),
                   "components_j_per_token": Nullable({}), "reason": Nullable(STR), "meter": Nullable(STR)}, where)
    if value["joules_per_token"] is None:
        if not value["reason"]:
            raise SchemaError(f"{where}: joules_per_token is null without a reason")
    elif value["reason"] is not None:
        raise SchemaError(f"{where}: a reason given beside a measured joules_per_token")


def _tps(value, where):
    _check(value, {"mean": _non_negative, "stddev": _non_negative, "reps": _positive_int,
                   "samples": [_non_negative]}, where)
    if len(value["samples"]) != value["reps"]:
        raise SchemaError(f"{where}: {value['reps']} reps but {len(value['samples'])} samples")


def _by_threads(value, where):
    if not isinstance(value, dict) or not value:
        raise SchemaError(f"{where}: expected a non-empty object keyed by thread count")
    for key, entry in value.items():
        if not key.isdigit():
            raise SchemaError(f"{where}: key {key!r} is not a thread count")
        _check(entry, {"best_gbps": _non_negative, "median_gbps": _non_negative, "passes": _positive_int},
               f"{where}.{key}")


TRAFFIC = {"matrices": _non_negative, "head": _non_negative, "embedding_row": _non_negative,
           "ssm_state": _non_negative, "conv_state": _non_negative, "total": _positive_int}

DOCUMENT = {
    "schema": _schema_name,
    "created": STR,
    "wall_s": _non_negative,
    "command": [STR],
    "machine": {"cpu": STR, "cores_logical": _positive_int, "cores_physical": Nullable(INT), "isa": [STR],
                "os": STR, "arch": STR, "memory_bytes": Nullable(INT), "python": STR},
    "build": {"llama_bench": STR, "llama_bench_version": STR, "runtime_key": Nullable(STR),
              "build_commit": Nullable(STR), "flags": Nullable([STR])},
    "settings": {"n_prompt": _positive_int, "n_gen": _positive_int, "reps": _positive_int,
                 "threads": [_positive_int], "depths": [_positive_int], "long_context_threads": Nullable(INT),
                 "long_context_models": [STR], "rss_probe": STR, "cpu_s_per_token": STR,
                 "energy_per_token": STR},
    "source": {"checkpoint": Nullable(STR), "models_dir": Nullable(STR)},
    "energy_meter": {"kind": Nullable(STR), "available": BOOL, "reason": Nullable(STR),
                     "idle_watts": Nullable({})},
    "bandwidth": Nullable({"method": STR, "buffer_bytes": _positive_int, "by_threads": _by_threads}),
    "models": [{"id": STR, "label": STR, "path": STR, "file_bytes": _positive_int, "arch": STR, "matrix_type": STR,
                "head_type": STR, "tied_head": BOOL, "decode_bytes_per_token": TRAFFIC,
                "load": {"wall_s": _non_negative, "cpu_s": _non_negative, "peak_rss_bytes": _positive_int},
                "rss": {"mmap_peak_bytes": _positive_int, "no_mmap_peak_bytes": _positive_int}}],
    "results": [{"model": STR, "threads": _positive_int, "test": STR, "kind": STR, "n_prompt": INT, "n_gen": INT,
                 "depth": INT, "tokens_per_s": _tps, "peak_rss_bytes": _positive_int, "wall_s": _non_negative,
                 "tokens_processed": _positive_int, "cpu_s_per_token": Nullable(NUM), "energy": _energy,
                 "roofline": Nullable({"bandwidth_gbps": _non_negative, "ceiling_tps": _non_negative,
                                       "fraction": _non_negative}), "foreign_cores": Nullable(NUM)}],
    "long_context": [{"model": STR, "threads": _positive_int, "depth": _positive_int, "test": STR,
                      "tokens_per_s": _tps, "peak_rss_bytes": _positive_int, "wall_s": _non_negative,
                      "foreign_cores": Nullable(NUM)}],
    "plots": {"files": [STR], "skipped": Nullable(STR)},
    "notes": [STR],
}


def _check(value: Any, spec, where: str) -> None:
    if isinstance(spec, Nullable):
        if value is not None:
            _check(value, spec.spec, where)
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object, found {type(value).__name__}")
        for key, sub in spec.items():
            if isinstance(sub, MayLack):
                if key in value:
                    _check(value[key], sub.spec, f"{where}.{key}")
                continue
            if key not in value:
                raise SchemaError(f"{where}: missing key {key!r}")
            _check(value[key], sub, f"{where}.{key}")
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list, found {type(value).__name__}")
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]")
        return
    if isinstance(spec, tuple):
        if isinstance(value, bool) and bool not in spec:
            raise SchemaError(f"{where}: expected {'/'.join(t.__name__ for t in spec)}, found bool")
        if not isinstance(value, spec):
            raise SchemaError(f"{where}: expected {'/'.join(t.__name__ for t in spec)}, found {type(value).__name__}")
        return
    spec(value, where)


def validate(doc: dict) -> None:
    """Raises SchemaError naming the first thing that is wrong; cross-checks model ids too."""
    _check(doc, DOCUMENT, "$")
    ids = {m["id"] for m in doc["models"]}
    for section in ("results", "long_context"):
        for i, row in enumerate(doc[section]):
            if row["model"] not in ids:
                raise SchemaError(f"$.{section}[{i}].model: {row['model']!r} is not among the models")
    if not doc["energy_meter"]["available"] and not doc["energy_meter"]["reason"]:
        raise SchemaError("$.energy_meter: unavailable without a reason")
