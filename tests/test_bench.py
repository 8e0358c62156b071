"""bimamba-bench: the energy parsers (a recorded powermetrics capture, RAPL counter wraparound), energy as
null-with-reason where no counter exists, the GGUF header reader and roofline, and the results schema on a
real end-to-end run of a tiny fixture.

The end-to-end tests drive the patched llama-bench (`bimamba-build`, run by `make test`); without the runtime
they fail, never skip.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bimamba_edge.bench import energy as en
from bimamba_edge.bench.cli import FIXTURE_SHAPES
from bimamba_edge.bench.cli import main as bench_main
from bimamba_edge.bench.gguf_header import read_header
from bimamba_edge.bench.models import VARIANTS, identify, scan_models
from bimamba_edge.bench.roofline import decode_traffic
from bimamba_edge.bench.schema import SCHEMA, SchemaError, validate
from bimamba_edge.bench.suite import energy_per_token
from bimamba_edge.testing import small_config

DATA = Path(__file__).parent / "data"
# Recorded on an Apple M4 (macOS build 25G229), published in npwa/Evol_inference at
# tests/fixtures/m4_real/powermetrics.plist; trimmed as tests/data/README.md says, values unchanged.
RECORDED_PM = DATA / "powermetrics_m4_3samples.plist"
RECORDED_ELAPSED_NS = [504962500, 513717958, 510565375]
RECORDED_CPU_MJ = [12, 77, 46]
RECORDED_GPU_MJ = [4, 2, 5]
RECORDED_CPU_MW = [23.7641, 149.888, 90.0962]
INTEL_MAX_RANGE_UJ = 262143328850  # Intel's usual max_energy_range_uj (the RAPL values below are synthetic)


# -- powermetrics ------------------------------------------------------------------------------------------

def test_recorded_powermetrics_capture_parses_per_component():
    samples = en.parse_pm_stream(RECORDED_PM.read_bytes())
    assert [round(s.elapsed_s * 1e9) for s in samples] == RECORDED_ELAPSED_NS
    assert [s.joules["cpu"] * 1e3 for s in samples] == pytest.approx(RECORDED_CPU_MJ)
    assert [s.joules["gpu"] * 1e3 for s in samples] == pytest.approx(RECORDED_GPU_MJ)
    assert [s.joules["ane"] for s in samples] == [0, 0, 0]
    # the integer mJ agree with the sample's mW average over elapsed_ns (to powermetrics' rounding)
    for s, mw in zip(samples, RECORDED_CPU_MW):
        assert s.joules["cpu"] == pytest.approx(mw / 1e3 * s.elapsed_s, abs=0.6e-3)


@pytest.mark.parametrize("seed", range(5))
def test_powermetrics_stream_split_at_any_byte(seed):
    raw = RECORDED_PM.read_bytes() + b"\0<?xml version"  # the start of a fourth sample, not yet complete
    rng = random.Random(seed)
    buffer, blobs, pos = b"", [], 0
    while pos < len(raw):
        step = rng.randint(1, 5000)
        done, buffer = en.split_pm_stream(buffer + raw[pos:pos + step])
        blobs += done
        pos += step
    assert buffer == b"<?xml version"
    parsed = [en.parse_pm_sample(b) for b in blobs]
    assert [round(s.elapsed_s * 1e9) for s in parsed] == RECORDED_ELAPSED_NS


def _arrived(samples, arrivals):
    return [en.PMSample(s.elapsed_s, s.joules, t) for s, t in zip(samples, arrivals)]


def test_powermetrics_window_alignment_and_proration():
    samples = en.parse_pm_stream(RECORDED_PM.read_bytes())
    e = [ns / 1e9 for ns in RECORDED_ELAPSED_NS]
    ends = [100 + e[0], 100 + e[0] + e[1], 100 + sum(e)]
    # the second sample reached us 0.3 s late: the anchor must ignore that delay
    intervals = en.sample_intervals(_arrived(samples, [ends[0] + 0.002, ends[1] + 0.3, ends[2] + 0.001]))
    assert intervals[-1][1] == pytest.approx(ends[2] - 0.0, abs=0.0021)
    for (start, end), length in zip(intervals, e):
        assert end - start == pytest.approx(length)
    # a window from the middle of sample 2 to the end of sample 3
    a = intervals[1][0] + e[1] / 2
    joules = en.window_joules(samples, intervals, a, intervals[2][1])
    assert joules["cpu"] == pytest.approx((77 / 2 + 46) / 1e3)
    assert joules["gpu"] == pytest.approx((2 / 2 + 5) / 1e3)
    # a window inside one sample takes its share of that sample only
    joules = en.window_joules(samples, intervals, intervals[0][0] + 0.1, intervals[0][0] + 0.2)
    assert joules["cpu"] == pytest.approx(12e-3 * 0.1 / e[0])


def test_idle_baseline_is_subtracted_per_component():
    window = en.EnergyWindow(2.0, {"cpu": 5.0, "gpu": 1.0, "ane": 0.0})
    net = window.net({"cpu": 0.5, "gpu": 0.25, "ane": 0.0})
    assert net.joules == {"cpu": 4.0, "gpu": 0.5, "ane": 0.0}
    assert window.net(None) is window


def test_powermetrics_meter_reads_a_live_stream(tmp_path):
    """The meter's reader thread and window query, against a stand-in for powermetrics that replays the
    recorded samples in real time (each written when its elapsed_ns is over, NUL-separated)."""
    fake = tmp_path / "fake_powermetrics.py"
    fake.write_text(textwrap.dedent(f"""
        import sys, time
        blobs = open({str(RECORDED_PM)!r}, "rb").read().split(b"\\0")
        for blob, ns in zip(blobs, {RECORDED_ELAPSED_NS!r}):
            time.sleep(ns / 1e9)
            sys.stdout.buffer.write(blob + b"\\0")
            sys.stdout.buffer.flush()
        time.sleep(5)
    """))
    meter = en.PowermetricsMeter(interval_ms=500, command=[sys.executable, str(fake)])
    meter.start(ready_timeout_s=10)
    try:
        a = meter.mark()
        time.sleep(0.6)
        b = meter.mark()
        window = meter.energy(a, b, timeout_s=5)
        with meter._lock:
            samples = list(meter.samples)
    finally:
        meter.stop()
    assert len(samples) == 3 and window.seconds == pytest.approx(0.6, abs=0.05)
    expected = en.window_joules(samples, en.sample_intervals(samples), a.t, b.t)
    assert window.joules == pytest.approx(expected)
    assert 0.077 * 0.5 < window.joules["cpu"] < 0.077 + 0.046
    with pytest.raises(en.MeterUnavailable):  # before the first sample began: not covered
        meter.energy(en.Mark(a.t - 10), b, timeout_s=0)


# -- RAPL ---------------------------------------------------------------------------------------------------

def _zone(root: Path, name: str, label: str, uj: int, max_range: int = INTEL_MAX_RANGE_UJ) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone


def test_wrapped_delta():
    assert en.wrapped_delta_uj(1_000, 5_000, INTEL_MAX_RANGE_UJ) == 4_000
    assert en.wrapped_delta_uj(INTEL_MAX_RANGE_UJ - 500, 700, INTEL_MAX_RANGE_UJ) == 1_200
    assert en.wrapped_delta_uj(42, 42, INTEL_MAX_RANGE_UJ) == 0


def test_rapl_meter_sums_packages_across_a_wraparound(tmp_path):
    """Synthetic powercap tree (no recorded RAPL trace was found): two packages, one subzone to ignore."""
    root = tmp_path / "powercap"
    pkg0 = _zone(root, "intel-rapl:0", "package-0", INTEL_MAX_RANGE_UJ - 328_850)
    _zone(root, "intel-rapl:0:0", "core", 123)            # a subzone: inside package-0, never added again
    pkg1 = _zone(root, "intel-rapl:1", "package-1", 5_000_000)
    zones, reason = en.discover_rapl(root)
    assert reason is None and [z.name for z in zones] == ["package-0 (intel-rapl:0)", "package-1 (intel-rapl:1)"]
    meter = en.RaplMeter(zones)
    a = meter.mark()
    (pkg0 / "energy_uj").write_text("1000000\n")           # wrapped: 328_850 up to the top, then 1_000_000
    (pkg1 / "energy_uj").write_text("7500000\n")
    mid = meter.mark()
    (pkg0 / "energy_uj").write_text("3000000\n")
    b = meter.mark()
    assert meter.energy(a, mid).joules == pytest.approx({"package-0 (intel-rapl:0)": 1.32885,
                                                         "package-1 (intel-rapl:1)": 2.5})
    assert meter.energy(a, b).total == pytest.approx(1.32885 + 2.0 + 2.5)
    assert meter.describe()["available"] is True


def test_rapl_background_polling_catches_every_wrap(tmp_path):
    root = tmp_path / "powercap"
    zone = _zone(root, "intel-rapl:0", "package-0", 900, max_range=1_000)
    meter = en.RaplMeter(en.discover_rapl(root)[0])
    a = meter.mark()
    for value in (300, 800, 100, 600):                      # two wraps, each seen by a poll
        (zone / "energy_uj").write_text(f"{value}\n")
        meter._update()
    b = meter.mark()
    assert meter.energy(a, b).total == pytest.approx((100 + 300 + 500 + 300 + 500) / 1e6)


def test_rapl_unreadable_counter_gives_the_reason(tmp_path, monkeypatch):
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", "package-0", 1)
    real_read = Path.read_text

    def deny(self, *args, **kwargs):  # tests run as root, so a chmod would not stop the read
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", deny)
    meter = en.detect_meter("rapl", powercap_root=root)
    assert isinstance(meter, en.NullMeter)
    assert "permission denied" in meter.reason and "CVE-2020-8694" in meter.reason


def test_no_counter_means_null_with_reason(tmp_path):
    meter = en.detect_meter("rapl", powercap_root=tmp_path / "nothing")
    assert not meter.available and meter.reason.startswith(f"no {tmp_path / 'nothing'} on this machine")
    assert en.discover_rapl(tmp_path)[1] == f"no RAPL package zones (intel-rapl:N) under {tmp_path}"
    assert en.idle_watts(meter, 1.0) is None
    with pytest.raises(en.MeterUnavailable, match="no RAPL counters"):
        meter.energy(meter.mark(), meter.mark())
    row = energy_per_token(meter, None, None, None)
    assert row["joules_per_token"] is None and row["mean_power_w"] is None and row["reason"] == meter.reason
    if sys.platform != "darwin":
        assert en.detect_meter("powermetrics").reason == "powermetrics exists only on macOS"


def test_this_machine_reports_energy_or_says_why():
    meter = en.detect_meter("auto")
    assert meter.available or meter.reason
    if not Path("/sys/class/powercap").exists() and sys.platform.startswith("linux"):
        assert "no /sys/class/powercap" in meter.reason


# -- GGUF header, roofline --------------------------------------------------------------------------------

def _convert(ckpt: Path, out: Path, *args) -> Path:
    from conftest import run_convert

    proc = run_convert(ckpt, out, *args)
    assert proc.returncode == 0, proc.stderr
    return out


def test_header_reader_agrees_with_gguf_py(make_checkpoint, tmp_path):
    import gguf  # the patched gguf-py: knows BM1

    path = _convert(make_checkpoint(), tmp_path / "m.gguf")
    ours, theirs = read_header(path), gguf.GGUFReader(path)
    assert ours.arch == "bimamba2" and len(ours.tensors) == len(theirs.tensors)
    for t in theirs.tensors:
        mine = ours.tensors[t.name]
        assert mine.type_id == int(t.tensor_type) and mine.offset == t.data_offset
        assert 0 <= mine.nbytes - t.n_bytes < 32  # up to the alignment padding
        assert mine.n_elements == t.n_elements


def test_decode_traffic_counts_weights_head_and_state(make_checkpoint, tmp_path):
    cfg = small_config()
    path = _convert(make_checkpoint(config=cfg), tmp_path / "m.gguf", "--head-type", "q8_0")
    header = read_header(path)
    traffic = decode_traffic(header)
    embd = header.tensors["token_embd.weight"]
    assert "output.weight" not in header.tensors and traffic.head == embd.nbytes and traffic.embedding_row == 0
    assert traffic.matrices == sum(t.nbytes for t in header.tensors.values()) - embd.nbytes
    assert traffic.ssm_state == cfg.n_layer * cfg.nheads * cfg.headdim * cfg.d_state * 4 * 2
    conv_dim = cfg.d_inner + 2 * cfg.ngroups * cfg.d_state
    assert traffic.conv_state == cfg.n_layer * (cfg.d_conv - 1) * conv_dim * 4 * 2
    assert identify(path).id == "bm1-q8_0"


def test_an_f16_state_file_moves_half_the_ssm_state(make_checkpoint, tmp_path):
    directory = make_checkpoint()
    f32 = decode_traffic(read_header(_convert(directory, tmp_path / "a.gguf", "--head-type", "q6_K")))
    path = _convert(directory, tmp_path / "b.gguf", "--head-type", "q6_K", "--state-type", "f16")
    f16 = decode_traffic(read_header(path))
    assert f16.ssm_state * 2 == f32.ssm_state and f16.conv_state == f32.conv_state
    assert identify(path).id == "bm1-q6_K-f16state" and identify(path).label == VARIANTS["bm1-q6_K-f16state"].label


# -- schema and a real end-to-end run -----------------------------------------------------------------------

# no waiting for a quiet machine and no reruns: the figures of a tiny run are not the point here
TINY_RUN = ["--threads", "1", "-p", "8", "-n", "4", "-r", "1", "--idle-seconds", "0", "--bandwidth-mib", "32",
            "--bandwidth-seconds", "0.05", "--quiet-wait", "0", "--max-foreign", "1000"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real run: tiny fixture -> BM1 (Q6_K head) and stock Q1_0 -> the patched llama-bench -> results."""
    from bimamba_edge.testing import FixtureSpec, write_checkpoint

    root = tmp_path_factory.mktemp("bench")
    ckpt = write_checkpoint(root / "ckpt", FixtureSpec(small_config()))
    out = root / "out"
    rc = bench_main([str(ckpt), "--types", "bm1-q6_K,q1_0", "--depths", "16,32", "--long-context-types", "bm1-q6_K",
                     "--cache", str(root / "cache"), "--out", str(out), *TINY_RUN])
    assert rc == 0
    return root, json.loads((out / "results.json").read_text())


