"""Energy meters: Linux RAPL (powercap sysfs) and macOS powermetrics, or none with the reason why.

Every meter answers the same question: how many joules went by, per component, between two marks on
this process's monotonic clock. The suite marks the moment it spawns a llama-bench process and the
moment that process is reaped, so a window is exactly one benchmark process. An idle baseline (the
meter's reading over a few seconds with nothing of ours running) gives idle watts per component, which
`net` subtracts. Where no counter can be read the meter is a `NullMeter` carrying the reason, and every
energy figure in the report is null with that reason: nothing is ever estimated in a counter's place.

RAPL: `/sys/class/powercap/intel-rapl:N/energy_uj` (one per package; AMD Zen exposes the same zones on
recent kernels), microjoules, wrapping to 0 after `max_energy_range_uj`. Root-only since CVE-2020-8694.
A background thread reads the counters every `poll_s` seconds so that no more than one wrap can happen
between two readings (a wrap needs max_energy_range_uj / power seconds: minutes at least).

powermetrics: `sudo powermetrics --samplers cpu_power -f plist -i MS` writes one plist per sample,
samples separated by a NUL byte. On Apple silicon a sample's `processor` dict holds `cpu_energy`,
`gpu_energy`, `ane_energy` (integer mJ over the sample) and the matching `*_power` (mW averages), and the
sample's top level holds `elapsed_ns`. Samples are back to back, so sample k covers
[end_k - elapsed_k, end_k]; the ends are anchored on the times the samples reached us (see `_anchor`) and
a window takes each sample's energy in proportion to its overlap. Apple calls these values estimates.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Mark:
    t: float                       # time.monotonic()
    cumulative_j: tuple = ()       # RAPL only: joules per zone since the meter started


@dataclass(frozen=True)
class EnergyWindow:
    seconds: float
    joules: dict                   # component -> J

    @property
    def total(self) -> float:
        return sum(self.joules.values())

    def net(self, idle_watts: dict | None) -> "EnergyWindow":
        """This window less the idle draw over the same time (per component; may go slightly negative)."""
        if not idle_watts:
            return self
        return EnergyWindow(self.seconds, {k: v - idle_watts.get(k, 0.0) * self.seconds for k, v in self.joules.items()})


class MeterUnavailable(Exception):
    """Raised by a meter's window query when it cannot cover that window; the message is the reason."""


class NullMeter:
    kind = None

    def __init__(self, reason: str):
        self.reason = reason

    available = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def mark(self) -> Mark:
        return Mark(time.monotonic())

    def energy(self, a: Mark, b: Mark) -> EnergyWindow:
        raise MeterUnavailable(self.reason)

    def describe(self) -> dict:
        return {"kind": None, "available": False, "reason": self.reason}


# -- Linux RAPL ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RaplZone:
    path: Path
    name: str
    max_range_uj: int


def wrapped_delta_uj(previous: int, current: int, max_range_uj: int) -> int:
    """Microjoules between two readings of a counter that wraps to 0 after reaching max_range_uj.

    A reading below the previous one means exactly one wrap (the poll interval makes two impossible):
    the counter ran from `previous` up to the top of its range, then from 0 to `current`.
    """
    if current >= previous:
        return current - previous
    return (max_range_uj - previous) + current


def discover_rapl(root: Path = POWERCAP) -> tuple[list[RaplZone], str | None]:
    """Top-level package zones (intel-rapl:N, not the intel-rapl:N:M subzones), or [] and the reason."""
    if not root.is_dir():
        return [], f"no {root} on this machine (no RAPL counters exposed; usual in VMs and containers)"
    candidates = sorted(p for p in root.iterdir() if p.name.startswith("intel-rapl:") and p.name.count(":") == 1)
    if not candidates:
        return [], f"no RAPL package zones (intel-rapl:N) under {root}"
    zones = []
    for zone in candidates:
        try:
            (zone / "energy_uj").read_text()
            max_range = int((zone / "max_energy_range_uj").read_text())
            name = (zone / "name").read_text().strip() if (zone / "name").exists() else zone.name
        except PermissionError:
            return [], (f"permission denied reading {zone / 'energy_uj'} (root needed since CVE-2020-8694: "
                        f"run as root or make energy_uj readable)")
        except (OSError, ValueError) as e:
            return [], f"cannot read RAPL zone {zone}: {e}"
        zones.append(RaplZone(zone, f"{name} ({zone.name})", max_range))
    return zones, None


