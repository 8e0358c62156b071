"""The patched llama.cpp runtime against bimamba_edge.reference, and its errors.

These need the built runtime (`bimamba-build`, run by `make test`); without it they fail, never skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from bimamba_edge import ggml, runtime
from bimamba_edge.checkpoint import Checkpoint
from bimamba_edge.errors import BimambaError
from bimamba_edge.reference import ReferenceModel, fbi_weight
from bimamba_edge.testing import small_config
from conftest import run_convert

# every layout and scaling pattern the converter supports, at small shapes
VARIANTS = {
    "column": dict(scaling="column"),
    "row": dict(scaling="row"),
    "single": dict(scaling="single"),
    "in_proj_only": dict(in_proj_only=True),
    "ngroups2_D_per_channel": dict(config=small_config(ngroups=2, d_has_hdim=True)),
    "transformers_untied_padded": dict(layout="transformers", config=small_config(vocab_size=300, tie_embeddings=False)),
    # fp16 rounding makes ~1e-6 of N(0, 0.02) latents exactly 0; 1e-4 is generous and still leaves dozens
    "fp16_latents_with_zeros": dict(dtype="float16", zero_fraction=1e-4),
    "bf16_sharded": dict(dtype="bfloat16", file_format="sharded"),
    # real Mamba-2's d_state, whose batches an AVX-512 build scans with each state row in registers (patch 0028)
    "d_state_128": dict(config=small_config(d_state=128)),
}
N_TOKENS = 64
N_GREEDY = 32
# the bar against the exact reference, which a latent of exactly 0 (sign 0, stored as +1) strains
FIDELITY_COSINE = 0.999
# The BM1 matmul meets 15-bit activations (Q16_K): against the signs the file holds, the runtime agrees to
# float rounding, and this bar catches a wrong scale or a missed term.
STORED_SIGNS_COSINE = 0.999999
# The f16 state: the runtime and a reference that rounds its state to f16 after each token may round a value
# to neighbouring f16s (their inputs differ by float rounding), so the bar sits below STORED_SIGNS_COSINE.
F16_STATE_COSINE = 0.99999


def convert(directory, out, *args):
    proc = run_convert(directory, out, *args)
    assert proc.returncode == 0, proc.stderr
    return out


def cosine_per_position(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def reference_of_the_stored_signs(ckpt: Checkpoint, state_dtype: torch.dtype = torch.float32) -> ReferenceModel:
    """The exact reference with each FBI latent's sign as BM1 stores it: an exact 0 becomes +1."""
    model = ReferenceModel(ckpt, state_dtype)
    for i, layer in enumerate(model.layers):
        for proj in ("in_proj", "out_proj"):
            base = f"backbone.layers.{i}.mixer.{proj}."
            if base + "wscale" in ckpt:
                signs = torch.where(ckpt.load(base + "weight") >= 0, 1.0, -1.0)
                layer[proj] = fbi_weight(signs, ckpt.load(base + "wscale"), ckpt.load(base + "wbias"))
    return model


def reference_greedy(model: ReferenceModel, prompt: list[int], n: int) -> list[int]:
    state = model.new_state()
    for token in prompt[:-1]:
        model.step(token, state)
    token, out = prompt[-1], []
    for _ in range(n):
        token = int(model.step(token, state).argmax())
        out.append(token)
    return out


@pytest.fixture(scope="module", params=VARIANTS)
def converted(request, tmp_path_factory):
    """(checkpoint, runtime model, reference logits, runtime logits) for one variant."""
    from bimamba_edge.testing import FixtureSpec, write_checkpoint

    fields = dict(VARIANTS[request.param])
    spec = FixtureSpec(fields.pop("config", small_config()), **fields)
    directory = write_checkpoint(tmp_path_factory.mktemp("ckpt"), spec)
    gguf_path = convert(directory, directory / "m.gguf", "--head-type", "f32")
    ckpt = Checkpoint(directory)
    tokens = torch.randint(1, ckpt.config.vocab_size, (N_TOKENS,), generator=torch.Generator().manual_seed(3)).tolist()
    model = runtime.load(gguf_path, n_ctx=256, n_threads=2)
    return ckpt, model, tokens, model.logits(tokens)


