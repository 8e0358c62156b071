"""`bimamba-ppl MODEL --file TEXT`: perplexity measured the way llama.cpp's llama-perplexity measures it.

MODEL is a GGUF file (run by the patched llama.cpp, bimamba_edge.runtime) or a checkpoint directory (run by
the PyTorch reference, bimamba_edge.reference, tokenized by bimamba_edge.spm.Tokenizer from the checkpoint's
tokenizer.model, or LLaMA-2's when it has none: the ids llama.cpp gives for the converted file).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .cli_util import run_main
from .errors import BimambaError
from .runtime import STATE_TYPES, load

WINDOWING = (
    "llama-perplexity's default windowing: the text (one trailing newline dropped, as -f does) is tokenized "
    "once with BOS first and cut into floor(n_tokens / n_ctx) non-overlapping windows of n_ctx tokens (the "
    "rest is not scored); each window runs from an empty state with its first token replaced by BOS, and "
    "only its second half is scored: the logits at positions n_ctx/2 .. n_ctx-2 predict tokens "
    "n_ctx/2+1 .. n_ctx-1 (n_ctx/2 - 1 tokens per window); PPL = exp(mean negative log-likelihood)."
)


def llama_windows(tokens: Sequence[int], n_ctx: int, bos_id: int, max_windows: int | None = None) -> list[list[int]]:
    """The windows llama-perplexity evaluates, first token already replaced by BOS."""
    if n_ctx < 4:
        raise BimambaError(f"--ctx {n_ctx} is too small (at least 4)")
    if len(tokens) < 2 * n_ctx:
        raise BimambaError(f"the text tokenizes to only {len(tokens)} tokens; a context of {n_ctx} needs at "
                           f"least {2 * n_ctx} (as llama-perplexity requires)")
    n = len(tokens) // n_ctx
    if max_windows is not None:
        n = min(n, max_windows)
    return [[bos_id, *tokens[i * n_ctx + 1:(i + 1) * n_ctx]] for i in range(n)]


@dataclass
class Perplexity:
    """Accumulates llama-perplexity's sums over windows: the NLL and its square of every scored token."""

    n_ctx: int
    nll: float = 0.0
    nll2: float = 0.0
    count: int = 0
    running: list[float] = field(default_factory=list)  # PPL after each window, as llama-perplexity prints

    def add(self, logits, window: Sequence[int]) -> None:
        """logits (n_ctx, n_vocab) of one window; scores its second half."""
        first = self.n_ctx // 2
        logits = torch.as_tensor(logits)
        if logits.shape[0] != self.n_ctx or len(window) != self.n_ctx:
            raise ValueError(f"a window of {self.n_ctx} tokens needs {self.n_ctx} rows of logits, got {logits.shape[0]}")
        scored = torch.log_softmax(logits[first:self.n_ctx - 1].double(), -1)
        targets = torch.as_tensor(window[first + 1:], dtype=torch.long)
        nll = -scored.gather(1, targets[:, None])[:, 0]
        self.nll += float(nll.sum())
        self.nll2 += float((nll * nll).sum())
        self.count += len(nll)
        self.running.append(math.exp(self.nll / self.count))

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count)

    @property
    def error(self) -> float:
        """llama-perplexity's +/-: the standard error of the mean NLL, times the PPL."""
        mean, mean2 = self.nll / self.count, self.nll2 / self.count
        variance = mean2 - mean * mean
        return math.sqrt(variance / (self.count - 1)) * self.ppl if variance > 0 and self.count > 1 else 0.0

    def summary(self) -> dict:
        return {"ppl": round(self.ppl, 6), "error": round(self.error, 6), "mean_nll": round(self.nll / self.count, 6),
                "scored_tokens": self.count, "windows": len(self.running), "n_ctx": self.n_ctx}


def perplexity(tokens: Sequence[int], n_ctx: int, bos_id: int, logits: Callable[[list[int]], object],
               max_windows: int | None = None, progress: Callable[[int, float], None] | None = None) -> Perplexity:
    result = Perplexity(n_ctx)
    for i, window in enumerate(llama_windows(tokens, n_ctx, bos_id, max_windows)):
        result.add(logits(window), window)
        if progress:
            progress(i + 1, result.running[-1])
    return result


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BimambaError(f"{path}: no such file") from None
    except (UnicodeDecodeError, OSError) as e:
        raise BimambaError(f"{path}: cannot read it as UTF-8 text ({e})") from None
    return text.removesuffix("\n")  # llama.cpp's -f drops one trailing newline


