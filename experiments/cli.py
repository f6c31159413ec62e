"""One command-line path for every command: flags, configs, help, errors.

Every `python -m experiments.<command>` parses its arguments here:

  --config FILE[:ARG]            an ml_collections config file (`get_config()` or
                                 `get_config(ARG)`)
  --config.key.sub=value         overrides, type-checked against the config's value
  --<flag>=value | --<flag> value the command's own flags
  --help / -h                    the flags, then every config key with its default and
                                 the one-line meaning written beside it in configs/*.py

and runs its `main` through `run`, which turns the mistakes a user can make
(`UserError` and the library's `DataError`, `CheckpointError`, a missing file,
a permission) into one or two lines on stderr and exit status 2. Anything else
is a bug and keeps its traceback. An interrupted run exits 130 and says that a
rerun resumes.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import re
import sys
from typing import Any, Callable, Sequence

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
EXIT_USER = 2


class UserError(Exception):
  """A mistake the user can fix; the message says what is wrong, where, and how to fix it."""


@dataclasses.dataclass
class Flag:
  name: str
  help: str
  default: Any = None
  required: bool = False


@dataclasses.dataclass
class Args:
  """Parsed command line: the config (None when the command takes none), its file, the flags."""
  config: ml_collections.ConfigDict | None
  config_file: str | None
  flags: dict
  overrides: dict


# --------------------------------------------------------------------------- configs


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The ConfigDict of `FILE[:ARG]`: `get_config()` or `get_config(ARG)` of the file."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    known = ", ".join(sorted(f for f in os.listdir(CONFIGS) if f.endswith(".py")
                             and not f.startswith("_") and f != "base.py"))
    raise UserError(f"config file {path!r} not found; pass one of configs/ ({known}) or the "
                    "path of your own")
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)   # configs import configs.base
  name = "rodajax_config_" + re.sub(r"\W", "_", os.path.abspath(path))
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UserError(f"config file {path!r} has a syntax error at line {e.lineno}: {e.msg}") from e
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path!r} defines no get_config(); a config file returns its "
                    "ml_collections.ConfigDict from get_config()")
  return module.get_config(arg) if arg else module.get_config()


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """{'block.key': value} of every leaf of `config`, in definition order."""
  out = {}
  for k, v in config.items():
    key = f"{prefix}{k}"
    if isinstance(v, ml_collections.ConfigDict):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _suggest(key: str, keys: Sequence[str]) -> str:
  close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
  if not close:  # the right leaf in the wrong block: --config.lr -> adapt.lr
    leaf = key.rsplit(".", 1)[-1]
    close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:1]
  return f"; did you mean --config.{close[0]}?" if close else ""


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def convert(key: str, raw: str, current: Any) -> Any:
  """`raw` (a string from the command line) as the type of the config's current value."""
  def bad(kind):
    return UserError(f"--config.{key}={raw!r}: expects {kind} (default {current!r})")
  if isinstance(current, bool):
    if raw.lower() in _TRUE | _FALSE:
      return raw.lower() in _TRUE
    raise bad("true or false")
  if isinstance(current, int):
    try:
      return int(raw)
    except ValueError:
      raise bad("an integer") from None
  if isinstance(current, float):
    try:
      value = float(raw)
    except ValueError:
      raise bad("a number") from None
    if not math.isfinite(value):
      raise bad("a finite number")
    return value
  if isinstance(current, (tuple, list)):   # comma-separated; the items' type from the default
    kind = type(current[0]) if current and type(current[0]) in (int, float) else str
    items = [s.strip() for s in raw.split(",") if s.strip()]
    try:
      return type(current)(kind(s) for s in items)
    except ValueError:
      raise bad(f"comma-separated {'integers' if kind is int else 'numbers'}") from None
  if current is None or isinstance(current, str):
    return raw
  raise bad(type(current).__name__)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
  """Sets each `{'block.key': raw}` on `config`, checking that the key exists and the type fits."""
  flat = flatten(config)
  blocks = {k.rsplit(".", 1)[0] for k in flat if "." in k}
  for key, raw in overrides.items():
    if key in blocks:
      inside = ", ".join(k for k in flat if k.startswith(key + "."))
      raise UserError(f"--config.{key} is a block, not a value; set one of its keys: {inside}")
    if key not in flat:
      raise UserError(f"unknown config key --config.{key}{_suggest(key, list(flat))} "
                      "(--help lists the keys)")
    value = convert(key, raw, flat[key])
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    try:
      node[leaf] = value
    except TypeError as e:
      raise UserError(f"--config.{key}={raw!r}: {e}") from e


