"""Copies a finished workdir's records and figures into ``results/``, rewrites its tables from
the run records, and rewrites every block of README.md and results/README.md that quotes
results, so that no committed number or timing is typed by hand.

  python -m pipelines.publish --workdir=runs/mnist_paper --out=results/mnist_paper
  python -m pipelines.publish --readmes_only      # every table and README block from the records

Copies config.json, machine.json (hardware and wall time, written by the compare command),
compare/runs.jsonl and the pretraining metrics (``metrics.jsonl``, or ``metrics_<stack>.jsonl``
for one stack per seed) and every figure; writes runs.csv, summary.csv and summary.md anew.

Only finished work is published (a job stopped before anything trained is refused): a
compare workdir with a run record (a partly finished one too: its tables mark what is
pending), a sweep with a point recorded, or the filter experiment's ``filters.png``; a
pretrained stack goes with ``--stack``.

``--out`` is a folder ``results/NAME`` of the checkout (``--root``): the README blocks quote
no other (``publish.publish()`` writes anywhere, without them). A republish builds the folder
beside it and swaps it in whole; a folder holding files publish does not write is refused.

A README block is the text between ``<!-- scae:NAME -->`` and ``<!-- /scae:NAME -->``; NAME
says what it holds, from the folder ``results/<dir>``:

- ``table:<dir>``: the summary (without its title), and the cells the config asks for that
  have no finished runs yet, marked pending;
- ``verdicts:<dir>``: the plain answer, one sentence per label size (paired t-test);
- ``sweep:<dir>``: a recipe sweep's points ranked by validation error, with its machine;
- ``machine:<dir>``: the hardware and wall time the results were measured on;
- ``expected:<dir>``: a short paragraph of the job's numbers, the machine and wall time (the
  README's quick job); "pending", with the commands that produce it, while the folder has no
  records.

``tests/test_publish.py`` fails when a committed README block or table differs from what this
module writes from the committed records.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from absl import flags

from pipelines import common, usage
from scae import api, atomic, provenance
from scae import workdir as workdir_lib
from scae.data import inputs
from scae.errors import InputError
from scae.report import stats
from scae.report import tables as report
from scae.report import workdir_figures as figures
from scae.study import cost, sweep
from scae.study import pretrain as pretraining

_OUT = flags.DEFINE_string("out", None, "Folder results/NAME (of --root) to write; a folder "
                           "published before is replaced whole.")
_FIGURES = flags.DEFINE_bool("figures", False, "Redraw the figures of every results/ folder "
                             "that need only its records (error against labels, curves, "
                             "pretraining loss), then exit.")
_STACK = flags.DEFINE_bool("stack", False, "Publish the workdir's finished stack (seed 0's), "
                           "with its input transform, into --out (scae.load_stack reads it).")
_READMES_ONLY = flags.DEFINE_bool("readmes_only", False,
                                  "Rewrite the tables of every results/ folder and the README "
                                  "blocks from the committed records (no workdir).")
_ALLOW_DIRTY = flags.DEFINE_bool("allow_dirty", False,
                                  "Publish a workdir whose records were made from a git tree "
                                  "with uncommitted changes (refused by default).")
_ROOT = flags.DEFINE_string("root", None,
                            "The checkout whose README.md and results/ are refreshed (default: "
                            "the one this command runs from).")

ROOT = Path(__file__).resolve().parents[1]
READMES = ("README.md", "results/README.md")
FILES = ("config.json", "machine.json", "compare/runs.jsonl", "sweep.jsonl", "best.json")
TABLES = ("runs.csv", "summary.csv", "summary.md")
# Every other name publish writes into --out: figures, pretraining metrics, a sweep's table.
_WRITTEN = re.compile(r"[^/]+\.png|metrics(_[^/]+)?\.jsonl|sweep\.md")
_BLOCK = re.compile(r"<!-- scae:(?P<name>[\w:.-]+) -->\n.*?<!-- /scae:(?P=name) -->", re.S)
# The commands that make each expected-output folder, for its "pending" block.
COMMANDS = {
    "mnist_quick": "python -m pipelines.compare --config=configs/mnist.py:quick "
                   "--workdir=runs/mnist_quick",
}


def _metrics_files(workdir: Path) -> list[tuple[Path, str]]:
    """Each stack's pretraining metrics and the name it is published under."""
    one = workdir / "pretrain" / "metrics.jsonl"
    found = [(one, "metrics.jsonl")] if one.is_file() else []
    for path in sorted((workdir / "pretrain").glob("*/metrics.jsonl")):
        found.append((path, f"metrics_{path.parent.name}.jsonl"))
    return found