class RaplMeter:
    kind = "rapl"
    available = True

    def __init__(self, zones: list[RaplZone], poll_s: float = 1.0):
        self.zones = zones
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._last = self._read()
        self._cum_uj = [0] * len(zones)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> list[int]:
        return [int((z.path / "energy_uj").read_text()) for z in self.zones]

    def _update(self) -> tuple:
        with self._lock:
            now = self._read()
            for i, zone in enumerate(self.zones):
                self._cum_uj[i] += wrapped_delta_uj(self._last[i], now[i], zone.max_range_uj)
            self._last = now
            return tuple(uj / 1e6 for uj in self._cum_uj)

    def start(self) -> None:
        def poll():
            while not self._stop.wait(self.poll_s):
                self._update()
        self._thread = threading.Thread(target=poll, name="rapl-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def mark(self) -> Mark:
        cum = self._update()
        return Mark(time.monotonic(), cum)

    def energy(self, a: Mark, b: Mark) -> EnergyWindow:
        joules = {z.name: cb - ca for z, ca, cb in zip(self.zones, a.cumulative_j, b.cumulative_j)}
        return EnergyWindow(b.t - a.t, joules)

    def describe(self) -> dict:
        return {"kind": self.kind, "available": True, "reason": None,
                "zones": [{"name": z.name, "max_energy_range_uj": z.max_range_uj} for z in self.zones],
                "note": "CPU package energy (RAPL); DRAM and the rest of the machine are not included"}


# -- macOS powermetrics --------------------------------------------------------------------------------------

PM_COMPONENTS = ("cpu", "gpu", "ane")


@dataclass(frozen=True)
class PMSample:
    elapsed_s: float
    joules: dict            # cpu / gpu / ane
    arrived: float | None   # time.monotonic() when the sample reached us (None when parsed from a file)


def parse_pm_sample(blob: bytes) -> PMSample | None:
    """One powermetrics plist sample; None for an empty or non-sample piece (e.g. the stream's tail)."""
    blob = blob.strip(b"\0\r\n\t ")
    if not blob:
        return None
    data = plistlib.loads(blob)
    proc = data.get("processor")
    if "elapsed_ns" not in data or not isinstance(proc, dict):
        return None
    elapsed = data["elapsed_ns"] / 1e9
    joules = {}
    for comp in PM_COMPONENTS:
        if f"{comp}_energy" in proc:
            joules[comp] = proc[f"{comp}_energy"] / 1e3          # mJ over the sample
        elif f"{comp}_power" in proc:
            joules[comp] = proc[f"{comp}_power"] / 1e3 * elapsed  # mW average over the sample (older macOS)
    if not joules:
        return None
    return PMSample(elapsed, joules, None)


def split_pm_stream(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete sample blobs in `buffer`, and the incomplete rest to keep for the next read.

    Samples are NUL-separated; a piece that already ends in `</plist>` is complete even before its NUL.
    """
    pieces = buffer.split(b"\0")
    rest = pieces.pop()
    if rest.rstrip().endswith(b"</plist>"):
        pieces.append(rest)
        rest = b""
    return [p for p in pieces if p.strip()], rest


def parse_pm_stream(data: bytes) -> list[PMSample]:
    blobs, rest = split_pm_stream(data)
    return [s for s in map(parse_pm_sample, blobs) if s is not None]


def sample_intervals(samples: list[PMSample]) -> list[tuple[float, float]]:
    """[start, end] of each (back-to-back) sample on the monotonic clock.

    A sample is written as soon as it ends, so its arrival time is its end plus a delay that can only be
    positive. With ends chained through the exact elapsed_ns, the last sample's end is at most
    arrival_k + (elapsed of the samples after k) for every k: the smallest of these bounds is the anchor.
    """
    if not samples:
        return []
    anchor, after = float("inf"), 0.0
    for s in reversed(samples):
        if s.arrived is not None:
            anchor = min(anchor, s.arrived + after)
        after += s.elapsed_s
    intervals, end = [], anchor
    for s in reversed(samples):
        intervals.append((end - s.elapsed_s, end))
        end -= s.elapsed_s
    return intervals[::-1]


def window_joules(samples: list[PMSample], intervals: list[tuple[float, float]], a: float, b: float) -> dict:
    """Energy per component inside [a, b], each sample counted in proportion to its overlap with it."""
    total = {c: 0.0 for c in PM_COMPONENTS if any(c in s.joules for s in samples)}
    for s, (start, end) in zip(samples, intervals):
        overlap = min(end, b) - max(start, a)
        if overlap > 0 and end > start:
            for comp, j in s.joules.items():
                total[comp] += j * overlap / (end - start)
    return total


def _root_or_sudo() -> str | None:
    if os.geteuid() == 0:
        return None
    if shutil.which("sudo") is None:
        return "powermetrics needs root and sudo is not available"
    ok = subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0
    return None if ok else "powermetrics needs root: run `sudo -v` first (or the suite as root)"


def probe_powermetrics() -> str | None:
    """None when powermetrics can run here, else the reason it cannot."""
    if sys.platform != "darwin":
        return "powermetrics exists only on macOS"
    if shutil.which("powermetrics") is None and not Path("/usr/bin/powermetrics").exists():
        return "powermetrics not found"
    return _root_or_sudo()


class PowermetricsMeter:
    kind = "powermetrics"
    available = True

    def __init__(self, interval_ms: int = 100, command: list[str] | None = None):
        self.interval_ms = interval_ms
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        self.command = command or [*sudo, "powermetrics", "--samplers", "cpu_power", "-f", "plist",
                                   "-i", str(interval_ms)]
        self.samples: list[PMSample] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self, ready_timeout_s: float = 10.0) -> None:
        """Starts sampling and waits for the first sample (windows must begin after it starts)."""
        self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._reader, name="powermetrics", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + ready_timeout_s
        while not self.samples:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise MeterUnavailable(f"powermetrics gave no sample within {ready_timeout_s:.0f} s "
                                       f"({' '.join(self.command)})")
            time.sleep(0.05)

    def _reader(self) -> None:
        fd, buffer = self._proc.stdout.fileno(), b""
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            now = time.monotonic()
            blobs, buffer = split_pm_stream(buffer + chunk)
            for blob in blobs:
                try:
                    sample = parse_pm_sample(blob)
                except Exception:  # a damaged sample is dropped; coverage checks catch the hole
                    continue
                if sample is not None:
                    with self._lock:
                        self.samples.append(PMSample(sample.elapsed_s, sample.joules, now))

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread:
            self._thread.join(5)

    def mark(self) -> Mark:
        return Mark(time.monotonic())

    def energy(self, a: Mark, b: Mark, timeout_s: float | None = None) -> EnergyWindow:
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 10 * self.interval_ms / 1e3 + 2)
        while True:
            with self._lock:
                samples = list(self.samples)
            intervals = sample_intervals(samples)
            if intervals and intervals[0][0] > a.t:
                raise MeterUnavailable("powermetrics started sampling after this window began")
            if intervals and intervals[-1][1] >= b.t:
                return EnergyWindow(b.t - a.t, window_joules(samples, intervals, a.t, b.t))
            if time.monotonic() > deadline or (self._proc and self._proc.poll() is not None):
                raise MeterUnavailable("powermetrics delivered no sample covering the end of this window")
            time.sleep(self.interval_ms / 4e3)

    def describe(self) -> dict:
        return {"kind": self.kind, "available": True, "reason": None, "interval_ms": self.interval_ms,
                "command": self.command,
                "note": "processor cpu_energy / gpu_energy / ane_energy (mJ per sample, Apple's estimates)"}


# -- choosing one --------------------------------------------------------------------------------------------

def detect_meter(choice: str = "auto", powercap_root: Path = POWERCAP):
    """The meter for this machine: `auto`, `rapl`, `powermetrics` or `none`. Never raises: a meter that
    cannot work comes back as a NullMeter holding the reason."""
    if choice == "none":
        return NullMeter("energy measurement turned off (--energy none)")
    if choice == "rapl" or (choice == "auto" and sys.platform.startswith("linux")):
        zones, reason = discover_rapl(powercap_root)
        return RaplMeter(zones) if zones else NullMeter(reason)
    if choice == "powermetrics" or (choice == "auto" and sys.platform == "darwin"):
        reason = probe_powermetrics()
        return PowermetricsMeter() if reason is None else NullMeter(reason)
    return NullMeter(f"no energy counter supported on {sys.platform}")


def idle_watts(meter, seconds: float) -> dict | None:
    """Mean watts per component over `seconds` of doing nothing (None where the meter cannot say)."""
    if not meter.available or seconds <= 0:
        return None
    a = meter.mark()
    time.sleep(seconds)
    b = meter.mark()
    try:
        window = meter.energy(a, b)
    except MeterUnavailable:
        return None
    return {k: v / window.seconds for k, v in window.joules.items()}