def test_end_to_end_results_follow_the_schema(tiny_run):
    root, doc = tiny_run
    validate(doc)
    assert doc["schema"] == SCHEMA
    assert [m["id"] for m in doc["models"]] == ["bm1-q6_K", "q1_0"]
    assert [(m["arch"], m["matrix_type"], m["head_type"]) for m in doc["models"]] == [
        ("bimamba2", "BM1", "Q6_K"), ("mamba2", "Q1_0", "Q6_K")]
    assert [(r["model"], r["test"]) for r in doc["results"]] == [
        ("bm1-q6_K", "pp8"), ("bm1-q6_K", "tg4"), ("q1_0", "pp8"), ("q1_0", "tg4")]
    for row in doc["results"]:
        assert row["tokens_per_s"]["mean"] > 0 and row["peak_rss_bytes"] > 1e6
        assert row["tokens_processed"] == (16 if row["kind"] == "prefill" else 5)  # warm-up + 1 repetition
        assert (row["roofline"] is None) == (row["kind"] == "prefill")
        if not doc["energy_meter"]["available"]:
            assert row["energy"]["joules_per_token"] is None and row["energy"]["reason"]
    assert [(r["model"], r["depth"]) for r in doc["long_context"]] == [("bm1-q6_K", 16), ("bm1-q6_K", 32)]
    # the child's own peak, not this (much larger) test process's
    assert all(m["rss"]["no_mmap_peak_bytes"] < 200e6 for m in doc["models"])
    assert doc["build"]["runtime_key"] and doc["build"]["build_commit"]
    out = root / "out"
    assert (out / "results.md").read_text().count("\n| ") >= 4
    assert doc["plots"]["files"] or doc["plots"]["skipped"]


