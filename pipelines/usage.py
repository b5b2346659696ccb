"""``--help`` for every command, and the nearest config keys to a mistyped one.

A command's help is short: its module docstring (what it does, what it writes, an example),
its own flags and the shared flags of :mod:`pipelines.common` that it reads, the config files
with their presets, and the exit statuses. Every config key with its value and meaning is
listed only for a named config, ``--config=FILE[:PRESET] --help`` (with any
``--config.KEY=VALUE`` applied), and the short help says so. absl's own ``--help`` lists only
the flags of the main module (the config flags live in :mod:`pipelines.common`) and exits 1;
:func:`split_help` takes the help flags out of ``argv`` before absl sees them, so every command
answers them the same way, with exit status 0.
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
from scae.errors import InputError

HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort", "--helpfull",
             "-helpfull", "--help=true", "--help=1")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXIT_STATUSES = ("exit status: 0 done; 2 bad input or usage (one line on stderr, nothing "
                 "written); 3 training diverged (last good checkpoint kept); 74 a write failed; "
                 "130 / 143 interrupted by SIGINT / SIGTERM (rerun the same command to resume).")
PLAIN_EXIT_STATUSES = ("exit status: 0 done; 2 bad input or usage (one line on stderr); "
                       "74 a write failed; 130 / 143 interrupted by SIGINT / SIGTERM.")
# The flags of pipelines.common that each command reads; a command not named here (pretrain,
# compare, filters, sweep: the ones that train into a workdir) reads all three. absl still
# accepts the others, but they would do nothing, so the help does not show them.
SHARED = ("config", "workdir", "overwrite")
SHARED_BY_COMMAND = {
    "benchmark": (),
    "cost": ("config",),
    "quick_job": ("config",),  # passed on to the compare it runs
    "encode": ("config", "workdir"),
    "visualize": ("config", "workdir"),
    "publish": ("workdir",),
    "gpu_run": ("workdir",),
}
_WIDTH = 96
_METAVARS = {"workdir": "DIR", "out": "DIR", "int": "N", "float": "X"}
_CONFIG_TEXT = "A config file listed below, and its preset."


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


def command() -> str:
    """The running command's name: ``compare`` for ``python -m pipelines.compare``."""
    return program().split()[-1].rsplit(".", 1)[-1].removesuffix(".py")


def shared_flags(name: str | None = None) -> tuple[str, ...]:
    """The flags of :mod:`pipelines.common` that command ``name`` (default: the running one)
    reads, in the order of :data:`SHARED`."""
    return SHARED_BY_COMMAND.get(command() if name is None else name, SHARED)


def _doc() -> str:
    main = sys.modules.get("__main__")
    return inspect.cleandoc(getattr(main, "__doc__", None) or "").replace("``", "")


def _flag_lines(modules: Sequence[str], shared: Sequence[str]) -> list[str]:
    """One entry per flag defined by ``modules`` and per flag of ``shared`` (of
    :mod:`pipelines.common`), with its default."""
    by_module = flags.FLAGS.flags_by_module_dict()
    own = {fl.name: fl for module in modules for fl in by_module.get(module, [])}
    common = {fl.name: fl for fl in by_module.get("pipelines.common", [])}
    chosen = [own[n] for n in sorted(own)] + [common[n] for n in shared
                                               if n in common and n not in own]
    lines = []
    for fl in chosen:
        text = re.sub(r"^<[^>]*>: ", "", fl.help)  # absl's enum prefix repeats the choices
        if fl.name == "config" and fl.name not in own:
            name, text = "--config=FILE[:PRESET]", _CONFIG_TEXT
        elif fl.flag_type() == "bool":
            name = f"--[no]{fl.name}"
        elif hasattr(fl.parser, "enum_values"):
            name = f"--{fl.name}={'|'.join(fl.parser.enum_values)}"
        else:
            name = f"--{fl.name}=" + _METAVARS.get(fl.name, _METAVARS.get(fl.flag_type(),
                                                                          "VALUE"))
        shown = str(fl.default).lower() if isinstance(fl.default, bool) else fl.default
        default = "" if fl.default in (None, "") else f" (default: {shown})"
        lines.append(_entry(name, text + default))
    lines.append(_entry("--help", "this help, exit 0" + (
        "; with --config=FILE[:PRESET] (and any --config.KEY=VALUE) also every key of that "
        "config, with its value and meaning" if "config" in shared else "")))
    return lines