# Read by the README refresh instead of ``results/<name>`` while a publish is staged there, so
# that every README block is rendered (and any damage found) before anything is written.
_STAGED: dict[str, Path] = {}


def _folder(results: Path, name: str) -> Path:
    return _STAGED.get(name, results / name)


def _result_folders(results: Path) -> list[Path]:
    """The published folders under ``results``, a staged one in place of its target; hidden
    names (a publish's staging folder, temporary files) are not results."""
    names = {p.name for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")} \
        if results.is_dir() else set()
    return [_folder(results, n) for n in sorted(names | set(_STAGED))]


def _read_json(path: Path) -> dict:
    """A JSON object file, or {} when absent; anything else is refused naming the file."""
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text())
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a JSON file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: not valid JSON ({' '.join(str(e).split())}); restore it "
                         f"(git checkout) or republish it") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def validate(folder: Path, json_files: Sequence[str], jsonl_files: Sequence[str]) -> None:
    """Reads every record publish or the README refresh will read in ``folder``, refusing a
    damaged one with one line naming the file (:class:`InputError`), before anything is
    written."""
    for name in json_files:
        _read_json(folder / name)
    for name in jsonl_files:
        atomic.read_jsonl(folder / name)
    for path in sorted(folder.glob("metrics*.jsonl")) + sorted(folder.glob("*/metrics.jsonl")):
        atomic.read_jsonl(path)


def validate_results(results: Path) -> None:
    """:func:`validate` over every folder of ``results`` the README refresh reads."""
    for folder in _result_folders(results):
        validate(folder, ("config.json", "machine.json"), ("runs.jsonl", sweep.RECORDS))


def _publishes(name: str) -> bool:
    """Whether publish writes a file named ``name`` into a result folder."""
    return (name in {Path(n).name for n in FILES} or name in TABLES
            or _WRITTEN.fullmatch(name) is not None)


def _leftover(name: str) -> bool:
    """A killed write's temporary file or trash, which the sweep before publishing removes."""
    return name.startswith(".") and (name.endswith(atomic.TMP_SUFFIX)
                                     or name.startswith(atomic.TRASH_PREFIX))


def check_out(out: Path, results: Path | None = None) -> Path:
    """``--out`` can take the published files: a folder (or a new name), not under a file,
    writable, with no folder where one of its files goes; with ``results``, a folder
    ``results/NAME`` (the README blocks quote no other). An existing folder is replaced whole,
    so it must be one publish wrote (its ``config.json`` and only names publish writes):
    anything else in it is refused, naming it, rather than deleted."""
    names = [Path(n).name for n in FILES] + list(TABLES) + ["metrics.jsonl"]
    out = workdir_lib.check_output(out, "--out", folder=True, files=names)
    if results is not None and (out.parent.resolve() != results.resolve()
                                or out.name.startswith(".")):
        raise InputError(f"--out {out}: expected a folder results/NAME of {results.parent} "
                         f"(the README tables quote only those; --root names another checkout)")
    if out.is_dir():
        entries = sorted(p for p in out.iterdir() if not _leftover(p.name))
        foreign = [p.name for p in entries
                   if p.is_symlink() or not p.is_file() or not _publishes(p.name)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more"
                                              if len(foreign) > 3 else "")
            raise InputError(f"--out {out}: holds {shown}, which publish does not write; a "
                             f"republish replaces the whole folder, so move them away or "
                             f"choose another --out")
        if entries and not (out / "config.json").is_file():
            raise InputError(f"--out {out}: not a folder publish wrote (no config.json); a "
                             f"republish replaces the whole folder, so empty it or choose "
                             f"another --out")
    return out


def finished(workdir: Path) -> bool:
    """Whether ``workdir`` holds finished work to publish: a run record (compare), a sweep
    record or the filter experiment's figure. Its records are read (:func:`validate`) first."""
    return bool(atomic.read_jsonl(workdir / "compare" / "runs.jsonl")
                or atomic.read_jsonl(workdir / sweep.RECORDS)
                or (workdir / "filters.png").is_file())


_STAGING = f".publish{atomic.TMP_SUFFIX}"


