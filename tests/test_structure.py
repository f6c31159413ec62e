"""The house rules that a reader of the code relies on, checked on the source (issue 14).

- rodajax/ is pure: no module-level caches (lru_cache, memo dicts, globals)
  and no host loops over optimisation steps or minibatches (those live in
  experiments/: `experiments.loops`, `experiments.tta`).
- experiments never import another experiment's private names.
Each checker is also run on a planted violation, so a checker that cannot
fail would fail here.
"""
import ast
import os
import re

from conftest import ROOT

CACHE_DECORATORS = {"lru_cache", "cache", "cached_property"}
STEP_CALLS = re.compile(r"(^|_)step$|^apply_updates$|^value_and_grad$|^update$")


def _sources(folder):
  for d, _, files in os.walk(os.path.join(ROOT, folder)):
    for f in sorted(files):
      if f.endswith(".py"):
        p = os.path.join(d, f)
        with open(p, encoding="utf-8") as fh:
          yield os.path.relpath(p, ROOT), fh.read()


def _name(node):
  if isinstance(node, ast.Attribute):
    return node.attr
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Call):
    return _name(node.func)
  return ""


def cache_violations(src: str) -> list[str]:
  """Module-level caches: cache decorators, `global`, names bound to empty mutable containers."""
  tree = ast.parse(src)
  out = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      out += [f"line {node.lineno}: @{_name(d)}" for d in node.decorator_list
              if _name(d) in CACHE_DECORATORS]
    if isinstance(node, ast.Global):
      out.append(f"line {node.lineno}: global {', '.join(node.names)}")
  for node in tree.body:
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
      v = node.value
      empty = ((isinstance(v, (ast.Dict, ast.List, ast.Set)) and not getattr(v, "keys", getattr(v, "elts", None)))
               or (isinstance(v, ast.Call) and _name(v) in ("dict", "list", "set", "OrderedDict",
                                                             "defaultdict") and not v.args))
      if empty:
        out.append(f"line {node.lineno}: module-level empty container (a cache?)")
  return out


def _slices_by_batch(node) -> bool:
  for sub in ast.walk(node):
    if isinstance(sub, ast.Slice) and sub.upper is not None:
      if any(isinstance(n, ast.Name) and "batch" in n.id for n in ast.walk(sub.upper)):
        return True
  return False


def loop_violations(src: str) -> list[str]:
  """Host loops that run optimisation steps or walk data in minibatches."""
  out = []
  for node in ast.walk(ast.parse(src)):
    if not isinstance(node, (ast.For, ast.While)):
      continue
    calls = {_name(c.func) for b in node.body for c in ast.walk(b) if isinstance(c, ast.Call)}
    steps = sorted(c for c in calls if STEP_CALLS.search(c))
    if steps:
      out.append(f"line {node.lineno}: loop calls {', '.join(steps)}")
    elif any(_slices_by_batch(b) for b in node.body):
      out.append(f"line {node.lineno}: loop over minibatches")
  return out


def private_imports(src: str, modules: set[str]) -> list[str]:
  """Uses of another experiment's `_private` names (imports or attribute access)."""
  tree = ast.parse(src)
  imported = {}
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module.startswith("experiments."):
        out += [f"line {node.lineno}: from {node.module} import {a.name}"
                for a in node.names if a.name.startswith("_")]
      if node.module == "experiments":
        imported.update({a.asname or a.name: a.name for a in node.names if a.name in modules})
    if isinstance(node, ast.Import):
      imported.update({(a.asname or a.name): a.name.split(".")[-1] for a in node.names
                       if a.name.startswith("experiments.")})
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in imported and node.attr.startswith("_")
        and not node.attr.startswith("__")):
      out.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
  return out


def test_checkers_catch_planted_violations():
  planted = ("import functools\n_CACHE = {}\n@functools.lru_cache(maxsize=8)\ndef f(x):\n"
             "  global _CACHE\n  return x\n")
  assert len(cache_violations(planted)) == 3
  assert cache_violations("KNOWN = {'a': 1}\nNAMES = ('a',)\n") == []
  loop = ("def run(step, state, xs, batch):\n  for s in range(0, len(xs), batch):\n"
          "    x = xs[s:s + batch]\n  for b in xs:\n    state = step(state, b)\n")
  assert len(loop_violations(loop)) == 2
  assert loop_violations("for i in range(3):\n  y = i * 2\n") == []
  priv = ("from experiments import train\nfrom experiments.tta import _helper\n"
          "x = train._csv\ny = train.parse_list\n")
  assert len(private_imports(priv, {"train", "tta"})) == 2


def test_library_has_no_module_caches_and_no_step_loops():
  bad = []
  for path, src in _sources("rodajax"):
    bad += [f"{path}: {v}" for v in cache_violations(src) + loop_violations(src)]
  assert not bad, "rodajax/ must stay pure (loops and caches belong in experiments/):\n" + "\n".join(bad)


def test_experiments_do_not_import_each_others_private_names():
  modules = {f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments")) if f.endswith(".py")}
  bad = []
  for path, src in _sources("experiments"):
    bad += [f"{path}: {v}" for v in private_imports(src, modules)]
  assert not bad, "\n".join(bad)