def meanings(config_file: str) -> dict[str, str]:
  """{'block.key': meaning} from the `c.block.key = value  # meaning` comments of the config.

  Reads the file and the configs/ modules it imports (configs.base); a comment
  continued on the next lines (indented, `#` only) is joined.
  """
  out: dict[str, str] = {}
  seen = set()

  def read(path):
    if path in seen or not os.path.isfile(path):
      return
    seen.add(path)
    with open(path) as f:
      lines = f.read().splitlines()
    for mod in re.findall(r"from configs\.(\w+) import", "\n".join(lines)):
      read(os.path.join(CONFIGS, mod + ".py"))
    last = None
    for line in lines:
      m = re.match(r"\s*\w+\.([\w.]+)\s*=\s*(.*?)\s*#\s*(.*)$", line)
      if m:
        last = m.group(1)
        out[last] = m.group(3).strip()
        continue
      c = re.match(r"\s+#\s*(.*)$", line)
      if c and last:
        out[last] += " " + c.group(1).strip()
      else:
        last = None
  read(os.path.abspath(config_file))
  return out


def help_text(doc: str, flags: Sequence[Flag], config=None, config_file=None) -> str:
  lines = [doc.strip(), "", "flags:"]
  for f in flags:
    default = " (required)" if f.required else (f" (default {f.default})"
                                                 if f.default not in (None, "") else "")
    lines.append(f"  --{f.name}{default}: {f.help}")
  lines.append("  --help, -h: this text")
  if config is not None:
    lines += ["", f"config keys of {os.path.relpath(config_file)} "
              "(--config.KEY=VALUE; the value must have the default's type):"]
    mean = meanings(config_file)
    for k, v in flatten(config).items():
      lines.append(f"  {k} = {v!r}" + (f"  # {mean[k]}" if k in mean else ""))
  return "\n".join(lines)


# --------------------------------------------------------------------------- argv


