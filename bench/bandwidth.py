"""Read bandwidth of this machine's memory, at each thread count the benchmark uses.

A small C program, compiled here at run time with the machine's `cc`, sums a buffer far larger than any
last-level cache (1 GiB by default) split across T pthreads, pass after pass for about a second, and
prints each pass's GB/s. C rather than numpy because numpy's reductions are compute-bound before they
are bandwidth-bound: on the 2-core development machine `np.sum` over 1 GiB reached 9.8 GB/s on one
thread and did not scale with two, where this loop reached 13.0 / 13.7 GB/s. Without a C compiler the
numpy reduction is used and the report says so (its figure is then a lower bound on bandwidth, so the
roofline fractions computed from it are upper bounds).

The figure reported per thread count is the best pass (the STREAM convention), with the median beside it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path

PROBE_C = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* read-bandwidth probe for bimamba-bench: sum 64-bit words, four independent chains per thread */
struct part { const uint64_t *p; size_t n; uint64_t out; };

static void *sum_part(void *arg) {
    struct part *w = arg;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= w->n; i += 4) {
        a += w->p[i]; b += w->p[i + 1]; c += w->p[i + 2]; d += w->p[i + 3];
    }
    w->out = a ^ b ^ c ^ d;
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s THREADS BYTES SECONDS\n", argv[0]); return 2; }
    int threads = atoi(argv[1]);
    size_t bytes = strtoull(argv[2], NULL, 10);
    double seconds = atof(argv[3]);
    size_t words = bytes / 8;
    uint64_t *buf = NULL;
    if (threads < 1 || threads > 1024 || posix_memalign((void **)&buf, 4096, words * 8) != 0) return 3;
    for (size_t i = 0; i < words; i++) buf[i] = i * 0x9E3779B97F4A7C15ull;  /* touch every page */
    pthread_t *tid = calloc(threads, sizeof *tid);
    struct part *parts = calloc(threads, sizeof *parts);
    uint64_t sink = 0;
    double start = now();
    int passes = 0;
    while (passes < 3 || (now() - start < seconds && passes < 1000)) {
        size_t per = words / threads / 4 * 4;
        double t0 = now();
        for (int t = 0; t < threads; t++) {
            parts[t].p = buf + per * t; parts[t].n = per;
            pthread_create(&tid[t], NULL, sum_part, &parts[t]);
        }
        for (int t = 0; t < threads; t++) { pthread_join(tid[t], NULL); sink ^= parts[t].out; }
        double dt = now() - t0;
        printf("%.6f\n", (double)(per * threads * 8) / dt / 1e9);
        passes++;
    }
    fprintf(stderr, "sink %llu\n", (unsigned long long)sink);
    return 0;
}
"""


def _compile_probe(cache: Path) -> tuple[Path | None, str]:
    """Path of the compiled probe (cached by source and machine) and how it was built, or None and why."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None, "no C compiler (cc) found"
    key = hashlib.sha256(PROBE_C.encode() + platform.machine().encode() + cc.encode()).hexdigest()[:12]
    exe = cache / f"bwprobe-{key}"
    if exe.exists():
        return exe, f"C probe ({cc}, cached)"
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / f"bwprobe-{key}.c"
    src.write_text(PROBE_C)
    errors = ""
    for flags in (["-O3", "-march=native"], ["-O3"]):
        proc = subprocess.run([cc, *flags, "-pthread", str(src), "-o", str(exe)], capture_output=True, text=True)
        if proc.returncode == 0:
            return exe, f"C probe ({cc} {' '.join(flags)})"
        errors = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None, f"the C probe did not compile ({errors})"


def _numpy_passes(threads: int, nbytes: int, seconds: float) -> list[float]:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    buf = np.arange(nbytes // 8, dtype=np.int64)
    parts = np.array_split(buf, threads)
    rates, start = [], time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        while len(rates) < 3 or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            list(pool.map(np.add.reduce, parts))  # numpy releases the GIL inside the reduction
            rates.append(buf.nbytes / (time.perf_counter() - t0) / 1e9)
    return rates


def measure(threads_list: list[int], *, cache: Path, nbytes: int = 1 << 30, seconds: float = 1.0) -> dict:
    """{"method", "buffer_bytes", "by_threads": {T: {"best_gbps", "median_gbps", "passes"}}}."""
    exe, how = _compile_probe(cache)
    method = how if exe else f"numpy reduction ({how}; a lower bound on bandwidth)"
    by_threads = {}
    for t in threads_list:
        if exe:
            proc = subprocess.run([str(exe), str(t), str(nbytes), str(seconds)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"bandwidth probe failed (exit {proc.returncode}): {proc.stderr.strip()[-200:]}")
            rates = [float(x) for x in proc.stdout.split()]
        else:
            rates = _numpy_passes(t, nbytes, seconds)
        by_threads[str(t)] = {"best_gbps": max(rates), "median_gbps": statistics.median(rates), "passes": len(rates)}
    return {"method": method, "buffer_bytes": nbytes, "seconds_per_thread_count": seconds, "by_threads": by_threads}