def test_runtime_logits_match_the_reference_of_the_stored_signs(converted):
    """Kernels and graph: the runtime computes what the file holds, to float rounding."""
    ckpt, _, tokens, ours = converted
    cos = cosine_per_position(ours, reference_of_the_stored_signs(ckpt).forward(tokens).numpy())
    assert cos.min() >= STORED_SIGNS_COSINE, f"worst position {cos.argmin()}: cosine {cos.min():.7f}"


def test_runtime_logits_stay_close_to_the_exact_reference(converted):
    ckpt, _, tokens, ours = converted
    cos = cosine_per_position(ours, ReferenceModel(ckpt).forward(tokens).numpy())
    assert cos.min() >= FIDELITY_COSINE, f"worst position {cos.argmin()}: cosine {cos.min():.7f}"


def test_greedy_continuation_matches_the_exact_reference(converted):
    ckpt, model, tokens, _ = converted
    prompt = tokens[:8]
    assert list(model.generate(prompt, N_GREEDY)) == reference_greedy(ReferenceModel(ckpt), prompt, N_GREEDY)


def test_the_kernels_on_the_file_layout_match_the_reference_too(converted):
    """Repacking off (llama-bench --repack 0) runs BM1's vec_dot and 2 x 2 tiles on the GGUF layout instead of the
    lookup-table matmul that llama.cpp loads by default where the build has it: the same bar."""
    ckpt, model, tokens, _ = converted
    file_layout = runtime.load(model.path, n_ctx=256, n_threads=2, repack=False).logits(tokens)
    cos = cosine_per_position(file_layout, reference_of_the_stored_signs(ckpt).forward(tokens).numpy())
    assert cos.min() >= STORED_SIGNS_COSINE, f"worst position {cos.argmin()}: cosine {cos.min():.7f}"


def test_one_thread_computes_what_two_do(converted):
    """The thread count only splits the work (matmul strips, scan heads, rows), so one thread gives the two-thread
    logits and greedy text bitwise. One thread also takes the path where each BM1 matmul prefetches the state of
    the scan after it (patch 0020), which must change nothing but speed."""
    _, model, tokens, ours = converted
    one = runtime.load(model.path, n_ctx=256, n_threads=1)
    assert np.array_equal(one.logits(tokens), ours)
    prompt = tokens[:8]
    assert list(one.generate(prompt, N_GREEDY)) == list(model.generate(prompt, N_GREEDY))


# Logits of a batch, then of a greedy decode (the prompt and every token generated one at a time), at 2 threads.
DECODE_LOGITS = """
import sys
import numpy as np
from bimamba_edge import runtime
path, out, n_greedy, *tokens = sys.argv[1:]
model = runtime.load(path, n_ctx=256, n_threads=2)
tokens = list(map(int, tokens))
batch = model.logits(tokens)
list(model.generate(tokens[:8], int(n_greedy)))
np.savez(out, batch=batch, decode=np.array(model.llama.scores[: model.llama.n_tokens]))
"""