def _staging(out: Path) -> Path:
    """A hidden folder beside ``out`` whose subfolder of ``out``'s name is built first (the
    README blocks name a result by its folder's name)."""
    return out.parent / f".{out.name}{_STAGING}" / out.name


def _previous(out: Path) -> Path:
    """Where :func:`commit` moves the folder ``out`` replaces, in the staging folder (its name
    cannot be the staged folder's)."""
    return _staging(out).parent / f"{out.name}.previous"


def _restore(out: Path) -> None:
    """Puts back the folder a publish killed between :func:`commit`'s two renames had moved
    aside, before its staging folder is swept: a kill must not lose a published result."""
    previous = _previous(out)
    if previous.is_dir() and not out.exists() and not out.is_symlink():
        os.replace(previous, out)


def _restore_all(results: Path) -> None:
    """:func:`_restore` for every staging folder a killed publish left in ``results``."""
    for staging in sorted(results.glob(f".*{_STAGING}")):
        _restore(results / staging.name[1:-len(_STAGING)])


def stage(workdir: Path, out: Path, allow_dirty: bool = False) -> Path:
    """Builds what ``out`` will hold in a hidden folder beside it (records and figures of
    ``workdir``, the tables anew) and returns that folder; ``out`` is not touched. Every
    record read is checked first, naming a damaged file. Refuses (ValueError) records made
    from a dirty git tree unless ``allow_dirty``."""
    if not (workdir / "config.json").is_file():
        raise InputError(f"{workdir / 'config.json'}: not found; not a workdir")
    validate(workdir, ("config.json", "machine.json"), ("compare/runs.jsonl", sweep.RECORDS))
    if not finished(workdir):
        # A job stopped before anything trained leaves config.json and machine.json: published,
        # they would put a timing in the README for work that was never done.
        raise InputError(f"{workdir}: nothing finished to publish (no run records in "
                         f"compare/runs.jsonl, no sweep records, no filters.png); a pretrained "
                         f"stack is published with --stack")
    provenance.check_clean([_read_json(workdir / "machine.json"),
                            *atomic.read_jsonl(workdir / "compare" / "runs.jsonl"),
                            *atomic.read_jsonl(workdir / sweep.RECORDS)], allow_dirty)
    staging = _staging(out)
    _restore(out)
    atomic.remove_tree(staging.parent)
    try:
        staging.mkdir(parents=True)
        copies = [(workdir / name, Path(name).name) for name in FILES] + _metrics_files(workdir)
        for png in [p for d in (".", "pretrain", "compare")
                    for p in sorted((workdir / d).glob("*.png"))]:
            rel = png.relative_to(workdir)
            copies.append((png, rel.name if rel.parent == Path(".")
                           else f"{rel.parent.name}_{rel.name}"))
        for src, name in copies:
            if src.is_file():
                shutil.copyfile(src, staging / name)
        for name, text in tables(staging).items():
            (staging / name).write_text(text)
    except BaseException:
        atomic.remove_tree(staging.parent)
        raise
    return staging


def commit(staging: Path, out: Path) -> list[Path]:
    """Puts the folder ``staging`` in place of ``out``, whole, so that no file of an earlier
    publish the records no longer give (a figure, a table) stays behind: the old folder is
    moved aside into the staging folder, the new one renamed in, the old one deleted. A kill
    leaves ``out`` old or new, or, between the two renames, the old folder aside, which the
    next publish puts back (:func:`_restore`) before sweeping; returns the files written."""
    written = [out / p.name for p in sorted(staging.iterdir())]
    if out.exists() or out.is_symlink():
        os.replace(out, _previous(out))
    os.replace(staging, out)
    atomic.remove_tree(staging.parent)
    return written


def publish(workdir: Path, out: Path, allow_dirty: bool = False) -> list[Path]:
    """Copies records and figures of ``workdir`` into ``out`` (any folder; the command's
    ``--out`` must be under ``results/``), replacing a folder publish wrote before; rewrites
    the tables. Nothing is written unless ``out`` can be replaced (:func:`check_out`) and
    every record read is sound (:func:`stage`)."""
    return commit(stage(workdir, check_out(Path(out)), allow_dirty), Path(out))


def sweep_tables(folder: Path) -> dict[str, str]:
    """sweep.md as written from ``folder``'s sweep records ({} when it has none)."""
    records = atomic.read_jsonl(folder / sweep.RECORDS)
    if not records:
        return {}
    return {"sweep.md": sweep.markdown(records)}