def test_schema_rejects_what_a_reader_cannot_trust(tiny_run):
    _, doc = tiny_run

    def broken(change):
        bad = copy.deepcopy(doc)
        change(bad)
        with pytest.raises(SchemaError):
            validate(bad)

    broken(lambda d: d.update(schema="bimamba-bench/0"))
    broken(lambda d: d["results"][1]["energy"].update(joules_per_token=None, reason=None))   # null, no reason
    broken(lambda d: d["results"][1]["energy"].update(joules_per_token=0.5, reason="no counter"))
    broken(lambda d: d["results"][0]["tokens_per_s"].update(reps=3))                        # reps vs samples
    broken(lambda d: d["results"][0].update(model="nope"))
    broken(lambda d: d["models"][0].pop("rss"))
    broken(lambda d: d["energy_meter"].update(available=False, reason=None))


def test_prebuilt_models_and_explicit_llama_bench(tiny_run, tmp_path):
    """What the lead runs on a machine with only the files and a llama-bench binary."""
    from bimamba_edge.build import current_runtime

    root, doc = tiny_run
    models_dir = Path(doc["source"]["models_dir"])
    assert {m.id for m in scan_models(models_dir)} == {"bm1-q6_K", "f16", "q1_0"}
    bench = current_runtime().binary("llama-bench")
    out = tmp_path / "out"
    rc = bench_main(["--models", str(models_dir), "--llama-bench", str(bench), "--types", "q1_0,bm1-q6_K",
                     "--depths", "none", "--no-plots", "--out", str(out), "--cache", str(tmp_path), *TINY_RUN])
    assert rc == 0
    result = json.loads((out / "results.json").read_text())
    validate(result)
    assert [m["id"] for m in result["models"]] == ["q1_0", "bm1-q6_K"] and result["long_context"] == []
    assert result["plots"]["skipped"].startswith("turned off")


def test_bad_inputs_are_one_clear_error(tmp_path, capsys):
    rc = bench_main(["--models", str(tmp_path), "--llama-bench", str(tmp_path / "missing")])
    assert rc == 1 and "no llama-bench executable" in capsys.readouterr().err
    from bimamba_edge.build import current_runtime

    rc = bench_main(["--models", str(tmp_path), "--llama-bench", str(current_runtime().binary("llama-bench"))])
    assert rc == 1 and "no .gguf files" in capsys.readouterr().err


def test_fixture_shapes_are_the_paper_shapes():
    from bimamba_edge.checkpoint import PAPER_SHAPES

    assert FIXTURE_SHAPES == tuple(PAPER_SHAPES)
