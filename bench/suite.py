"""The benchmark run: which processes, in which order, and how their numbers become the results document.

Per model, before any timing:
- a *load* process (`-p 0 -n 1 -r 1 --no-warmup`): loads the model and decodes one token. Its CPU time
  and energy are what every timed process also spends on loading, so they are subtracted below;
- two *RSS* processes, one with mmap and one without (`-p N -n 8 -r 1 --no-warmup`, the same work), whose
  peak resident sets are compared (with mmap the weights count only as pages touched).
Then, for each thread count and each model (models interleaved, so slow drift hits all alike), one process
for prefill (`-p N -n 0 -r R`) and one for decode (`-p 0 -n M -r R`), mmap on. Tokens/s, mean and spread,
are llama-bench's own. CPU-seconds per token = (utime + stime of the process - that of the load process)
/ (tokens the process evaluated - 1), warm-up included in both counts. Energy per token is computed the
same way from the meter's windows, idle draw subtracted. Long context: decode (`-n M`) after a prefilled
depth (`-d D`), one process per depth, so each peak RSS belongs to one context length.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import bandwidth as bw
from . import llamabench as lb
from .energy import MeterUnavailable, NullMeter, detect_meter, idle_watts
from .machine import machine_info
from .models import ModelFile
from .roofline import ceiling_tps, decode_traffic
from .schema import SCHEMA, validate

RSS_PROBE_GEN = 8


@dataclass
class Settings:
    threads: list[int]
    n_prompt: int = 512
    n_gen: int = 128
    reps: int = 3
    depths: list[int] = field(default_factory=lambda: [128, 1024, 4096, 16384])
    long_context_models: list[str] = field(default_factory=lambda: ["bm1-q6_K", "tq2_0"])
    long_context_threads: int | None = None
    energy: str = "auto"
    idle_s: float = 3.0
    bandwidth_s: float = 1.0
    bandwidth_bytes: int = 1 << 30
    timeout_s: float | None = None
    quiet_wait_s: float = 300.0      # before each process, wait up to this long for other work to stop
    max_foreign_share: float = 0.2   # rerun a process during which others used more than this many cores
    retries: int = 2


def _tps(record: dict) -> dict:
    samples = [float(x) for x in record.get("samples_ts", [])]
    return {"mean": float(record["avg_ts"]), "stddev": float(record.get("stddev_ts", 0.0) or 0.0),
            "reps": len(samples), "samples": samples}


def _test_name(record: dict) -> str:
    name = f"pp{record['n_prompt']}" if record.get("n_prompt") else f"tg{record.get('n_gen', 0)}"
    return name + (f" @ d{record['n_depth']}" if record.get("n_depth") else "")


def _one_test(proc: lb.BenchProcess) -> dict:
    if len(proc.tests) != 1:
        raise RuntimeError(f"expected one llama-bench test, got {len(proc.tests)}: {' '.join(proc.argv)}")
    return proc.tests[0]


def _share(proc: lb.BenchProcess) -> float | None:
    return None if proc.foreign_share is None else round(proc.foreign_share, 3)


def _null_energy(reason: str) -> dict:
    return {"joules_per_token": None, "mean_power_w": None, "components_j_per_token": None, "reason": reason,
            "meter": None}


def energy_per_token(meter, proc: lb.BenchProcess, load: lb.BenchProcess, idle: dict | None) -> dict:
    """Joules per token of `proc` beyond what loading costs (the load process), idle draw subtracted."""
    if not meter.available:
        return _null_energy(meter.reason)
    try:
        run = meter.energy(proc.start, proc.end).net(idle)
        base = meter.energy(load.start, load.end).net(idle)
    except MeterUnavailable as e:
        return _null_energy(str(e))
    tokens = proc.tokens - load.tokens
    per_token = {k: (run.joules[k] - base.joules.get(k, 0.0)) / tokens for k in run.joules}
    return {"joules_per_token": sum(per_token.values()), "mean_power_w": run.total / run.seconds,
            "components_j_per_token": per_token, "reason": None, "meter": meter.kind}


class Suite:
    def __init__(self, models: list[ModelFile], binary: Path, settings: Settings, *, cache: Path,
                 build: dict, source: dict, command: list[str], log=None, partial: Path | None = None):
        self.models, self.binary, self.s = models, Path(binary), settings
        self.cache, self.build, self.source, self.command = cache, build, source, command
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.notes: list[str] = []
        self.reruns = 0
        self.partial = partial          # rows so far, rewritten after each process (a killed run keeps them)
        self._rows: dict = {"results": [], "long_context": []}

    def _keep(self, section: str, row: dict) -> None:
        self._rows[section].append({k: v for k, v in row.items() if k != "_record"})
        if self.partial:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.partial.with_suffix(".tmp")
            tmp.write_text(json.dumps({"schema": SCHEMA + " (partial: rows so far)", **self._rows}, indent=1))
            os.replace(tmp, self.partial)

    def _run(self, what: str, model: ModelFile, rerun: bool = True, wait: bool = True, retries: int | None = None,
             **kwargs) -> lb.BenchProcess:
        """One llama-bench process on a quiet machine: waits for quiet first, and reruns (up to `retries`
        times, when `rerun`) a process during which other work took more cores than it left idle, plus
        `max_foreign_share` (ggml's worker threads spin at their barriers: a core taken from them stalls all)."""
        s = self.s
        idle_cores = (os.cpu_count() or 1) - kwargs["threads"]
        allowed = max(s.max_foreign_share, idle_cores + 0.1 if idle_cores >= 1 else 0.0)
        retries = (s.retries if retries is None else retries) if rerun else 0
        for attempt in range(retries + 1):
            if wait:
                lb.wait_for_quiet(s.quiet_wait_s, busy_cores_allowed=allowed, log=self.log)
            proc = lb.run(self.binary, model.path, self.feats, meter=self.meter, timeout_s=s.timeout_s, **kwargs)
            share = proc.foreign_share
            tests = " ".join(f"{_test_name(t)}: {t['avg_ts']:.2f} ± {t.get('stddev_ts', 0):.2f} t/s" for t in proc.tests)
            busy = f", others {share:.2f} cores" if share is not None and share > 0.05 else ""
            self.log(f"  {model.id:<10} {what:<14} t={kwargs['threads']:<3} {tests}  "
                     f"[{proc.wall_s:.1f} s, peak RSS {proc.peak_rss_bytes / 1e6:.0f} MB{busy}]")
            if share is None or share <= allowed:
                break
            if attempt < retries:
                self.log("    other work shared the CPU during that process: running it again")
                self.reruns += 1
        if rerun and share is not None and share > allowed:
            self.notes.append(f"{model.id} {what} at {kwargs['threads']} threads: other work took {share:.2f} cores "
                              f"on average even after {retries} rerun(s); its figures are disturbed")
        return proc

    def run(self) -> dict:
        s, started = self.s, time.monotonic()
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.feats = lb.features(self.binary)
        lc_threads = s.long_context_threads or max(s.threads)
        lc_models = [m for m in self.models if m.id in s.long_context_models] if s.depths else []

        meter = detect_meter(s.energy)
        try:
            meter.start()
        except MeterUnavailable as e:
            meter = NullMeter(str(e))
        self.meter = meter
        try:
            idle = idle_watts(meter, s.idle_s)
            if meter.available:
                self.log(f"energy: {meter.kind}, idle {sum(idle.values()) if idle else float('nan'):.2f} W")
            else:
                self.log(f"energy: none ({meter.reason})")
            thread_counts = sorted(set(s.threads) | ({lc_threads} if lc_models else set()))
            self.log(f"bandwidth probe at {','.join(map(str, thread_counts))} threads")
            lb.wait_for_quiet(s.quiet_wait_s, log=self.log)
            bandwidth = bw.measure(thread_counts, cache=self.cache, nbytes=s.bandwidth_bytes, seconds=s.bandwidth_s)
            for t, v in bandwidth["by_threads"].items():
                self.log(f"  {t} threads: {v['best_gbps']:.1f} GB/s (median {v['median_gbps']:.1f})")
            models_doc, loads, traffic = self._per_model(max(s.threads))
            results = self._timed(loads, traffic, bandwidth, idle)
            long_context = self._long_context(lc_models, lc_threads)
        finally:
            meter.stop()

        build = dict(self.build, llama_bench_version=self.feats.version)
        commits = {t.get("build_commit") for p in results for t in [p.pop("_record")]}
        build["build_commit"] = next(iter(commits)) if len(commits) == 1 else None
        meter_doc = meter.describe()
        meter_doc["idle_watts"] = idle
        doc = {
            "schema": SCHEMA, "created": created, "wall_s": round(time.monotonic() - started, 1),
            "command": self.command, "machine": machine_info(), "build": build,
            "settings": {
                "n_prompt": s.n_prompt, "n_gen": s.n_gen, "reps": s.reps, "threads": s.threads,
                "depths": s.depths if lc_models else [], "long_context_threads": lc_threads if lc_models else None,
                "long_context_models": [m.id for m in lc_models],
                "rss_probe": f"one process per load mode: pp{s.n_prompt} then tg{RSS_PROBE_GEN}, 1 repetition, "
                             f"no warm-up, {max(s.threads)} threads",
                "cpu_s_per_token": "(user+system CPU s of the process - of the model's load process) / (tokens "
                                   "evaluated incl. warm-up - 1)",
                "energy_per_token": "(meter J over the process - over the load process, idle W x duration "
                                    "subtracted from each) / (tokens incl. warm-up - 1); mean_power_w: the process's "
                                    "J above idle / its wall time",
            },
            "source": self.source, "energy_meter": meter_doc, "bandwidth": bandwidth, "models": models_doc,
            "results": results, "long_context": long_context, "plots": {"files": [], "skipped": "not drawn yet"},
            "notes": self.notes,
        }
        shares = [r["foreign_cores"] for r in results + long_context if r.get("foreign_cores") is not None]
        if shares:
            self.notes.append(f"other work on this machine during the timed processes: {max(shares):.2f} cores at "
                              f"most, {sum(shares) / len(shares):.2f} on average (from /proc/stat less llama-bench's "
                              f"own CPU time); {self.reruns} process(es) rerun for interference")
        validate(doc)
        return doc

    def _per_model(self, threads: int):
        s = self.s
        models_doc, loads, traffic = [], {}, {}
        self.log(f"per-model load and RSS probes ({len(self.models)} models, {threads} threads)")
        for m in self.models:
            traffic[m.id] = decode_traffic(m.header)
            load = self._run("load+1 token", m, threads=threads, n_prompt=0, n_gen=1, reps=1, warmup=False)
            probe = dict(threads=threads, n_prompt=s.n_prompt, n_gen=RSS_PROBE_GEN, reps=1, warmup=False)
            # peak RSS does not depend on the CPU being shared: no reruns for these
            rss_mmap = self._run("rss mmap", m, rerun=False, wait=False, use_mmap=True, **probe)
            rss_none = self._run("rss no-mmap", m, rerun=False, wait=False, use_mmap=False, **probe)
            loads[m.id] = load
            models_doc.append({**m.describe(), "decode_bytes_per_token": traffic[m.id].as_dict(),
                               "load": {"wall_s": round(load.wall_s, 3), "cpu_s": round(load.cpu_s, 3),
                                        "peak_rss_bytes": load.peak_rss_bytes},
                               "rss": {"mmap_peak_bytes": rss_mmap.peak_rss_bytes,
                                       "no_mmap_peak_bytes": rss_none.peak_rss_bytes}})
        return models_doc, loads, traffic

    def _timed(self, loads, traffic, bandwidth, idle) -> list[dict]:
        s, rows = self.s, []
        for threads in s.threads:
            self.log(f"timed runs at {threads} threads: pp{s.n_prompt} and tg{s.n_gen}, {s.reps} repetitions")
            gbps = bandwidth["by_threads"][str(threads)]["best_gbps"]
            for m in self.models:
                for kind, n_prompt, n_gen in (("prefill", s.n_prompt, 0), ("decode", 0, s.n_gen)):
                    proc = self._run(kind, m, threads=threads, n_prompt=n_prompt, n_gen=n_gen, reps=s.reps)
                    record = _one_test(proc)
                    load = loads[m.id]
                    tps = _tps(record)
                    roofline = None
                    if kind == "decode":
                        ceiling = ceiling_tps(gbps * 1e9, traffic[m.id])
                        roofline = {"bandwidth_gbps": gbps, "ceiling_tps": ceiling, "fraction": tps["mean"] / ceiling}
                    rows.append({
                        "model": m.id, "threads": threads, "test": _test_name(record),
                        "kind": kind, "n_prompt": n_prompt, "n_gen": n_gen, "depth": 0, "tokens_per_s": tps,
                        "peak_rss_bytes": proc.peak_rss_bytes, "wall_s": round(proc.wall_s, 3),
                        "tokens_processed": proc.tokens,
                        "cpu_s_per_token": (proc.cpu_s - load.cpu_s) / (proc.tokens - load.tokens),
                        "energy": energy_per_token(self.meter, proc, load, idle), "roofline": roofline,
                        "foreign_cores": _share(proc), "_record": record})
                    self._keep("results", rows[-1])
        return rows

    def _long_context(self, models: list[ModelFile], threads: int) -> list[dict]:
        s, rows = self.s, []
        if not models:
            return rows
        self.log(f"long context: tg{s.n_gen} after {','.join(map(str, s.depths))} tokens, {threads} threads")
        for m in models:
            for depth in s.depths:
                # one rerun at most: each repeats minutes of (untimed) prefill
                proc = self._run(f"depth {depth}", m, retries=min(1, s.retries), threads=threads, n_prompt=0,
                                 n_gen=s.n_gen, reps=s.reps, depth=depth)
                record = _one_test(proc)
                rows.append({"model": m.id, "threads": threads, "depth": depth, "test": _test_name(record),
                             "tokens_per_s": _tps(record), "peak_rss_bytes": proc.peak_rss_bytes,
                             "wall_s": round(proc.wall_s, 3), "foreign_cores": _share(proc)})
                self._keep("long_context", rows[-1])
        spread = {}
        for m in models:
            rss = [r["peak_rss_bytes"] for r in rows if r["model"] == m.id]
            spread[m.id] = (max(rss) - min(rss)) / 1e6
        self.notes.append("long context: peak RSS range over depths " +
                          ", ".join(f"{k} {v:.1f} MB" for k, v in spread.items()))
        return rows

