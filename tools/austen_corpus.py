"""The training corpus: Jane Austen's six novels from Debian's r-cran-janeaustenr, as plain text. No R needed.

    python tools/austen_corpus.py .corpus                    # apt-get download + dpkg-deb -x, then decode
    python tools/austen_corpus.py .corpus --deb FILE.deb     # from a .deb already at hand

The package keeps each novel as an R character vector (one element per printed line) in the lazy-load
database `data/Rdata.rdb`; tools/r_lazyload.py reads it. Each novel is written reflowed: one paragraph
per line (the printed lines of a paragraph joined by single spaces, runs of spaces collapsed), paragraphs
separated by one newline. Five novels are for training (`train/`), Persuasion is held out (`heldout/`).
`--slice PATH` also writes the first ~32 KB of Persuasion (cut at a paragraph end), the slice committed
as bimamba_edge/data/persuasion-slice.txt for tests and the perplexity tool.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from r_lazyload import STRSXP, RObject, read_lazyload  # noqa: E402

PACKAGE = "r-cran-janeaustenr"
RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
NOVELS = {  # R variable -> (file stem, title), in publication order
    "sensesensibility": ("sense-and-sensibility", "Sense and Sensibility"),
    "prideprejudice": ("pride-and-prejudice", "Pride and Prejudice"),
    "mansfieldpark": ("mansfield-park", "Mansfield Park"),
    "emma": ("emma", "Emma"),
    "northangerabbey": ("northanger-abbey", "Northanger Abbey"),
    "persuasion": ("persuasion", "Persuasion"),
}
HELD_OUT = "persuasion"
SLICE_BYTES = 32768


class CorpusError(Exception):
    pass


def reflow(lines: list[str | None]) -> str:
    """Printed lines -> one paragraph per line; blank lines separate paragraphs."""
    paragraphs, current = [], []
    for line in lines:
        line = (line or "").strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    return "".join(re.sub(r"\s+", " ", " ".join(p)) + "\n" for p in paragraphs)


def novels_from_rdb(rdb: Path) -> dict[str, str]:
    """{R variable: reflowed text} for the six novels in the package's data/Rdata.rdb."""
    variables = read_lazyload(rdb)
    out = {}
    for name in NOVELS:
        value = variables.get(name)
        if not isinstance(value, RObject) or value.type != STRSXP:
            raise CorpusError(f"{rdb}: no character vector {name!r} (found {sorted(variables)})")
        out[name] = reflow(value.value)
    return out


def download_deb(workdir: Path) -> Path:
    proc = subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, capture_output=True, text=True)
    debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
    if proc.returncode != 0 or not debs:
        raise CorpusError(f"apt-get download {PACKAGE} failed ({proc.stderr.strip().splitlines()[-1:]}); "
                          "run `apt-get update` first, or pass --deb FILE")
    return debs[0]


def extract_rdb(deb: Path, workdir: Path) -> Path:
    target = workdir / "x"
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CorpusError(f"dpkg-deb -x {deb} failed: {proc.stderr.strip()}")
    rdb = target / RDB
    if not rdb.is_file() or not rdb.with_suffix(".rdx").is_file():
        raise CorpusError(f"{deb}: no {RDB} (+ .rdx) inside")
    return rdb


def paragraph_slice(text: str, n_bytes: int) -> str:
    """The longest run of whole paragraphs from the start that fits in n_bytes of UTF-8."""
    cut = text.encode("utf-8")[:n_bytes].decode("utf-8", "ignore")
    end = cut.rfind("\n")
    if end < 0:
        raise CorpusError(f"no paragraph ends within the first {n_bytes} bytes")
    return cut[:end + 1]


def write_corpus(novels: dict[str, str], out: Path, source: dict) -> dict:
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "heldout").mkdir(parents=True, exist_ok=True)
    files = {}
    for name, text in novels.items():
        stem, title = NOVELS[name]
        path = out / ("heldout" if name == HELD_OUT else "train") / f"{stem}.txt"
        path.write_text(text, encoding="utf-8")
        files[str(path.relative_to(out))] = {"title": title, "chars": len(text),
                                             "paragraphs": text.count("\n"),
                                             "sha256": hashlib.sha256(text.encode()).hexdigest()}
    manifest = {"source": source, "held_out": NOVELS[HELD_OUT][1], "files": files}
    (out / "corpus.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="corpus folder to write (train/, heldout/, corpus.json)")
    parser.add_argument("--deb", type=Path, help=f"{PACKAGE} .deb to read instead of `apt-get download`")
    parser.add_argument("--slice", type=Path, help="also write the committed held-out slice here")
    parser.add_argument("--slice-bytes", type=int, default=SLICE_BYTES)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="austen-"))
    try:
        deb = args.deb.resolve() if args.deb else download_deb(work)
        rdb = extract_rdb(deb, work)
        novels = novels_from_rdb(rdb)
        source = {"package": PACKAGE, "deb": deb.name, "deb_sha256": hashlib.sha256(deb.read_bytes()).hexdigest()}
        manifest = write_corpus(novels, args.out, source)
        if args.slice:
            args.slice.parent.mkdir(parents=True, exist_ok=True)
            args.slice.write_text(paragraph_slice(novels[HELD_OUT], args.slice_bytes), encoding="utf-8")
    except (CorpusError, ValueError, OSError) as e:
        print(f"austen_corpus: error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for path, info in manifest["files"].items():
        print(f"{path}: {info['title']}, {info['chars']} characters, {info['paragraphs']} paragraphs")
    if args.slice:
        print(f"{args.slice}: {args.slice.stat().st_size} bytes of {NOVELS[HELD_OUT][1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
