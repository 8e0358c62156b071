"""`bimamba-run MODEL.gguf -p "..."`: generate text with the patched llama.cpp, streamed as it comes."""

from __future__ import annotations

import argparse
import sys
import time

from .cli_util import run_main
from .runtime import STATE_TYPES, load, peak_rss_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bimamba-run", description="Generate text from a bimamba2 / mamba2 GGUF.")
    parser.add_argument("model", help="GGUF file from bimamba-convert")
    parser.add_argument("-p", "--prompt", default="", help="prompt text")
    parser.add_argument("-n", "--max-tokens", type=int, default=128, help="tokens to generate (default 128)")
    parser.add_argument("--temp", type=float, default=0.0, help="temperature; 0 = greedy, deterministic (default)")
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--ctx", type=int, default=2048, help="context length in tokens (default 2048)")
    parser.add_argument("--state-type", choices=STATE_TYPES, default=None,
                        help="SSM state storage between tokens: f16 halves the state's memory traffic (default: "
                             "the file's, f32 unless converted with --state-type f16)")
    parser.add_argument("--no-repack", action="store_true",
                        help="keep the weights in the file's layout, as llama.cpp's --no-repack: BM1 then runs its "
                             "sign-identity kernels instead of the lookup-table matmul (default: repack at load)")
    args = parser.parse_args(argv)

    def work() -> int:
        model = load(args.model, n_ctx=args.ctx, n_threads=args.threads, seed=args.seed, state_type=args.state_type,
                     repack=not args.no_repack)
        prompt = model.tokenize(args.prompt)
        if len(prompt) + args.max_tokens > args.ctx:
            parser.error(f"prompt ({len(prompt)} tokens) + -n {args.max_tokens} exceeds --ctx {args.ctx}")
        print(args.prompt, end="", flush=True)
        generated: list[int] = []
        shown = ""
        start = first = time.perf_counter()
        for token in model.generate(prompt, args.max_tokens, temp=args.temp, top_k=args.top_k, top_p=args.top_p):
            if not generated:
                first = time.perf_counter()
            generated.append(token)
            text = model.detokenize(generated)  # whole text: multi-byte characters may span tokens
            if not text.endswith("\ufffd"):
                print(text[len(shown):], end="", flush=True)
                shown = text
        end = time.perf_counter()
        print()
        # as mlx-lm: the prompt's time is the time to the first token, generation the tokens after it
        prompt_tps = len(prompt) / (first - start) if generated else float("nan")
        generation_tps = (len(generated) - 1) / (end - first) if len(generated) > 1 else float("nan")
        print("=" * 10, file=sys.stderr)
        print(f"Prompt: {len(prompt)} tokens, {prompt_tps:.3f} tokens-per-sec", file=sys.stderr)
        print(f"Generation: {len(generated)} tokens, {generation_tps:.3f} tokens-per-sec", file=sys.stderr)
        print(f"Peak memory: {peak_rss_bytes() / 1e9:.3f} GB, SSM state {model.state_type}", file=sys.stderr)
        return 0

    return run_main("bimamba-run", work)


if __name__ == "__main__":
    sys.exit(main())