def test_the_column_scale_and_shift_fused_into_the_matmul_keep_the_bits(converted, tmp_path):
    """FBI-Linear's column scale x * a feeds a BM1 matmul, which applies it as it quantizes x (patch 0021 fuses
    the MUL away), and adds the shift b · x to its outputs with the dot of the one-row F32 matmul it replaces (patch
    0022 fuses that matmul and its ADD away): in a batch and in decode, the logits are bitwise those of the graph with
    every CPU fusion off."""
    _, model, tokens, _ = converted
    out = tmp_path / "logits.npz"

    def logits(**env):
        proc = subprocess.run([sys.executable, "-c", DECODE_LOGITS, *map(str, [model.path, out, N_GREEDY, *tokens])],
                              env={**os.environ, **env}, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        with np.load(out) as saved:
            return saved["batch"], saved["decode"]

    fused, unfused = logits(), logits(GGML_CPU_DISABLE_FUSION="1")
    assert all(np.array_equal(a, b) for a, b in zip(fused, unfused))


def test_greedy_continuation_of_the_bimamba_pattern_matches_the_exact_reference(make_checkpoint, tmp_path):
    """Column scaling with a tied head, as Bi-Mamba ships: the exact reference's greedy text is reproduced."""
    directory = make_checkpoint(scaling="column")
    model = runtime.load(convert(directory, tmp_path / "m.gguf"), n_ctx=128)
    prompt = [1, 17, 230, 41, 9]
    assert list(model.generate(prompt, N_GREEDY)) == reference_greedy(ReferenceModel(Checkpoint(directory)), prompt, N_GREEDY)


def test_dense_mamba2_export_matches_too(make_checkpoint, tmp_path):
    """The stock-compatible export (effective weights in f32, arch mamba2) is the exactness baseline."""
    directory = make_checkpoint()
    gguf_path = convert(directory, tmp_path / "m.gguf", "--outtype", "f32")
    reference = ReferenceModel(Checkpoint(directory))
    tokens = list(range(1, 40))
    cos = cosine_per_position(runtime.load(gguf_path, n_ctx=128).logits(tokens), reference.forward(tokens).numpy())
    assert cos.min() >= 0.99999


@pytest.mark.parametrize("d_state", [16, 128])
def test_f16_state_rounds_as_the_reference_does(make_checkpoint, tmp_path, d_state):
    """--state-type f16 keeps the SSM state in f16 between tokens: the runtime follows a reference that rounds
    its state the same way, over a prompt (one batch) and a greedy continuation (token by token), and stays
    within the fidelity bar of the exact f32 reference."""
    directory = make_checkpoint(config=small_config(d_state=d_state), scaling="column")
    ckpt = Checkpoint(directory)
    gguf_path = convert(directory, tmp_path / "m.gguf", "--head-type", "f32")
    tokens = torch.randint(1, ckpt.config.vocab_size, (N_TOKENS,), generator=torch.Generator().manual_seed(5)).tolist()
    model = runtime.load(gguf_path, n_ctx=256, n_threads=2, state_type="f16")
    assert model.state_type == "f16"
    ours = model.logits(tokens)
    assert np.abs(ours - runtime.load(gguf_path, n_ctx=256, n_threads=2).logits(tokens)).max() > 0
    rounded = cosine_per_position(ours, reference_of_the_stored_signs(ckpt, torch.float16).forward(tokens).numpy())
    assert rounded.min() >= F16_STATE_COSINE, f"worst position {rounded.argmin()}: cosine {rounded.min():.7f}"
    exact = cosine_per_position(ours, ReferenceModel(ckpt).forward(tokens).numpy())
    assert exact.min() >= FIDELITY_COSINE, f"worst position {exact.argmin()}: cosine {exact.min():.7f}"
    prompt = tokens[:8]
    expected = reference_greedy(ReferenceModel(ckpt, torch.float16), prompt, N_GREEDY)
    assert list(model.generate(prompt, N_GREEDY)) == expected


def test_state_type_comes_from_the_file_and_loading_overrides_it(make_checkpoint, tmp_path):
    directory = make_checkpoint()
    f16_file = convert(directory, tmp_path / "s16.gguf", "--state-type", "f16")
    assert runtime.load(f16_file, n_ctx=64).state_type == "f16"
    assert runtime.load(f16_file, n_ctx=64, state_type="f32").state_type == "f32"
    assert runtime.load(convert(directory, tmp_path / "s32.gguf"), n_ctx=64).state_type == "f32"
    dense = convert(directory, tmp_path / "dense.gguf", "--outtype", "f16")
    with pytest.raises(BimambaError, match="an f16 state needs a bimamba2 file"):
        runtime.load(dense, n_ctx=64, state_type="f16")


def decode_together(gguf_path, steps: list[list[list[int]]], ops: Counter | None = None) -> list[list[np.ndarray]]:
    """Decodes sequences side by side in one batch per step, through llama.cpp's C API (the Python wrapper runs
    one sequence); returns each step's last-token logits per sequence. With ops, counts the graph nodes that
    ran, by ggml op (ggml_op_desc), through llama.cpp's eval callback."""
    import llama_cpp as lc

    model = lc.llama_model_load_from_file(str(gguf_path).encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 256, 64, 64, 2
    params.n_threads = params.n_threads_batch = 2
    if ops is not None:
        def count(tensor, ask, user_data):
            if ask:
                ops[ggml.libggml_base().ggml_op_desc(tensor).decode()] += 1
            return False  # asks for no data: the graph still runs whole

        params.cb_eval = lc.ggml_backend_sched_eval_callback(count)  # the struct keeps the callback alive
    ctx = lc.llama_init_from_model(model, params)
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(64, 0, 2)
    out, pos = [], 0
    try:
        for tokens_per_seq in steps:
            batch.n_tokens, last = 0, []
            for seq, tokens in enumerate(tokens_per_seq):
                for i, token in enumerate(tokens):
                    k = batch.n_tokens
                    batch.token[k], batch.pos[k], batch.n_seq_id[k] = token, pos + i, 1
                    batch.seq_id[k][0], batch.logits[k] = seq, i == len(tokens) - 1
                    batch.n_tokens += 1
                last.append(batch.n_tokens - 1)
            assert lc.llama_decode(ctx, batch) == 0
            out.append([np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, k), shape=(n_vocab,)).copy() for k in last])
            pos += len(tokens_per_seq[0])
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        lc.llama_model_free(model)
    return out


