"""`bimamba-bench`: tokens/s, peak RSS, CPU time and energy of BM1 against stock llama.cpp types.

    bimamba-bench CKPT_DIR                    # build the comparison set from a checkpoint and run it all
    bimamba-bench --fixture 780m              # the same on a random checkpoint of the paper's 780M shape
    bimamba-bench --models DIR --llama-bench PATH --types bm1-q6_K,q1_0 --threads 1,2,4,8 --depths none
                                              # already-made GGUF files and a given llama-bench: nothing else needed
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bimamba_edge.cli_util import run_main
from bimamba_edge.errors import BimambaError

from .llamabench import features
from .models import COMPARISON_SET, build_set, scan_models
from .suite import Settings, Suite

# bimamba_edge.checkpoint.PAPER_SHAPES' keys (a test holds them equal): that module needs torch, and
# `--models` runs must start where only llama-bench is installed
FIXTURE_SHAPES = ("780m", "1.3b", "2.7b")


def _ints(text: str, what: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: comma-separated integers expected, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{what}: values must be positive")
    return values


def _cache_root(given: str | None) -> Path:
    if given:
        return Path(given)
    from bimamba_edge import upstream

    return upstream.cache_dir()


def _fixture(shape: str, cache: Path, log) -> Path:
    """A random checkpoint of a paper shape (bf16 latents, LLaMA-2 tokenizer rebuilt by the converter)."""
    from bimamba_edge.testing import PAPER_SHAPES, FixtureSpec, write_checkpoint

    directory = cache / "bench-fixtures" / shape
    done = directory / ".bimamba-complete"
    if not done.exists():
        log(f"writing the {shape} fixture checkpoint into {directory} (random weights, bf16)")
        write_checkpoint(directory, FixtureSpec(PAPER_SHAPES[shape], dtype="bfloat16", tokenizer=None))
        done.write_text(shape + "\n")
    return directory


def _recorded_runtime():
    """The build runtime.json names, read without current_runtime()'s patch check: only to label a
    --llama-bench that lives in it (e.g. a build made from newer patches than this checkout's)."""
    import json

    from bimamba_edge import upstream
    from bimamba_edge.build import RUNTIME_RECORD, Runtime

    try:
        return Runtime(**json.loads((upstream.cache_dir() / RUNTIME_RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _runtime_tools(args) -> tuple[Path, Path | None, dict]:
    """llama-bench (and llama-quantize) from the arguments or from the current patched build."""
    runtime = None
    if not args.llama_bench or (not args.models and not args.llama_quantize):
        from bimamba_edge.build import current_runtime

        try:
            runtime = current_runtime()
        except BimambaError as e:
            if not args.llama_bench:
                raise BimambaError(f"{e} (or pass --llama-bench PATH)") from None
    bench = Path(args.llama_bench) if args.llama_bench else runtime.binary("llama-bench")
    quantize = Path(args.llama_quantize) if args.llama_quantize else (runtime.binary("llama-quantize") if runtime else None)
    label = runtime or _recorded_runtime()
    same_build = label is not None and bench.resolve().parent == Path(label.build_dir, "bin").resolve()
    build = {"llama_bench": str(bench), "runtime_key": label.key if same_build else None,
             "flags": list(label.flags) if same_build else None}
    return bench, quantize, build


def main(argv: list[str] | None = None) -> int:
    ids = [v.id for v in COMPARISON_SET]
    defaults = Settings(threads=[])  # the suite's defaults, shown and used by the options below
    parser = argparse.ArgumentParser(prog="bimamba-bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("checkpoint", nargs="?", help="checkpoint directory (the comparison set is made from it)")
    src.add_argument("--fixture", choices=FIXTURE_SHAPES, help="random checkpoint of a paper shape (written once)")
    src.add_argument("--models", metavar="DIR", help="directory of already-made .gguf files (named from their headers)")
    parser.add_argument("--types", default=",".join(ids),
                        help=f"comma-separated model types (default: all of {','.join(ids)})")
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}" if (os.cpu_count() or 1) > 1 else "1",
                        help="comma-separated thread counts (default: 1 and all cores)")
    parser.add_argument("-r", "--reps", type=int, default=defaults.reps,
                        help=f"llama-bench repetitions (default {defaults.reps})")
    parser.add_argument("-p", "--n-prompt", type=int, default=defaults.n_prompt,
                        help=f"prefill test length (default {defaults.n_prompt})")
    parser.add_argument("-n", "--n-gen", type=int, default=defaults.n_gen,
                        help=f"decode test length (default {defaults.n_gen})")
    depths = ",".join(map(str, defaults.depths))
    parser.add_argument("--depths", default=depths, help=f"long-context depths, or 'none' (default {depths})")
    lc_types = ",".join(defaults.long_context_models)
    parser.add_argument("--long-context-types", default=lc_types, help=f"types run at every depth (default {lc_types})")
    parser.add_argument("--long-context-threads", type=int, default=None,
                        help="threads for the long-context runs (default: the largest of --threads)")
    parser.add_argument("--llama-bench", metavar="PATH", help="llama-bench binary (default: the patched build's)")
    parser.add_argument("--llama-quantize", metavar="PATH", help="llama-quantize binary for the stock types")
    parser.add_argument("--cache", metavar="DIR", help="where made models, fixtures and the probe live "
                                                       "(default ~/.cache/bimamba-edge)")
    parser.add_argument("--out", default="bench-results", help="results directory (default ./bench-results)")
    parser.add_argument("--energy", choices=["auto", "rapl", "powermetrics", "none"], default="auto")
    parser.add_argument("--idle-seconds", type=float, default=defaults.idle_s,
                        help=f"idle baseline length (default {defaults.idle_s:g})")
    parser.add_argument("--bandwidth-seconds", type=float, default=defaults.bandwidth_s,
                        help="probe time per thread count")
    parser.add_argument("--bandwidth-mib", type=int, default=defaults.bandwidth_bytes >> 20,
                        help=f"probe buffer (default {defaults.bandwidth_bytes >> 20} MiB)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed to one llama-bench process")
    parser.add_argument("--quiet-wait", type=float, default=defaults.quiet_wait_s,
                        help="before each llama-bench process, wait up to this many seconds for other work on the "
                             f"machine to stop (default {defaults.quiet_wait_s:g}; 0: do not wait)")
    parser.add_argument("--max-foreign", type=float, default=defaults.max_foreign_share,
                        help=f"rerun ({defaults.retries} times at most) a process during which other work used more "
                             "than this many cores on average, or more than the cores it leaves idle (Linux "
                             f"/proc/stat; default {defaults.max_foreign_share:g})")
    parser.add_argument("--no-plots", action="store_true", help="JSON and markdown only")
    parser.add_argument("--prepare-only", action="store_true",
                        help="make (or find) the model files, print their directory and stop: copy it to another "
                             "machine and run there with --models DIR")
    args = parser.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    def work() -> int:
        try:
            threads = _ints(args.threads, "--threads")
            depths = _ints(args.depths, "--depths")
        except argparse.ArgumentTypeError as e:
            raise BimambaError(str(e)) from None
        if not threads:
            raise BimambaError("--threads: give at least one thread count")
        types = [t.strip() for t in args.types.split(",") if t.strip()]
        t0 = time.monotonic()
        cache = _cache_root(args.cache)
        bench, quantize, build = _runtime_tools(args)
        features(bench)  # a wrong --llama-bench fails here, before any model is made
        if args.models:
            models = scan_models(Path(args.models), types if args.types != parser.get_default("types") else None)
            source = {"checkpoint": None, "models_dir": str(Path(args.models).resolve())}
        else:
            ckpt = Path(args.checkpoint) if args.checkpoint else _fixture(args.fixture, cache, log)
            models = build_set(ckpt, types, cache / "bench-models", quantize, log)
            source = {"checkpoint": str(ckpt.resolve()), "models_dir": str(models[0].path.parent)}
        log(f"models ready in {time.monotonic() - t0:.0f} s: " + ", ".join(m.id for m in models))
        if args.prepare_only:
            for m in models:
                print(f"{m.id:<10} {m.header.file_bytes / 1e6:9.1f} MB  {m.path}")
            return 0
        settings = Settings(threads=threads, n_prompt=args.n_prompt, n_gen=args.n_gen, reps=args.reps,
                            depths=depths, long_context_models=[t.strip() for t in args.long_context_types.split(",")],
                            long_context_threads=args.long_context_threads, energy=args.energy,
                            idle_s=args.idle_seconds, bandwidth_s=args.bandwidth_seconds,
                            bandwidth_bytes=args.bandwidth_mib << 20, timeout_s=args.timeout,
                            quiet_wait_s=args.quiet_wait, max_foreign_share=args.max_foreign)
        suite = Suite(models, bench, settings, cache=cache / "bench-probe", build=build, source=source,
                      command=["bimamba-bench", *(argv if argv is not None else sys.argv[1:])], log=log,
                      partial=Path(args.out) / "partial.json")
        doc = suite.run()
        from .report import write_results

        out = Path(args.out)
        write_results(doc, out, plots=not args.no_plots)
        (out / "partial.json").unlink(missing_ok=True)
        print((out / "results.md").read_text())
        log(f"wrote {out}/results.json, results.md" + (f" and {len(doc['plots']['files'])} plots"
                                                       if doc["plots"]["files"] else f" (plots: {doc['plots']['skipped']})")
            + f"; {(time.monotonic() - t0) / 60:.1f} min in all")
        return 0

    return run_main("bimamba-bench", work)


if __name__ == "__main__":
    sys.exit(main())
