"""The build cache across patch sets: `bimamba-build --prune` removes what other patch sets built, nothing else."""

from __future__ import annotations

import os

from bimamba_edge import build


def test_prune_removes_only_other_patch_sets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIMAMBA_EDGE_CACHE", str(tmp_path))
    in_use = build.entries_in_use()
    assert len(in_use) == 6  # patched tree, native and portable runtime, AVX2 and two aarch64 kernel builds
    other = "0123456789abcdef"
    stale = [f"patched-{other}", f"patched-{other}.staging", f"build-{other}", f"build-{other}.log",
             f"x86-avx2-{other}", f"aarch64-plain-{other}.log", f"aarch64-dotprod-{other}"]
    # the sdist and its tree, the record of the last build, bench files, names outside the pattern
    kept = ["llama_cpp_python-0.3.36.tar.gz", "src-832db0699007f1be", "runtime.json", "bench-models",
            "bench-probe", "build-notes", f"build-{other.upper()}", *in_use, *(f"{name}.log" for name in in_use)]
    for name in stale + kept:
        path = tmp_path / name
        if name.endswith((".log", ".json", ".tar.gz")):
            path.write_bytes(b"x" * 1000)
        else:
            (path / "sub").mkdir(parents=True)
            (path / "sub" / "file").write_bytes(b"x" * 1000)
    # a link in a stale tree is removed, not followed
    outside = tmp_path / "bench-models" / "sub" / "file"
    os.symlink(outside, tmp_path / f"patched-{other}" / "link")

    link_bytes = (tmp_path / f"patched-{other}" / "link").lstat().st_size

    assert sorted(p.name for p in build.stale_entries()) == sorted(stale)
    assert build.prune() == (len(stale), len(stale) * 1000 + link_bytes)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert outside.read_bytes() == b"x" * 1000
    assert build.main(["--prune"]) == 0
    assert "removed 0 cache entries of other patch sets (0.00 GB)" in capsys.readouterr().out
