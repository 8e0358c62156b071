"""The results directory: results.json (schema bimamba-bench/1), results.md and PNG plots.

Plots need matplotlib (`pip install 'bimamba-edge[bench]'`); without it the JSON and the table are still
written and the report says the plots were skipped and why.
"""

from __future__ import annotations

import json
from pathlib import Path

from .schema import validate


def _mb(n: int | float | None) -> str:
    return "–" if n is None else f"{n / 1e6:,.0f}"


def _row_for(doc: dict, model: str, threads: int, kind: str) -> dict | None:
    return next((r for r in doc["results"] if r["model"] == model and r["threads"] == threads and r["kind"] == kind),
                None)


def _tps(row: dict | None) -> str:
    if row is None:
        return "–"
    t = row["tokens_per_s"]
    return f"{t['mean']:.1f} ± {t['stddev']:.1f}"


def markdown(doc: dict) -> str:
    m, s = doc["machine"], doc["settings"]
    energy = doc["energy_meter"]
    lines = [f"# bimamba-bench results ({doc['created'][:10]})", "",
             f"- CPU: {m['cpu']} — {m['cores_logical']} logical cores"
             + (f" ({m['cores_physical']} physical)" if m.get("cores_physical") else "")
             + f", {m['arch']}, ISA: {' '.join(m['isa']) or 'n/a'}",
             f"- OS: {m['os']}; memory {m['memory_bytes'] / 2**30:.0f} GiB" if m.get("memory_bytes") else f"- OS: {m['os']}",
             f"- llama-bench: {doc['build']['llama_bench']} ({doc['build']['llama_bench_version']}"
             + (f", runtime {doc['build']['runtime_key']}" if doc["build"].get("runtime_key") else "") + ")",
             f"- tests: pp{s['n_prompt']} / tg{s['n_gen']}, {s['reps']} repetitions (mean ± stddev, llama-bench), "
             f"threads {', '.join(map(str, s['threads']))}; suite wall time {doc['wall_s'] / 60:.1f} min",
             "- energy: " + (f"{energy['kind']}, idle {sum((energy.get('idle_watts') or {}).values()):.2f} W subtracted"
                             if energy["available"] else f"not measured — {energy['reason']}")]
    if doc.get("bandwidth"):
        b = doc["bandwidth"]
        lines.append("- read bandwidth: " + ", ".join(f"{t} threads {v['best_gbps']:.1f} GB/s"
                                                     for t, v in b["by_threads"].items()) + f" ({b['method']})")
    lines += ["", "| model | file MB | threads | pp t/s | tg t/s | decode MB/token | tg ceiling t/s | % of roofline "
              "| peak RSS MB (tg, mmap) | CPU s/token (tg) | J/token (tg) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for threads in s["threads"]:
        for model in doc["models"]:
            pp, tg = _row_for(doc, model["id"], threads, "prefill"), _row_for(doc, model["id"], threads, "decode")
            roof = tg["roofline"] if tg else None
            cells = [model["label"], _mb(model["file_bytes"]), str(threads), _tps(pp), _tps(tg),
                     f"{model['decode_bytes_per_token']['total'] / 1e6:.0f}",
                     f"{roof['ceiling_tps']:.1f}" if roof else "–",
                     f"{100 * roof['fraction']:.0f} %" if roof else "–",
                     _mb(tg["peak_rss_bytes"]) if tg else "–",
                     f"{tg['cpu_s_per_token']:.4f}" if tg and tg["cpu_s_per_token"] is not None else "–",
                     "n/a" if not tg or tg["energy"]["joules_per_token"] is None
                     else f"{tg['energy']['joules_per_token']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Peak RSS with and without mmap (same work: "
              f"{s['rss_probe']}), and the load process (load + one decoded token):", "",
              "| model | arch | matrices | head | RSS mmap MB | RSS no-mmap MB | load s | load RSS MB |",
              "|---|---|---|---|---:|---:|---:|---:|"]
    for model in doc["models"]:
        lines.append(f"| {model['label']} | {model['arch']} | {model['matrix_type']} | {model['head_type']} | "
                     f"{_mb(model['rss']['mmap_peak_bytes'])} | {_mb(model['rss']['no_mmap_peak_bytes'])} | "
                     f"{model['load']['wall_s']:.1f} | {_mb(model['load']['peak_rss_bytes'])} |")
    if doc["long_context"]:
        depths = s["depths"]
        lines += ["", f"Long context: tg{s['n_gen']} t/s and peak RSS MB after a prefilled depth "
                      f"({s['long_context_threads']} threads):", "",
                  "| model | " + " | ".join(f"d={d}" for d in depths) + " |",
                  "|---|" + "---:|" * len(depths)]
        for model in doc["models"]:
            rows = {r["depth"]: r for r in doc["long_context"] if r["model"] == model["id"]}
            if rows:
                cells = [f"{rows[d]['tokens_per_s']['mean']:.1f} t/s, {_mb(rows[d]['peak_rss_bytes'])} MB"
                         if d in rows else "–" for d in depths]
                lines.append(f"| {model['label']} | " + " | ".join(cells) + " |")
    lines += ["", "Decode MB/token: every matrix and the head read once, plus the SSM state (f32, or f16 in an "
                  "F16-state file) and the f32 conv state read and written once (BM1's bimamba2 graph updates both "
                  "in place; stock mamba2 graphs also copy them after the conv and the scan), from the GGUF's tensor "
                  "sizes. Ceiling = read bandwidth at that thread count / MB per token.",
              f"CPU s/token: {s['cpu_s_per_token']}."]
    if energy["available"]:
        lines.append(f"Energy: {s['energy_per_token']}.")
    plots = doc["plots"]
    if plots["files"]:
        lines += [""] + [f"![{Path(f).stem}]({Path(f).name})" for f in plots["files"]]
    if plots["skipped"]:
        lines += ["", f"Plots skipped: {plots['skipped']}."]
    for note in doc["notes"]:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def draw_plots(doc: dict, out: Path) -> tuple[list[str], str | None]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return [], f"matplotlib is not installed ({e}); pip install 'bimamba-edge[bench]'"
    files = []
    labels = {m["id"]: m["label"] for m in doc["models"]}
    ids = [m["id"] for m in doc["models"]]
    threads = doc["settings"]["threads"]

    # tokens/s per type: prefill and decode, one bar per thread count
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / len(threads)
    for ax, kind in zip(axes, ("prefill", "decode")):
        for k, t in enumerate(threads):
            rows = [_row_for(doc, i, t, kind) for i in ids]
            means = [r["tokens_per_s"]["mean"] if r else 0 for r in rows]
            errs = [r["tokens_per_s"]["stddev"] if r else 0 for r in rows]
            ax.bar([x + k * width for x in range(len(ids))], means, width, yerr=errs, capsize=2, label=f"{t} threads")
        ax.set_xticks([x + width * (len(threads) - 1) / 2 for x in range(len(ids))])
        ax.set_xticklabels([labels[i] for i in ids], rotation=35, ha="right", fontsize=8)
        test = f"pp{doc['settings']['n_prompt']}" if kind == "prefill" else f"tg{doc['settings']['n_gen']}"
        ax.set_title(f"{kind} ({test})")
        ax.set_ylabel("tokens/s")
        ax.legend(fontsize=8)
    fig.suptitle(f"{doc['machine']['cpu']} — {doc['created'][:10]}", fontsize=9)
    fig.tight_layout()
    files.append(_save(fig, out / "tps_by_type.png", plt))

    # tokens/s against threads, and the decode roofline fraction
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for i in ids:
        for ax, kind in zip(axes[:2], ("prefill", "decode")):
            pts = [(t, _row_for(doc, i, t, kind)) for t in threads]
            pts = [(t, r) for t, r in pts if r]
            ax.errorbar([t for t, _ in pts], [r["tokens_per_s"]["mean"] for _, r in pts],
                        yerr=[r["tokens_per_s"]["stddev"] for _, r in pts], marker="o", capsize=2, label=labels[i])
        pts = [(t, _row_for(doc, i, t, "decode")) for t in threads]
        axes[2].plot([t for t, r in pts if r], [100 * r["roofline"]["fraction"] for t, r in pts if r], marker="o",
                     label=labels[i])
    for ax, title in zip(axes, ("prefill t/s", "decode t/s", "decode: % of bandwidth roofline")):
        ax.set_xlabel("threads")
        ax.set_title(title)
        ax.set_xticks(threads)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    files.append(_save(fig, out / "tps_vs_threads.png", plt))

    if doc["long_context"]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for i in ids:
            rows = sorted((r for r in doc["long_context"] if r["model"] == i), key=lambda r: r["depth"])
            if not rows:
                continue
            depths = [r["depth"] for r in rows]
            axes[0].plot(depths, [r["peak_rss_bytes"] / 1e6 for r in rows], marker="o", label=labels[i])
            axes[1].plot(depths, [r["tokens_per_s"]["mean"] for r in rows], marker="o", label=labels[i])
        for ax, title in zip(axes, ("peak RSS (MB) vs context", "decode t/s vs context")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context (tokens prefilled before decoding)")
            ax.set_title(title)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"constant state: {doc['settings']['long_context_threads']} threads", fontsize=9)
        fig.tight_layout()
        files.append(_save(fig, out / "rss_vs_context.png", plt))
    return files, None


def _save(fig, path: Path, plt) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def write_results(doc: dict, out: Path, plots: bool = True) -> dict:
    """Draws the plots (unless told not to), then writes results.json and results.md; returns the doc."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        files, skipped = draw_plots(doc, out)
    else:
        files, skipped = [], "turned off (--no-plots)"
    doc["plots"] = {"files": files, "skipped": skipped}
    validate(doc)
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    (out / "results.md").write_text(markdown(doc))
    return doc
