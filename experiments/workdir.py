"""A run's output folder: resume from what is there, never lose it, say where it is.

`open_run` is the first thing a command does with its workdir:
* a damaged results.json is set aside (`results.json.corrupt-N`) with a warning,
  and its records are recomputed;
* when every planned record is already there, nothing is written (a complete
  workdir may be read-only) and the run only reports;
* otherwise the folder must be writable (checked before any work), and
  config.json is written only when it changed; when it changed and records are
  already there, a warning names the settings that differ (records are reused by
  identity -- dataset, class, method, seed, ... -- not by setting, so a changed
  setting needs a fresh workdir to take effect on them).
`summary_line` is the last line of every run: where the results are, and what
was reused.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Iterable

import ml_collections

from experiments import cli
from rodajax import report


@dataclasses.dataclass
class Run:
  workdir: str
  records: list
  done: set
  planned: int
  reused: int
  complete: bool
  notes: list


def open_run(workdir: str, config, planned: Iterable[tuple],
             record_id: Callable[[dict], tuple] = report.record_id) -> Run:
  planned = set(planned)
  notes = []
  try:
    records = report.load_records(workdir)
  except report.CorruptResults as e:
    path = os.path.join(workdir, "results.json")
    if not os.access(workdir, os.W_OK):
      raise cli.UserError(f"{e}, and {workdir} is read-only; make it writable or pass another "
                          "--workdir") from None
    aside = report.set_aside(path)
    cli.warn(f"{e}; moved it to {aside} and recomputing its records")
    notes.append(f"damaged results.json moved to {aside}")
    records = []
  done = {record_id(r) for r in records}
  reused = len(planned & done)
  complete = bool(planned) and planned <= done
  text = config.to_json_best_effort(indent=1)
  path = os.path.join(workdir, "config.json")
  old = open(path).read() if os.path.isfile(path) else None
  changed = config_changes(old, text) if old is not None and old != text and records else []
  if changed:
    cli.warn(f"{workdir} holds {len(records)} records written with another config.json; "
             f"changed: {'; '.join(changed)}. Records already there are reused as they are "
             "(matched by dataset, class, method, seed, not by these settings): pass a fresh "
             "--workdir if the change should apply to them")
    notes.append(f"config changed: {'; '.join(changed)}")
  if not complete:
    cli.writable_folder(workdir, "the workdir", f"{len(planned - done)} of {len(planned)} "
                        "records are still to compute: make it writable or pass another "
                        "--workdir")
    if old != text:
      report.atomic_write(path, text)
  return Run(workdir, records, done, len(planned), reused, complete, notes)


def config_changes(old: str, new: str) -> list[str]:
  """`["key: old -> new", ...]` between two config.json texts (dotted keys, sorted)."""
  try:
    a, b = (cli.flatten(ml_collections.ConfigDict(json.loads(t))) for t in (old, new))
  except (ValueError, TypeError, AttributeError):
    return ["config.json (unreadable before)"]
  missing = object()
  return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def summary_line(run: Run, computed: int, extra: str = "") -> str:
  where = os.path.join(run.workdir, "results.json")
  md = os.path.join(run.workdir, "results.md")
  if run.complete:
    head = f"all {run.planned} records were already in {where}; nothing recomputed"
  else:
    head = (f"results: {where} and {md} ({run.planned} records: {run.reused} reused, "
            f"{computed} computed)")
  return head + (f"; {extra}" if extra else "") + "".join(f"; {n}" for n in run.notes)