@pytest.mark.parametrize("state_type", ["f32", "f16"])
def test_sequences_decoded_together_match_one_at_a_time(make_checkpoint, tmp_path, state_type):
    """Equal-length sequences share a ubatch (llama.cpp's equal split), so two of them take upstream's
    write-then-copy conv and scan; one sequence alone takes the fused in-place ones. Both must agree: bitwise
    with an f32 state (the fused ops round as the ops they replace); with an f16 state to its rounding, as the
    shared path rounds the state once per batch where the in-place one rounds it after every token."""
    gguf_path = convert(make_checkpoint(), tmp_path / "m.gguf", "--state-type", state_type)
    prompts, next_tokens = [[1, 17, 230, 41, 9, 3], [1, 5, 99, 7, 12, 40]], [[77], [8]]
    together = decode_together(gguf_path, [prompts, next_tokens])
    alone = runtime.load(gguf_path, n_ctx=128)
    assert alone.state_type == state_type
    for seq in range(2):
        logits = alone.logits(prompts[seq] + next_tokens[seq])
        for step, position in ((0, len(prompts[seq]) - 1), (1, len(prompts[seq]))):
            if state_type == "f32":
                assert np.array_equal(together[step][seq], logits[position]), (seq, step)
            else:
                assert np.allclose(together[step][seq], logits[position], rtol=1e-2, atol=1e-2), (seq, step)


@pytest.mark.parametrize("state_type", ["f32", "f16"])
def test_a_prompt_in_one_batch_ends_where_token_by_token_decoding_does(make_checkpoint, tmp_path, state_type):
    """40 tokens as one batch (an AVX-512 build scans them 16 at a time with d_state 128, patch 0028) and as 40
    single-token batches: the same last logits. On the Zen 4 this was written on they are bitwise equal; the bar
    leaves room for kernels that sum a batch in another order."""
    gguf_path = convert(make_checkpoint(config=small_config(d_state=128)), tmp_path / "m.gguf", "--state-type", state_type)
    tokens = [1 + (37 * i) % 300 for i in range(40)]
    batch = decode_together(gguf_path, [[tokens]])[0][0]
    one_by_one = decode_together(gguf_path, [[[token]] for token in tokens])[-1][0]
    assert np.allclose(batch, one_by_one, rtol=1e-5, atol=1e-5), np.abs(batch - one_by_one).max()


