"""Where the test suite's time goes: XLA compilations per test.

A pytest plugin, then a report. Run the suite with it (each xdist worker writes its own file):

  RODAJAX_COMPILE_LOG=/tmp/compiles PYTHONPATH=benchmarks pytest -p compile_counter
  python benchmarks/compile_counter.py /tmp/compiles        # prints the table

Per test: wall seconds (setup + call + teardown), the number of XLA compilations and their
seconds (JAX's `jax_log_compiles` messages; compilations in subprocesses the test starts are not
seen), and how many of them compiled a single primitive (`jit(add)`, `jit(slice)`, ...): code
run eagerly, op by op, which a `jax.jit` around it turns into one compilation.
"""
import collections
import glob
import json
import logging
import os
import re
import sys
import time

_PATTERN = re.compile(r"Finished XLA compilation of jit\((.*)\) in ([0-9.e+-]+)")
_EAGER = {"abs", "add", "broadcast_in_dim", "clamp", "concatenate", "conv_general_dilated",
          "convert_element_type", "cos", "div", "dot_general", "dynamic_slice",
          "dynamic_update_slice", "eq", "exp", "gather", "integer_pow", "log", "max", "maximum",
          "min", "minimum", "mul", "multiply", "neg", "pad", "_pad", "reduce_max",
          "reduce_sum", "_reduce_sum", "relu6", "reshape", "rsqrt", "scatter", "select_n",
          "sin", "slice", "sqrt", "square", "squeeze", "sub", "subtract", "tanh",
          "transpose", "true_divide", "_where", "where", "stack", "unstack", "_truncated_normal",
          "_uniform", "_normal"}
_current = {"test": None}
_data = {}


class _Handler(logging.Handler):

  def emit(self, record):
    test = _current["test"]
    m = _PATTERN.search(record.getMessage())
    if test is None or m is None:
      return
    d = _data[test]      # made by pytest_runtest_protocol before the test runs
    d["n"] += 1
    d["seconds"] += float(m.group(2))
    if m.group(1) in _EAGER:
      d["eager_n"] += 1
      d["eager_seconds"] += float(m.group(2))


def pytest_configure(config):
  os.environ["JAX_LOG_COMPILES"] = "1"     # before the tests import jax
  if "jax" in sys.modules:
    sys.modules["jax"].config.update("jax_log_compiles", True)
  logger = logging.getLogger("jax")
  logger.addHandler(_Handler())
  logger.setLevel(logging.DEBUG)


def pytest_runtest_protocol(item, nextitem):
  _current["test"] = item.nodeid
  _data.setdefault(item.nodeid, {"n": 0, "seconds": 0.0, "eager_n": 0, "eager_seconds": 0.0})
  _data[item.nodeid]["start"] = time.time()


def pytest_runtest_logfinish(nodeid, location):
  if nodeid in _data and "start" in _data[nodeid]:
    _data[nodeid]["wall"] = time.time() - _data[nodeid].pop("start")
  _current["test"] = None


def pytest_unconfigure(config):
  folder = os.environ.get("RODAJAX_COMPILE_LOG", "compile_log")
  os.makedirs(folder, exist_ok=True)
  worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
  if _data:
    with open(os.path.join(folder, f"{worker}.json"), "w") as f:
      json.dump(_data, f)


def report(folder: str, top: int = 25) -> str:
  tests = {}
  for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    worker = os.path.basename(path)[:-5]
    for k, v in json.load(open(path)).items():
      tests[k] = dict(v, worker=worker)
  if not tests:
    raise SystemExit(f"no compile logs in {folder}: run pytest with -p compile_counter first")
  lines = ["| test | worker | wall s | compilations | compile s | eager (one-op) compilations | their s |",
           "|---|---|---|---|---|---|---|"]
  for k, v in sorted(tests.items(), key=lambda kv: -kv[1].get("wall", 0))[:top]:
    lines.append(f"| `{k}` | {v['worker']} | {v.get('wall', 0):.1f} | {v['n']} | {v['seconds']:.1f} "
                 f"| {v['eager_n']} | {v['eager_seconds']:.1f} |")
  files, workers = collections.Counter(), collections.Counter()
  for k, v in tests.items():
    files[k.split("::")[0]] += v.get("wall", 0)
    workers[v["worker"]] += v.get("wall", 0)
  lines += ["", "| file | wall s |", "|---|---|"]
  lines += [f"| `{f}` | {t:.1f} |" for f, t in files.most_common()]
  total = lambda key: sum(v[key] for v in tests.values())
  lines += ["", f"per worker (wall s): {dict((w, round(t, 1)) for w, t in sorted(workers.items()))}; "
                f"all tests: {total('n')} compilations, {total('seconds'):.0f} s, of which "
                f"{total('eager_n')} one-op, {total('eager_seconds'):.0f} s"]
  return "\n".join(lines)


if __name__ == "__main__":
  print(report(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("RODAJAX_COMPILE_LOG", "compile_log")))