def _verdicts_block(folder: Path) -> str:
    rows = atomic.read_jsonl(folder / "runs.jsonl")
    if not rows:
        return f"Pending: no finished runs in `results/{folder.name}` yet."
    title = report.data_identity(rows).title
    return f"**{title}** (`results/{folder.name}`):\n\n" + "\n".join(report.verdict_lines(rows))


def _sweep_block(folder: Path) -> str:
    text = sweep_tables(folder).get("sweep.md")
    if text is None:
        return f"Pending: no sweep records in `results/{folder.name}` yet."
    return text.split("\n", 1)[1].strip() + "\n\n" + machine_text(_json(folder / "machine.json"))


def _json(path: Path) -> dict:
    return _read_json(path)


def tables(folder: Path) -> dict[str, str]:
    """runs.csv, summary.csv and summary.md as written from ``folder``'s records ({} when it
    has no runs)."""
    rows = atomic.read_jsonl(folder / "runs.jsonl")
    if not rows:
        return sweep_tables(folder)
    stacks = [atomic.read_jsonl(p) for p in sorted(folder.glob("metrics*.jsonl"))]
    csv_text, md_text = report.summary_texts(rows, None, stacks)
    return {"runs.csv": report.runs_csv_text(rows), "summary.csv": csv_text,
            "summary.md": md_text}


def pending_cells(config: Mapping, rows: Sequence[Mapping]) -> list[str]:
    """'<labels> <arm> (k of n seeds)' for every cell of the config with missing seeds."""
    c = config.get("compare", {})
    seeds = set(range(int(c.get("num_seeds", 0))))
    out = []
    for size in c.get("label_sizes", ()):
        for arm in c.get("arms", ()):
            done = {int(r["seed"]) for r in rows
                    if int(r["label_size"]) == int(size) and r["arm"] == arm}
            if seeds - done:
                out.append(f"{report.label_text(int(size), rows)} labels {arm} "
                           f"({len(done & seeds)} of {len(seeds)} seeds)")
    return out


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


def machine_text(machine: Mapping) -> str:
    """'Measured on <hardware>, in <wall time>' from a machine.json record."""
    if not machine:
        return ("Hardware and wall time not recorded (these runs were made before the compare "
                "command wrote `machine.json`).")
    total = machine.get("total_wall_time_s")
    wall = total if total is not None else machine.get("wall_time_s")
    took = f", {_duration(wall)} wall time" if wall is not None else ""
    sessions = machine.get("sessions", 1)
    if wall is not None and (machine.get("sessions_unrecorded")
                             or (total is None and machine.get("resumed"))):
        took += " (of the recorded sessions only: the job was resumed)"
    elif wall is not None and sessions > 1:
        took += f" in {sessions} sessions (interrupted and resumed)"
    cached = machine.get("cache_entries_at_start")
    if wall is not None and cached is not None:
        took += (", compilation cache empty at start" if cached == 0 else
                 ", compiled programs partly from the persistent cache")
    return f"Measured on {provenance.describe_machine(machine)}{took}."


def _table_block(folder: Path) -> str:
    if not (folder / "runs.jsonl").is_file():
        return f"Pending: no finished runs in `results/{folder.name}` yet."
    rows = atomic.read_jsonl(folder / "runs.jsonl")
    md = tables(folder)["summary.md"]
    body = md.split("\n", 1)[1].strip()  # without the summary's title
    pending = pending_cells(_json(folder / "config.json"), rows)
    if pending:
        body += ("\n\nPending (no finished runs yet; rerun the command to continue): "
                 + "; ".join(pending) + ".")
    return body


def _expected_block(folder: Path) -> str:
    """The job's numbers in one paragraph, with its machine and wall time."""
    rows = atomic.read_jsonl(folder / "runs.jsonl")
    if not rows:
        command = COMMANDS.get(folder.name, "python -m pipelines.compare ...")
        return (f"Expected output: pending (no committed record yet). To produce it: "
                f"`{command} && python -m pipelines.publish --workdir=runs/{folder.name} "
                f"--out=results/{folder.name}`.")
    cells, _ = stats.summarize(rows)
    sizes = sorted({c.label_size for c in cells})
    seeds = max(c.n for c in cells)
    parts = []
    for size in sizes:
        arms = ", ".join(f"{c.arm} {c.mean:.2f}" + ("" if c.n < 2 else f" ± {c.std:.2f}") + " %"
                         for c in cells if c.label_size == size)
        parts.append(f"at {report.label_text(size, rows)} labels: {arms} test error")
        for d in stats.paired_tests(rows):
            if d.label_size == size and d.arm_a == "pretrained":
                test = (d.reason if math.isnan(d.p) else
                        f"paired over {d.n} seeds: 95% CI {report.fmt_signed(d.ci_low)} to "
                        f"{report.fmt_signed(d.ci_high)}, {report.p_phrase(d.p)}")
                parts[-1] += (f"; pretrained − random {report.fmt_signed(d.diff)} points "
                              f"({test})")
    machine = machine_text(_json(folder / "machine.json"))
    return (f"Expected output (`results/{folder.name}`, {seeds} seeds; mean ± std over seeds): "
            + "; ".join(parts) + f". {machine}")


