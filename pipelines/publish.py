"""Copies a finished workdir's records and figures into ``results/`` and rewrites its tables
from the run records, so that committed tables are always the code's output.

  python -m pipelines.publish --workdir=runs/mnist_paper --out=results/mnist

Copies config.json, compare/runs.jsonl, pretrain/metrics.jsonl and every figure; writes
runs.csv, summary.csv and summary.md anew from runs.jsonl, and puts that summary into the
``<!-- summary:<out name> -->`` block of the README.md beside ``--out``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from absl import app, flags

from pipelines import usage
from scae import atomic, figures, report

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished pretrain, compare or filters workdir.")
_OUT = flags.DEFINE_string("out", None, "Folder under results/ to write.")

FILES = ("config.json", "compare/runs.jsonl", "pretrain/metrics.jsonl")


def publish(workdir: Path, out: Path) -> list[Path]:
    """Copies records and figures of ``workdir`` into ``out``; rewrites the tables."""
    if not (workdir / "config.json").is_file():
        raise FileNotFoundError(f"{workdir / 'config.json'}: not found; not a workdir")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FILES:
        if (workdir / name).is_file():
            dst = out / Path(name).name
            shutil.copyfile(workdir / name, dst)
            written.append(dst)
    pngs = [p for d in (".", "pretrain", "compare") for p in sorted((workdir / d).glob("*.png"))]
    for png in pngs:
        rel = png.relative_to(workdir)
        dst = out / (rel.name if rel.parent == Path(".") else f"{rel.parent.name}_{rel.name}")
        shutil.copyfile(png, dst)
        written.append(dst)
    rows = figures.read_jsonl(workdir / "compare" / "runs.jsonl")
    if rows:
        dataset = rows[0]["dataset"]
        report.write_runs_csv(rows, out / "runs.csv")
        report.write_summary(rows, dataset, out / "summary.csv", out / "summary.md")
        written += [out / "runs.csv", out / "summary.csv", out / "summary.md"]
    return written


def update_index(index: Path, name: str, summary_md: Path) -> bool:
    """Replaces the block between ``<!-- summary:NAME -->`` and ``<!-- /summary -->`` in
    ``index`` with the table and sentences of ``summary_md``; returns whether it did."""
    if not index.is_file() or not summary_md.is_file():
        return False
    text = index.read_text()
    start, end = f"<!-- summary:{name} -->", "<!-- /summary -->"
    if start not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    body = summary_md.read_text().split("\n", 1)[1].strip()  # without the summary's title
    atomic.write_text(index, f"{head}{start}\n{body}\n{end}{tail}")
    return True


def main(argv):
    if len(argv) > 1 or not _WORKDIR.value or not _OUT.value:
        print("error: usage: --workdir=DIR --out=DIR", file=sys.stderr)
        sys.exit(2)
    try:
        written = publish(Path(_WORKDIR.value), Path(_OUT.value))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    out = Path(_OUT.value)
    if update_index(out.parent / "README.md", out.name, out / "summary.md"):
        written.append(out.parent / "README.md")
    print("\n".join(str(p) for p in written))


if __name__ == "__main__":
    app.run(main, flags_parser=usage.parse_plain)
