"""`bimamba-convert CKPT_DIR OUT.gguf`: the command line around bimamba_edge.convert.convert."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from bimamba_edge.cli_util import run_main
from bimamba_edge.runtime import STATE_TYPES

from .tensors import HEAD_TYPES
from .writer import OUTTYPES, ConvertOptions, convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bimamba-convert",
        description="Convert a Bi-Mamba (1-bit FBI-Linear Mamba-2) or Mamba-2 checkpoint to GGUF.")
    parser.add_argument("checkpoint", help="checkpoint directory: config.json + safetensors or *.bin (mamba_ssm or "
                                           "transformers layout), optionally tokenizer.model")
    parser.add_argument("output", help="output .gguf file (written atomically)")
    parser.add_argument("--outtype", choices=list(OUTTYPES), default="bm1",
                        help="bm1: 1-bit BM1 matrices + FBI scale/shift, arch bimamba2 (default); f16/f32: effective "
                             "weights materialized, plain mamba2 for stock llama.cpp and baselines")
    parser.add_argument("--head-type", choices=list(HEAD_TYPES), default=None,
                        help="type of the token embedding / output head (default f16; f32 with --outtype f32); "
                             "q6_K uses ggml's quantizer from the patched build (bimamba-build)")
    parser.add_argument("--binarize", choices=["sign"], default=None,
                        help="sign: post-training binarization of plain matrices (absmean per block), the paper's "
                             "baseline for a full-precision Mamba-2")
    parser.add_argument("--state-type", choices=list(STATE_TYPES), default="f32",
                        help="SSM state storage the file asks for: f16 halves the state's memory traffic per token "
                             "(bimamba2 only; bimamba-run / bimamba-ppl --state-type override it). Default f32")
    args = parser.parse_args(argv)

    def bar(plan):
        return tqdm(plan, desc="tensors", unit="t", file=sys.stderr, disable=None)

    def work() -> int:
        summary = convert(args.checkpoint, args.output,
                          ConvertOptions(outtype=args.outtype, head_type=args.head_type, binarize=args.binarize,
                                         state_type=args.state_type),
                          progress=bar)
        print("\n".join(summary.lines()))
        return 0

    return run_main("bimamba-convert", work)


if __name__ == "__main__":
    sys.exit(main())