def _timings_block(results: Path) -> str:
    """One row per committed result whose job recorded its machine: how long it took, where."""
    rows = []
    for folder in _result_folders(results):
        machine, config = _json(folder / "machine.json"), _json(folder / "config.json")
        if machine:
            preset = config.get("preset", "?") if config else "?"
            rows.append(f"| `results/{folder.name}` | {preset} | {machine_text(machine)} |")
    if not rows:
        return ("Pending: no committed result has recorded its machine and wall time yet "
                "(`python -m pipelines.compare` writes `machine.json`; `pipelines.publish` "
                "copies it into `results/`).")
    return "\n".join(["| result | preset | hardware and wall time |", "| --- | --- | --- |"]
                     + rows)


def render(name: str, results: Path) -> str:
    """The body of the README block ``name`` (see the module docstring)."""
    if name == "timings":
        return _timings_block(results)
    if name == "cost":
        # The sweep the CIFAR-10 answer waits for, priced as it trains (scae.study.cost).
        sweep = "configs/cifar10_sweep.py"
        return cost.readme_block(results, [(sweep, usage.load_config(str(ROOT / sweep)))])
    kind, _, folder = name.partition(":")
    kinds = ("table", "machine", "expected", "sweep", "verdicts")
    if not folder or "/" in folder or kind not in kinds:
        raise ValueError(f"README block {name!r}: expected table:<dir>, machine:<dir>, "
                         f"sweep:<dir>, verdicts:<dir> or expected:<dir> of results/<dir>")
    if kind == "verdicts":
        return _verdicts_block(_folder(results, folder))
    if kind == "sweep":
        return _sweep_block(_folder(results, folder))
    if kind == "table":
        return _table_block(_folder(results, folder))
    if kind == "machine":
        return machine_text(_json(_folder(results, folder) / "machine.json"))
    return _expected_block(_folder(results, folder))


def fill(text: str, results: Path) -> str:
    """``text`` with every ``<!-- scae:NAME -->`` block rewritten from ``results``."""
    return _BLOCK.sub(lambda m: f"<!-- scae:{m['name']} -->\n{render(m['name'], results)}\n"
                                f"<!-- /scae:{m['name']} -->", text)


def refreshed_tables(root: Path = ROOT) -> dict[Path, str]:
    """The tables of every folder under ``results/`` that differ from what its run records
    give, as {path: text}."""
    changed = {}
    for folder in _result_folders(root / "results"):
        for name, text in tables(folder).items():
            path = folder / name
            if not path.is_file() or path.read_text() != text:
                changed[path] = text
    return changed


def readme_texts(root: Path = ROOT) -> dict[Path, str]:
    """The new text of each README whose result blocks change, as {path: text}."""
    changed = {}
    for name in READMES:
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text()
        new = fill(text, root / "results")
        if new != text:
            changed[path] = new
    return changed