def parse(argv: Sequence[str], doc: str, flags: Sequence[Flag],
          default_config: str | None = None, overrides_of: tuple[str, str] | None = None) -> Args:
  """Parses `argv` (without the program name) for a command.

  `default_config`: the config file used without `--config` ("" = the command
  takes a config but none by default; None = the command takes no config).
  `overrides_of=(config_file, prefix)`: a command without --config whose
  config comes from elsewhere (a saved model) still takes `--config.<prefix>*`
  overrides, returned unapplied in `Args.overrides`; help lists those keys of
  `config_file`. Prints help and exits 0 on --help.
  """
  by_name = {f.name: f for f in flags}
  values = {f.name: f.default for f in flags}
  overrides: dict[str, str] = {}
  config_spec = default_config or None
  want_help = False
  i, argv = 0, list(argv)
  while i < len(argv):
    a = argv[i]
    i += 1
    if a in ("-h", "--help", "--helpfull", "--helpshort"):
      want_help = True
      continue
    if not a.startswith("--"):
      raise UserError(f"unexpected argument {a!r}; flags are --name=value (--help lists them)")
    name, eq, value = a[2:].partition("=")
    if not eq:
      if i >= len(argv) or argv[i].startswith("--"):
        raise UserError(f"--{name} needs a value: --{name}=VALUE")
      value = argv[i]
      i += 1
    if name == "config" and default_config is not None:
      config_spec = value
    elif name.startswith("config.") and (default_config is not None or overrides_of):
      key = name[len("config."):]
      if overrides_of and default_config is None and not key.startswith(overrides_of[1]):
        raise UserError(f"--{name}: this command takes only --config.{overrides_of[1]}* "
                        "overrides (the rest is fixed by the saved model)")
      overrides[key] = value
    elif name in by_name:
      values[name] = value
    else:
      known = [f.name for f in flags] + (["config"] if default_config is not None else [])
      close = difflib.get_close_matches(name, known, n=1)
      hint = f"; did you mean --{close[0]}?" if close else ""
      raise UserError(f"unknown flag --{name}{hint} (--help lists the flags)")
  config = None
  config_file = config_spec.partition(":")[0] if config_spec else None
  if config_spec:
    config = load_config(config_spec)
  if want_help:
    if config is None and overrides_of:
      config_file = overrides_of[0]
      full = load_config(config_file)
      config = ml_collections.ConfigDict(
          {k: v for k, v in full.items() if overrides_of[1].startswith(k + ".")})
    print(help_text(doc, flags, config, config_file))
    raise SystemExit(0)
  missing = [f.name for f in flags if f.required and not values[f.name]]
  if missing:
    raise UserError(f"missing --{missing[0]}; {by_name[missing[0]].help} (--help for usage)")
  if default_config is not None and config is None:
    raise UserError("missing --config FILE (e.g. --config configs/mvtec.py)")
  if config is not None:
    apply_overrides(config, overrides)
  return Args(config, config_file, values, overrides)


# --------------------------------------------------------------------------- running


def user_errors() -> tuple[type, ...]:
  """The exception types whose message is meant for the user (no traceback)."""
  from rodajax.backbones.checkpoint import CheckpointError
  from rodajax.data.images import DataError
  return (UserError, DataError, CheckpointError, FileNotFoundError, NotADirectoryError,
          PermissionError)


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
  """Runs `main(argv)`; user mistakes -> 'error: ...' on stderr and exit 2."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    main(argv)
  except SystemExit:
    raise   # --help and deliberate exits; and user_errors() below would import JAX
  except KeyboardInterrupt:
    print("\ninterrupted; what was written is kept, and a rerun resumes", file=sys.stderr)
    raise SystemExit(130) from None
  except user_errors() as e:
    msg = str(e)
    if isinstance(e, PermissionError):
      msg = f"cannot write {e.filename!r} (permission denied); choose a writable output folder"
    elif isinstance(e, (FileNotFoundError, NotADirectoryError)) and e.filename and \
        str(e.filename) not in msg:
      msg = f"{msg}: {e.filename}"
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(EXIT_USER) from None


def writable_folder(path: str, what: str, fix: str) -> None:
  """Creates folder `path` if needed; a UserError naming `what` and `fix` when it cannot be written."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create {what} {path!r} ({e.strerror}); {fix}") from None
  if not os.access(path, os.W_OK):
    raise UserError(f"{what} {path!r} is read-only; {fix}")


def parse_bool(name: str, value) -> bool:
  """A command's true/false flag."""
  if str(value).lower() not in _TRUE | _FALSE:
    raise UserError(f"--{name}={value!r}: expects true or false")
  return str(value).lower() in _TRUE


def notes_line(notes: dict) -> str:
  """'conversion: count; ...' of `rodajax.data.tally_notes`, sorted."""
  return "; ".join(f"{k}: {v}" for k, v in sorted(notes.items()))


def quiet_logs() -> None:
  """Orbax and absl log every checkpoint step at INFO; commands show warnings only."""
  import logging
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
  except ImportError:
    pass


def warn(msg: str) -> None:
  print(f"warning: {msg}", file=sys.stderr, flush=True)