def _entry(name: str, text: str, col: int = 28) -> str:
    head = f"  {name}"
    body = textwrap.wrap(" ".join(text.split()), _WIDTH - col)
    if len(head) >= col - 1:
        return "\n".join([head] + [" " * col + b for b in body])
    first = head.ljust(col) + (body[0] if body else "")
    return "\n".join([first.rstrip()] + [" " * col + b for b in body[1:]])


def _preset_call(path: Path) -> tuple[ast.Module, ast.Call] | tuple[None, None]:
    """The config file's parsed source and its call of ``config.preset_arg``."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return None, None
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and len(node.args) >= 2
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "preset_arg"):
            return tree, node
    return None, None


def config_presets(path: Path) -> tuple[str, ...]:
    """The presets a config file accepts: the names it passes to ``config.preset_arg`` (a
    literal, or a module-level name bound to one)."""
    tree, call = _preset_call(path)
    if call is None:
        return ()
    names = call.args[1]
    if isinstance(names, ast.Name):
        bound = [n.value for n in tree.body if isinstance(n, ast.Assign)
                 and any(getattr(t, "id", None) == names.id for t in n.targets)]
        names = bound[-1] if bound else names
    try:
        return tuple(ast.literal_eval(names))
    except ValueError:
        return ()


def default_preset(path: Path) -> str:
    """The preset a config file gives without one: ``preset_arg``'s own default (quick), or
    the ``arg or "NAME"`` the file passes it."""
    _, call = _preset_call(path)
    first = call.args[0] if call is not None else None
    if isinstance(first, ast.BoolOp) and isinstance(first.values[-1], ast.Constant):
        return str(first.values[-1].value)
    return "quick"


def _preset_lines() -> list[str]:
    """One entry of at most two lines per config file: the first sentence of its docstring
    (only its head, up to a colon, if the whole would not fit), and its presets."""
    paths = [p for p in sorted(CONFIGS.glob("*.py")) if not p.name.startswith("_")]
    col = max([30, *(len(p.name) + 13 for p in paths)])
    lines, room = [], 2 * (_WIDTH - col)
    for path in paths:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        first = re.split(r"(?<=[.)])\s", first, maxsplit=1)[0]  # its first sentence
        first = re.sub(r"\s*\(Masci et al\., 2011[^)]*\)", "", first)
        presets = config_presets(path)
        default = default_preset(path)
        shown = [f"{p} (default)" if p == default and len(presets) > 1 else p for p in presets]
        tail = f" Presets: {', '.join(shown)}." if presets else ""
        if len(first) + len(tail) > room - 8 and ": " in first:
            first = first.split(": ", 1)[0] + "."
        lines.append(_entry(f"configs/{path.name}", first + tail, col=col))
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
    """Each key set in :func:`scae.config.base_config`, in its order, with its comment: the one
    beside it, or else the comment lines just above it. A comment beside a key that leaves a
    parenthesis open goes on in the comment lines below it, to the end of that sentence."""
    from scae import config as cfglib

    out, above, cut = {}, [], None
    for line in inspect.getsource(cfglib.base_config).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("# ")
            if cut is not None:
                out[cut] += " " + text
                cut = None if _finished(out[cut]) else cut
            else:
                above.append(text)
            continue
        m = re.match(r"\s*c\.([\w.]+)\s*=\s*(?!ml_collections)[^#]*(?:#\s*(.+))?$", line)
        cut = None
        if m:
            out[m.group(1)] = (m.group(2) or " ".join(above)).strip()
            if m.group(2) and out[m.group(1)].count("(") > out[m.group(1)].count(")"):
                cut = m.group(1)
        above = []
    return out


def _finished(comment: str) -> bool:
    return comment.count("(") <= comment.count(")") and comment.rstrip().endswith(".")


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


def config_spec(argv: Sequence[str]) -> str | None:
    """The ``FILE[:PRESET]`` of ``--config`` in ``argv``, if given."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def parse_error(error: Exception, argv: Sequence[str]) -> str:
    """One line for an error raised while absl parses ``argv``'s ``--config`` and its
    ``--config.KEY=VALUE`` overrides (anything else is raised again): a config file's own
    InputError keeps its message; a KEY the config lacks is named with the nearest keys."""
    spec = config_spec(argv)
    if isinstance(error, flags.Error):
        message = str(error)
        # A config file's own InputError arrives wrapped in a traceback; keep its message.
        return message.rsplit("InputError: ", 1)[1] if "InputError: " in message else message
    if isinstance(error, InputError):
        return str(error)
    if isinstance(error, (KeyError, AttributeError, TypeError, IndexError)):
        try:
            config = load_config(spec) if spec else None
        except Exception:  # noqa: BLE001 - it loaded once already; fall back to the raw error
            config = None
        key = missing_key(config, argv) if config is not None else None
        if key is not None:
            return unknown_key_message(config, key, spec)
    elif not isinstance(error, (FileNotFoundError, SyntaxError, ImportError)):
        raise error
    return f"--config: cannot load the config file: {' '.join(str(error).split())}"