def run(workdir: Path | None, out: Path | None, allow_dirty: bool = False,
        root: Path = ROOT) -> list[Path]:
    """The command: with a workdir, publishes it into ``out`` and refreshes the READMEs; without
    (``--readmes_only``), rewrites every committed result's tables and the READMEs from the
    records. Checks everything first: the output paths (``out`` a folder ``results/NAME`` of
    ``root``, new or one publish wrote); the workdir's lock (taken shared: a compare still
    writing it is refused, never published in part); that it holds finished work; every record
    it, and every ``results/*`` folder the READMEs quote, holds (a damaged one named). Only then
    writes, and what a killed publish left (its temporary files and staging folder; a result
    folder it had moved aside is put back) is swept first."""
    from scae import workdir as workdir_lib

    results = root / "results"
    for name in READMES:
        workdir_lib.check_output(root / name, "README")
    if workdir is not None:
        out = check_out(out, results)
        workdir_lib.hold(workdir, write=False)
    for name in READMES:
        atomic.sweep_beside(root / name)
    if results.is_dir():
        _restore_all(results)
        atomic.sweep(results)
    staging = None
    try:
        if workdir is not None:
            staging = stage(workdir, out, allow_dirty)
            _STAGED[out.name] = staging  # the READMEs quote it: render them from it now
        validate_results(results)
        tables_text = {} if workdir is not None else refreshed_tables(root)
        readmes = readme_texts(root)
    except BaseException:
        if staging is not None:
            atomic.remove_tree(staging.parent)
        raise
    finally:
        _STAGED.clear()
    written = commit(staging, out) if staging is not None else []
    for path, text in {**tables_text, **readmes}.items():
        atomic.write_text(path, text)
        written.append(path)
    return written


def publish_stack(workdir: Path, out: Path) -> list[Path]:
    """The finished stack of a pretrain (or compare) workdir, seed 0's, with its input
    transform, written to ``out`` in :meth:`scae.Stack.save`'s format (``scae.load_stack``
    reads it), with ``config.json`` and ``stack_record.json``: each layer's validation
    reconstruction MSE recomputed from the saved stack on the validation images pretraining
    measured (``val_mse``), the last one ``metrics.jsonl`` recorded (``trained_val_mse``), the
    code that trained it and the machine."""
    workdir_lib.check_output(out, "--out", folder=True,
                             files=("stack.json", "config.json", "stack_record.json"))
    workdir_lib.hold(workdir, write=False)
    config = workdir_lib.load_config(workdir)
    metrics = atomic.read_jsonl(workdir / "pretrain" / "metrics.jsonl")
    last = {r["layer"]: r for r in metrics}
    if sorted(last) != list(range(1, config.pretrain.layers + 1)):
        raise InputError(f"{workdir / 'pretrain' / 'metrics.jsonl'}: not every layer finished; "
                         f"run pipelines.pretrain on this workdir first")
    stack = api.load_stack(workdir)
    data = inputs.build(config.data, config.seed)
    val = data.val_images[: config.pretrain.eval_size]
    record = {
        "dataset": config.dataset, "source": config.data.source, "preset": config.get("preset"),
        "seed": config.seed, "val_images": int(val.shape[0]),
        "val_mse": pretraining.validation_mse(stack, val),
        "trained_val_mse": [last[k]["val_mse"] for k in sorted(last)],
        "trained_by": {key: last[1].get(key) for key in pretraining.CODE_KEYS},
        "published_by": provenance.git_state(),
        "command": f"python -m pipelines.publish --stack --workdir={workdir} --out={out}",
        "machine": provenance.machine(),
    }
    stack.save(out)
    atomic.write_text(out / "config.json", (workdir / "config.json").read_text())
    atomic.write_text(out / "stack_record.json", json.dumps(record, indent=1) + "\n")
    return [out]


def main(config, workdir: Path | None) -> None:
    """The command, in the envelope of :mod:`pipelines.common` (config is not used)."""
    if _FIGURES.value:
        root = Path(_ROOT.value) if _ROOT.value else ROOT
        written = [p for folder in _result_folders(root / "results")
                   if (folder / "runs.jsonl").is_file()
                   for p in figures.redraw_published(folder)]
        print("\n".join(str(p) for p in written))
        return
    if _STACK.value:
        if workdir is None or not _OUT.value:
            raise InputError("usage: --stack --workdir=DIR --out=results/pretrained/NAME")
        print("\n".join(str(p) for p in publish_stack(workdir, Path(_OUT.value))))
        return
    if not _READMES_ONLY.value and (workdir is None or not _OUT.value):
        raise InputError("usage: --workdir=DIR --out=results/NAME, or --readmes_only")
    root = Path(_ROOT.value) if _ROOT.value else ROOT
    if not (root / "results").is_dir():
        raise InputError(f"--root {root}: has no results/ folder; expected a checkout of this "
                         f"project")
    try:
        if _READMES_ONLY.value:
            written = run(None, None, root=root)
        else:
            written = run(workdir, Path(_OUT.value), _ALLOW_DIRTY.value, root=root)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(str(e)) from None
    print("\n".join(str(p) for p in written))


if __name__ == "__main__":
    common.run(main, needs_config=False, needs_workdir=False)