def test_one_sequence_runs_the_fused_in_place_conv_and_scan(make_checkpoint, tmp_path):
    """A lone sequence's layer runs its conv and its scan as one op each, reading and writing the state caches
    in place: no concat, no copy of the new states, no separate bias, silu, skip or gate. Two sequences in one
    batch still take upstream's ops (the other test holds both to the same logits)."""
    gguf_path = convert(make_checkpoint(), tmp_path / "m.gguf")
    n_layer = small_config().n_layer
    alone, together = Counter(), Counter()
    decode_together(gguf_path, [[[1, 17, 230]], [[41]]], ops=alone)  # a prompt, then one token
    decode_together(gguf_path, [[[1, 17, 230], [1, 5, 99]], [[41], [7]]], ops=together)

    assert alone["SSM_CONV_INPLACE"] == alone["SSM_SCAN_INPLACE"] == 2 * n_layer
    assert alone["SSM_CONV"] == alone["SSM_SCAN"] == alone["CONCAT"] == alone["SILU"] == alone["SWIGLU"] == 0
    assert together["SSM_CONV"] == together["SSM_SCAN"] == together["CONCAT"] == together["SWIGLU"] == 2 * n_layer
    assert together["SSM_CONV_INPLACE"] == together["SSM_SCAN_INPLACE"] == 0


def test_greedy_is_deterministic(make_checkpoint, tmp_path):
    gguf_path = convert(make_checkpoint(), tmp_path / "m.gguf")
    model = runtime.load(gguf_path, n_ctx=128)
    first = list(model.generate([1, 5, 9], 20))
    assert first == list(model.generate([1, 5, 9], 20)) and len(first) == 20


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bimamba_edge.run", *map(str, args)], capture_output=True, text=True)


def test_bimamba_run_streams_text_and_reports_speed(make_checkpoint, tmp_path):
    gguf_path = convert(make_checkpoint(), tmp_path / "m.gguf")
    proc = run_cli(gguf_path, "-p", "It is a truth", "-n", "16", "-t", "2", "--ctx", "256")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("It is a truth") and len(proc.stdout) > len("It is a truth")
    assert "Generation: 16 tokens" in proc.stderr and "tokens-per-sec" in proc.stderr and "Peak memory" in proc.stderr


def test_bimamba_run_no_repack_generates_what_the_file_layout_kernels_do(make_checkpoint, tmp_path):
    gguf_path = convert(make_checkpoint(), tmp_path / "m.gguf")
    model = runtime.load(gguf_path, n_ctx=256, n_threads=2, repack=False)
    want = "It is a truth" + model.detokenize(list(model.generate(model.tokenize("It is a truth"), 16)))
    proc = run_cli(gguf_path, "-p", "It is a truth", "-n", "16", "-t", "2", "--ctx", "256", "--no-repack")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip("\n") == want


def test_bimamba_run_refuses_bad_files(make_checkpoint, tmp_path):
    good = convert(make_checkpoint(), tmp_path / "good.gguf")
    data = good.read_bytes()

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) * 2 // 3])

    corrupted = tmp_path / "corrupted.gguf"
    import gguf

    reader = gguf.GGUFReader(good)
    block = next(t for t in reader.tensors if t.name == "blk.0.ssm_in.weight")
    offset = int(block.data_offset)
    corrupted.write_bytes(data[:offset] + b"\xff\xff" + data[offset + 2:])  # first BM1 scale -> NaN

    foreign = tmp_path / "foreign.gguf"
    writer = gguf.GGUFWriter(foreign, arch="llama")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()

    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")

    for path, words in [(truncated, "truncated"), (corrupted, "invalid data"), (foreign, "architecture 'llama'"),
                        (not_gguf, "not a readable GGUF"), (tmp_path / "absent.gguf", "no such file")]:
        proc = run_cli(path, "-p", "x", "-n", "2")
        assert proc.returncode != 0, path
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (path, proc.stderr)
        assert "Traceback" not in proc.stderr