def config_with(spec: str, overrides: Sequence[str]):
    """The ConfigDict of ``--config=FILE[:ARG]`` with each ``KEY=VALUE`` of ``overrides``
    applied as the commands apply ``--config.KEY=VALUE`` (ml_collections' parser, so the value
    takes the key's type); an override that does not apply is an InputError naming it."""
    from ml_collections import config_flags

    for item in overrides:
        if "=" not in item or not item.partition("=")[0]:
            raise InputError(f"{item!r}: expected KEY=VALUE, a config key and its value")
    argv = [f"--config.{item}" for item in overrides]
    full = ["config_with", f"--config={spec}", *argv]
    values = flags.FlagValues()
    # The config flag finds its overrides in sys_argv (sys.argv unless given).
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                    sys_argv=full)
    try:
        values(full)
    except Exception as e:  # noqa: BLE001 - sorted into one line by parse_error
        raise InputError(parse_error(e, full)) from None
    config = values["config"].value
    try:  # a file that failed to load gives a stand-in that raises on first use
        config.keys()
    except OSError as e:
        cause = e.__cause__ or e
        raise InputError(f"--config={spec}: cannot load the config file: "
                         f"{' '.join(str(cause).split())}") from None
    return config


def _examples(doc: str) -> list[str]:
    """The docstring's example command lines, each joined across its backslashed lines."""
    examples, lines = [], iter(doc.splitlines())
    for line in lines:
        if line.strip().startswith("python -m "):
            example = line.strip()
            while example.endswith("\\"):
                example = example[:-1] + next(lines, "").strip()
            examples.append(example)
    return examples


def _example_config(doc: str) -> str | None:
    m = re.search(r"--config=(\S+\.py(?::\w+)?)", doc)
    return m.group(1) if m else None


def _usage_line(doc: str, shared: Sequence[str]) -> str:
    """``usage: ...``: the shared flags the command reads, in brackets where an example goes
    without one."""
    examples = _examples(doc)
    parts = []
    for name, text in (("config", "--config=FILE[:PRESET] [--config.KEY=VALUE ...]"),
                       ("workdir", "--workdir=DIR")):
        if name in shared:
            needed = examples and all(f"--{name}=" in e for e in examples)
            parts.append(text if needed else f"[{text}]")
    return " ".join([f"usage: {program()}", *parts, "[flags]"])


def command_help(config=None, config_spec: str | None = None) -> str:
    """The text of ``--help`` for the running command.

    ``config`` is the resolved config of ``--config`` (with its overrides) when one was given:
    then every key of it is listed with its value and meaning, and the presets of its file.
    """
    doc = _doc()
    shared = shared_flags()
    parts = [_usage_line(doc, shared), "", doc, "", "flags:",
             *_flag_lines([sys.argv[0], "__main__"], shared)]
    if "config" in shared:
        parts += ["", "config files (--config=FILE:PRESET, or FILE alone for its default preset):",
                  *_preset_lines()]
        if config is not None:
            parts += _presets_paragraph(config_spec)
            parts += ["", textwrap.fill(
                f"config keys of {config_spec}, with their values (override any with "
                f"--config.KEY=VALUE):", _WIDTH), *config_lines(config)]
        else:
            example = _example_config(doc) or "configs/mnist.py:quick"
            parts += ["", textwrap.fill(
                f"config keys: {program()} --config={example} --help lists every key of that "
                f"config with its value and meaning (any config file and preset; override a key "
                f"with --config.KEY=VALUE).", _WIDTH)]
    statuses = EXIT_STATUSES if "overwrite" in shared else PLAIN_EXIT_STATUSES
    parts += ["", textwrap.fill(statuses, _WIDTH)]
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

