"""``--help`` for every command, and the nearest config keys to a mistyped one.

A command's help is its module docstring (what it does, what it writes, an example), its own
flags, the config files and their presets, every key of a config with its value and meaning,
and the exit statuses. absl's own ``--help`` lists only the flags of the main module (the
config flags live in :mod:`pipelines.common`) and exits 1; :func:`split_help` takes the help
flags out of ``argv`` before absl sees them, so every command answers them the same way, with
exit status 0.
"""

from __future__ import annotations

import ast
import inspect
import re
import runpy
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

from absl import flags

from scae.config import closest_keys

HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort", "--helpfull",
             "-helpfull", "--help=true", "--help=1")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXIT_STATUSES = ("exit status: 0 done; 2 bad input or usage (one line on stderr, nothing "
                 "written); 3 training diverged (last good checkpoint kept); 74 a write failed; "
                 "130 / 143 interrupted by SIGINT / SIGTERM (rerun the same command to resume).")
PLAIN_EXIT_STATUSES = "exit status: 0 done; 2 bad input or usage (one line on stderr)."
_WIDTH = 96
_METAVARS = {"workdir": "DIR", "out": "DIR", "int": "N", "float": "X"}


def split_help(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without its help flags, and whether there were any."""
    rest = [a for i, a in enumerate(argv) if i == 0 or a not in HELP_ARGS]
    return rest, len(rest) < len(argv)


def program() -> str:
    """How the running command is started, e.g. ``python -m pipelines.compare``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return f"python -m {spec.name}"
    return f"python {Path(sys.argv[0]).name}"


def _doc() -> str:
    main = sys.modules.get("__main__")
    return inspect.cleandoc(getattr(main, "__doc__", None) or "").replace("``", "")


def _flag_lines(modules: Sequence[str]) -> list[str]:
    """One entry per flag defined by ``modules``, with its default."""
    seen, lines = set(), []
    by_module = flags.FLAGS.flags_by_module_dict()
    for module in modules:
        for fl in sorted(by_module.get(module, []), key=lambda f: f.name):
            if fl.name in seen:
                continue
            seen.add(fl.name)
            if fl.name == "config":
                name = "--config=FILE[:PRESET]"
            elif fl.flag_type() == "bool":
                name = f"--[no]{fl.name}"
            elif hasattr(fl.parser, "enum_values"):
                name = f"--{fl.name}={'|'.join(fl.parser.enum_values)}"
            else:
                name = f"--{fl.name}=" + _METAVARS.get(fl.name, _METAVARS.get(fl.flag_type(),
                                                                              "VALUE"))
            shown = str(fl.default).lower() if isinstance(fl.default, bool) else fl.default
            default = "" if fl.default in (None, "") else f" (default: {shown})"
            text = re.sub(r"^<[^>]*>: ", "", fl.help)  # absl's enum prefix repeats the choices
            lines.append(_entry(name, text + default))
    lines.append(_entry("--help", "this help, exit 0" + (
        "; with --config=FILE[:PRESET] and any --config.KEY=VALUE, it lists that config's keys "
        "as resolved" if "pipelines.common" in modules else "")))
    return lines


def _entry(name: str, text: str, col: int = 28) -> str:
    head = f"  {name}"
    body = textwrap.wrap(" ".join(text.split()), _WIDTH - col)
    if len(head) >= col - 1:
        return "\n".join([head] + [" " * col + b for b in body])
    first = head.ljust(col) + (body[0] if body else "")
    return "\n".join([first.rstrip()] + [" " * col + b for b in body[1:]])


def config_presets(path: Path) -> tuple[str, ...]:
    """The presets a config file accepts: the names it passes to ``config.preset_arg``."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return ()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and len(node.args) >= 2
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "preset_arg"):
            try:
                return tuple(ast.literal_eval(node.args[1]))
            except ValueError:
                return ()
    return ()


def _preset_lines() -> list[str]:
    lines = []
    for path in sorted(CONFIGS.glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        presets = config_presets(path)
        first = doc.split("\n\n")[0].replace("\n", " ")
        if presets:
            first += f" Presets: {', '.join(presets)}."
        lines.append(_entry(f"configs/{path.name}", first, col=30))
    return lines


def _presets_paragraph(spec: str | None) -> list[str]:
    """The "Presets" paragraph of a config file's docstring, if it has one."""
    if not spec or not Path(spec.split(":", 1)[0]).is_file():
        return []
    doc = ast.get_docstring(ast.parse(Path(spec.split(":", 1)[0]).read_text())) or ""
    for para in doc.split("\n\n"):
        if para.startswith("Presets"):
            para = para.replace("``", "")
            return ["", *(f"  {line}" if i else line for i, line in enumerate(para.splitlines()))]
    return []


def _key_comments() -> dict[str, str]:
    """Each key set in :func:`scae.config.base_config`, in its order, with the comment beside
    it (or the comment lines just above it)."""
    from scae import config as cfglib

    out, above = {}, []
    for line in inspect.getsource(cfglib.base_config).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        m = re.match(r"\s*c\.([\w.]+)\s*=\s*(?!ml_collections)[^#]*(?:#\s*(.+))?$", line)
        if m:
            out[m.group(1)] = (m.group(2) or " ".join(above)).strip()
        above = []
    return out


def flat_items(config, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every leaf of a ConfigDict (or dict)."""
    for key, value in config.items():
        if hasattr(value, "items"):
            yield from flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def all_keys(config) -> list[str]:
    """Every dotted key of ``config``: the sections and the leaves."""
    keys = []
    for key, _ in flat_items(config):
        parts = key.split(".")
        keys += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return list(dict.fromkeys(keys))


def config_lines(config) -> list[str]:
    """``key = value   meaning`` for every key of ``config``, in the order of the defaults."""
    comments = _key_comments()
    order = {k: i for i, k in enumerate(comments)}
    items = sorted(flat_items(config), key=lambda kv: (kv[0].split(".")[0] != "dataset",
                                                       order.get(kv[0], len(order)), kv[0]))
    lines = []
    for key, value in items:
        value = tuple(value) if isinstance(value, list) else value
        lines.append(_entry(f"{key} = {value!r}", comments.get(key, ""), col=44))
    return lines


def load_config(spec: str):
    """The ConfigDict of ``--config=FILE[:ARG]`` without any override (raises as loading does)."""
    path, _, arg = spec.partition(":")
    get_config = runpy.run_path(path)["get_config"]
    return get_config(arg) if arg else get_config()


def _example_config(doc: str) -> str | None:
    m = re.search(r"--config=(\S+\.py(?::\w+)?)", doc)
    return m.group(1) if m else None


def command_help(config=None, config_spec: str | None = None, uses_config: bool = True) -> str:
    """The text of ``--help`` for the running command.

    ``config`` is the resolved config of ``--config`` (with its overrides) when one was given;
    otherwise the config of the docstring's example, if any, is listed.
    """
    doc = _doc()
    main_flags = [sys.argv[0], "__main__"]
    config_arg = "--config=FILE[:PRESET]"
    if _example_config(doc) is None:  # a command whose example needs no config
        config_arg = f"[{config_arg}]"
    parts = [f"usage: {program()} "
             + (f"{config_arg} --workdir=DIR [--config.KEY=VALUE ...] [flags]"
                if uses_config else "[flags]"),
             "", doc, "", "flags:",
             *_flag_lines(main_flags + (["pipelines.common"] if uses_config else []))]
    if uses_config:
        parts += ["", "config files (--config=FILE:PRESET; no preset means quick):",
                  *_preset_lines()]
        what = config_spec
        if config is None:
            what = _example_config(doc)
            if what:
                try:
                    config = load_config(what)
                except Exception:  # noqa: BLE001 - the listing is a courtesy
                    config = None
        parts += _presets_paragraph(what)
        if config is not None:
            parts += ["", textwrap.fill(
                f"config keys of {what}, with their values (override any with "
                f"--config.KEY=VALUE; --config=FILE:PRESET --help lists another config's keys "
                f"as resolved):", _WIDTH), *config_lines(config)]
        else:
            parts += ["", "config keys: --config=FILE:PRESET --help lists every key of that "
                      "config with its value."]
    parts += ["", textwrap.fill(EXIT_STATUSES if uses_config else PLAIN_EXIT_STATUSES, _WIDTH)]
    return "\n".join(parts).rstrip() + "\n"


def unknown_key_message(config, key: str, config_spec: str) -> str:
    """One line: ``--config.KEY`` is no config key, and the nearest ones."""
    close = closest_keys(config, key)
    hint = (f"did you mean {' or '.join('--config.' + k for k in close)}?" if close
            else "no key is close")
    return (f"--config.{key}: no such config key; {hint} (--config={config_spec} --help "
            f"lists every key)")


def missing_key(config, argv: Sequence[str]) -> str | None:
    """The first ``--config.KEY`` override in ``argv`` whose KEY ``config`` lacks."""
    keys = set(all_keys(config))
    for a in argv:
        if a.startswith("--config."):
            key = a[len("--config."):].split("=", 1)[0]
            if key not in keys:
                return key
    return None