@dataclass
class Scorer:
    """One model with its tokenizer: `tokens(text)` with BOS first, `logits(window)` from an empty state."""

    backend: str
    bos_id: int
    tokens: Callable[[str], list[int]]
    logits: Callable[[list[int]], object]


def gguf_scorer(path: Path, n_ctx: int, threads: int | None, state_type: str | None = None) -> Scorer:
    model = load(path, n_ctx=n_ctx, n_threads=threads, state_type=state_type)
    return Scorer(f"llama.cpp (patched runtime), {model.state_type} state", model.llama.token_bos(),
                  lambda text: model.tokenize(text, add_bos=True), model.logits)


def reference_scorer(directory: Path, threads: int | None, state_type: str | None = None) -> Scorer:
    from .checkpoint import Checkpoint
    from .convert.vocab import load_vocab
    from .reference import ReferenceModel
    from .spm import Tokenizer

    torch.set_num_threads(threads or 1)  # token-by-token matrix-vector products: more threads mostly contend
    ckpt = Checkpoint(directory)
    tokenizer = Tokenizer(load_vocab(ckpt.tokenizer_path()).model)
    reference = ReferenceModel(ckpt, torch.float16 if state_type == "f16" else torch.float32)
    return Scorer(f"bimamba_edge.reference (PyTorch, float32), {state_type or 'f32'} state", tokenizer.bos_id,
                  lambda text: tokenizer.encode(text, add_bos=True), reference.forward)


def scorer_for(model: str | Path, n_ctx: int, threads: int | None, state_type: str | None = None) -> Scorer:
    path = Path(model)
    if path.is_dir():
        return reference_scorer(path, threads, state_type)
    if path.is_file():
        return gguf_scorer(path, n_ctx, threads, state_type)
    raise BimambaError(f"{path}: no such file or checkpoint directory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bimamba-ppl",
        description="Perplexity of a GGUF (patched llama.cpp) or of a checkpoint directory (PyTorch reference) on "
                    "a text file, measured as llama-perplexity measures it.",
        epilog=WINDOWING)
    parser.add_argument("model", help="MODEL.gguf, or a checkpoint directory (config.json + weights [+ tokenizer.model])")
    parser.add_argument("-f", "--file", required=True, help="UTF-8 text to score")
    parser.add_argument("-c", "--ctx", type=int, default=512, help="window length n_ctx in tokens (default 512)")
    parser.add_argument("--chunks", type=int, default=None, help="score at most this many windows (default: all)")
    parser.add_argument("-t", "--threads", type=int, default=None,
                        help="CPU threads (default: all cores for a GGUF; 1 for the reference, whose token-by-token "
                             "products gain nothing from more)")
    parser.add_argument("--state-type", choices=STATE_TYPES, default=None,
                        help="SSM state storage between tokens (default: the file's, f32 unless converted with "
                             "--state-type f16); for a checkpoint, the reference rounds its state the same way")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)

    def work() -> int:
        if args.chunks is not None and args.chunks < 1:
            raise BimambaError(f"--chunks {args.chunks}: must be at least 1")
        text = read_text(args.file)
        scorer = scorer_for(args.model, args.ctx, args.threads, args.state_type)
        tokens = scorer.tokens(text)
        n = len(llama_windows(tokens, args.ctx, scorer.bos_id, args.chunks))  # refuses a text too short first
        if not args.json:
            print(f"{args.model}: {scorer.backend}; {len(tokens)} tokens, {n} windows of {args.ctx}, "
                  f"{args.ctx // 2 - 1} scored in each", file=sys.stderr)

        def progress(i: int, running: float) -> None:
            if not args.json:
                print(f"[{i}]{running:.4f},", end="", file=sys.stderr, flush=True)

        result = perplexity(tokens, args.ctx, scorer.bos_id, scorer.logits, args.chunks, progress)
        if args.json:
            print(json.dumps({"model": str(args.model), "file": str(args.file), "backend": scorer.backend,
                              "tokens": len(tokens), **result.summary()}))
        else:
            print(file=sys.stderr)
            print(f"Final estimate: PPL = {result.ppl:.4f} +/- {result.error:.5f}")
        return 0

    return run_main("bimamba-ppl", work)


if __name__ == "__main__":
    sys.exit(main())
