"""One llama-bench process: its JSON results, its resources (rusage) and its energy window.

llama-bench (from the patched build, or any llama-bench given by path) does the timing: tokens/s per
test as it defines them (`avg_ts`, `stddev_ts` over `-r` repetitions, after one warm-up run). This module
adds what only the parent can see: the child's peak resident set and CPU seconds from `os.wait4`'s
rusage, and the meter marks around the child's whole lifetime.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bimamba_edge.errors import BimambaError
from bimamba_edge.runtime import maxrss_bytes

from .energy import Mark, NullMeter


@dataclass(frozen=True)
class Features:
    """What this llama-bench accepts (older builds spell the mmap switch `-mmp`)."""

    mmap_flag: str           # "-lm" (load mode none|mmap) or "-mmp" (0|1)
    depth: bool              # -d / --n-depth
    version: str

    def mmap_args(self, use_mmap: bool) -> list[str]:
        if self.mmap_flag == "-lm":
            return ["-lm", "mmap" if use_mmap else "none"]
        return ["-mmp", "1" if use_mmap else "0"]


def features(binary: Path) -> Features:
    if not Path(binary).is_file() or not os.access(binary, os.X_OK):
        raise BimambaError(f"{binary}: no llama-bench executable there")
    proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    text = proc.stdout + proc.stderr
    if "--n-prompt" not in text:
        raise BimambaError(f"{binary}: does not look like llama-bench (`--help` lists no --n-prompt)")
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    ver = (version.stdout + version.stderr).strip().splitlines()
    mmap_flag = "-lm" if "--load-mode" in text else "-mmp"
    return Features(mmap_flag, "--n-depth" in text, ver[0] if ver else "")


# Runs llama-bench and writes its rusage to the file named first. Why a launcher: a process spawned from
# this one inherits, in its ru_maxrss, this process's own peak RSS (Linux records the old memory map's
# high-water mark at exec, and a vfork/posix_spawn child's old map is ours), so wait4 straight on
# llama-bench would report max(our peak, its peak). The launcher is a bare `python -S` (about 10 MB):
# that is the floor it passes on, well below any model's footprint.
LAUNCHER = """
import json, os, resource, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, ru = os.wait4(pid, 0)
me = resource.getrusage(resource.RUSAGE_SELF)
with open(sys.argv[1], "w") as f:
    json.dump({"exitcode": os.waitstatus_to_exitcode(status), "utime": ru.ru_utime, "stime": ru.ru_stime,
               "maxrss": ru.ru_maxrss, "launcher_cpu": me.ru_utime + me.ru_stime}, f)
"""


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, busy_cores_allowed: float = 0.25, log=None) -> float:
    """Waits (up to max_wait_s) until the machine is idle for one second; returns the seconds waited."""
    waited, first = 0.0, True
    while waited < max_wait_s:
        before = machine_busy_s()
        if before is None:
            return waited
        time.sleep(1.0)
        if machine_busy_s() - before <= busy_cores_allowed:
            return waited
        if first and log:
            log("  (the CPU is busy with other work: waiting for it to go quiet)")
            first = False
        waited += 1.0
    return waited


@dataclass
class BenchProcess:
    argv: list[str]
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    peak_rss_bytes: int
    tests: list[dict]            # llama-bench -o json records
    start: Mark
    end: Mark
    tokens: int                  # tokens the process evaluated: warm-up included (see `tokens_processed`)
    stderr_tail: list[str] = field(default_factory=list)
    foreign_cpu_s: float | None = None   # CPU seconds others used on this machine during the process

    @property
    def foreign_share(self) -> float | None:
        """Average number of cores taken by other work while this process ran (0 on a quiet machine)."""
        return None if self.foreign_cpu_s is None else max(0.0, self.foreign_cpu_s) / self.wall_s

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s


def tokens_processed(n_prompt: int, n_gen: int, depth: int, reps: int, warmup: bool) -> int:
    """Tokens one llama-bench test evaluates in its process, counted from llama-bench's own loop:
    a warm-up of the whole prompt (prompt tests) or of one generated token (generation tests), then
    `reps` timed runs; depth is prefilled once and restored from a saved state for later repetitions."""
    tokens = reps * (n_prompt + n_gen) + depth
    if warmup:
        tokens += n_prompt if n_prompt > 0 else 0
        tokens += 1 if n_gen > 0 else 0
    return tokens


def run(binary: Path, model: Path, feats: Features, *, threads: int, n_prompt: int, n_gen: int, reps: int,
        depth: int = 0, use_mmap: bool = True, warmup: bool = True, meter=None,
        timeout_s: float | None = None) -> BenchProcess:
    meter = meter or NullMeter("no meter")
    argv = [str(binary), "-m", str(model), "-o", "json", "-t", str(threads), "-p", str(n_prompt),
            "-n", str(n_gen), "-r", str(reps), *feats.mmap_args(use_mmap)]
    if depth:
        if not feats.depth:
            raise BimambaError(f"{binary}: this llama-bench has no --n-depth; long-context runs need it")
        argv += ["-d", str(depth)]
    if not warmup:
        argv.append("--no-warmup")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as usage:
        start = meter.mark()
        busy0 = machine_busy_s()
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, usage.name, *argv], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's session: the launcher and llama-bench
            proc.wait()
        wall = time.monotonic() - t0
        busy1 = machine_busy_s()
        end = meter.mark()
        child = json.loads(usage.read() or "{}")
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace").strip().splitlines()
    returncode = child.get("exitcode", proc.returncode if proc.returncode else -1)
    if returncode != 0 or not child:
        why = "timed out" if timeout_s and wall >= timeout_s else f"exit {returncode}"
        tail = " | ".join(line for line in stderr[-5:] if line.strip())
        raise BimambaError(f"llama-bench failed ({why}) on {model.name}: {tail}\n  command: {' '.join(argv)}")
    try:
        tests = json.loads(stdout)
    except json.JSONDecodeError:
        raise BimambaError(f"llama-bench printed no JSON for {model.name}: {stdout[:200]!r}") from None
    # ours: llama-bench's CPU time and the launcher's own (its interpreter start-up, some 0.03 s)
    ours = child["utime"] + child["stime"] + child.get("launcher_cpu", 0.0)
    foreign = None if busy0 is None or busy1 is None else busy1 - busy0 - ours
    return BenchProcess(argv, wall, child["utime"], child["stime"], maxrss_bytes(child["maxrss"]), tests, start, end,
                        tokens_processed(n_prompt, n_gen, depth, reps, warmup), stderr[-20:], foreign)
