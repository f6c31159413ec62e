"""Shared test helpers: paths to the optional shared data, fixtures."""
import atexit
import os
import shutil
import sys
import tempfile

# One persistent XLA compilation cache per test session, in a fresh temporary folder removed at
# exit: many tests (and the experiments they start as subprocesses, which inherit the variables)
# compile the same backbone and adaptation step again under a new closure, which jit's in-memory
# cache does not recognise and the persistent cache (keyed by the compiled program) does. Every
# session starts cold, so no state carries over between runs. Measured on 3 tests of
# test_adapt.py alone on 2 cores: 121 s -> 80 s (test_adaptation_is_deterministic, which
# adapts twice, 55 s -> 13 s; benchmarks/README.md). A cache the user set is left as it is.
# Under pytest-xdist (pyproject.toml: two workers) the controller makes the folder and both
# workers (and their subprocesses) share it: the files of different workers hold many of the
# same programs (the adaptation step at test size, the backbone, the criterion), compiled once
# for the session instead of once per worker. JAX writes an entry without a lock when the cache
# has no size bound; a worker that reads an entry the other is still writing gets a truncated
# compressed file, which fails to decompress, and JAX then warns and compiles the program
# itself (jax._src.compiler._cache_read); no such warning in three whole-suite runs. The cache
# key includes the folder's path, so workers with folders of their own never shared an entry:
# one suite run wrote 4036 entries then, 3535 now (benchmarks/README.md "The test suite",
# Session 39).
_OWNED = "RODAJAX_TESTS_XLA_CACHE"   # set when the folder is this test session's own
if "JAX_COMPILATION_CACHE_DIR" not in os.environ or _OWNED in os.environ:
  if _OWNED not in os.environ:       # the controller (or a run without workers)
    os.environ[_OWNED] = tempfile.mkdtemp(prefix="rodajax-tests-xla-")
    atexit.register(shutil.rmtree, os.environ[_OWNED], ignore_errors=True)
  _XLA_CACHE = {"jax_compilation_cache_dir": os.environ[_OWNED],
                "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": -1}
  os.environ.update({k.upper(): str(v) for k, v in _XLA_CACHE.items()})
  if "jax" in sys.modules:   # imported before this file (a plugin): set it there too
    import jax
    for k, v in _XLA_CACHE.items():
      jax.config.update(k, v)

# XLA's CPU backend compiles with LLVM's optimisations off in the test session (the tests start
# subprocesses, which inherit it): most of the suite's time is compiling programs that then run
# on tiny inputs once or twice. Measured: tests/test_multiclass.py 175 -> 133 s, the adaptation
# step's compilation 8.3 -> 5.7 s (benchmarks/README.md "The test suite"). The semantics are
# XLA's at any level; a level the user set is left as it is.
# Likewise XLA's CPU fusion emitters are off (the older loop emitters): the roda step compiles
# in 6.6-8.2 s against 10.2-11.2 s, the held-out criterion in 1.2-1.5 s against 2.5-2.8 s
# (benchmarks/README.md "The test suite", Session 38).
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), _flag]).strip()

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SHARED = os.environ.get("RODAJAX_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


# The heaviest files first (seconds in a fresh-clone run, benchmarks/README.md "The test
# suite"): under `-n 2 --dist loadfile --no-loadscope-reorder` a worker takes the next file when
# it finishes one, so the long files start early and the short ones fill the gaps at the end
# (xdist's own order, most tests first, started test_multiclass.py last). Within a file the
# order is kept.
_HEAVY_FIRST = ("test_experiment.py", "test_adapt.py", "test_uda.py", "test_multiclass.py",
                "test_tool.py", "test_cli.py", "test_backbones.py", "test_sharding.py",
                "test_pointclouds.py", "test_transport_adapt.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(_HEAVY_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable


def shared_path(*parts):
  """Path under ../shared/data, or skip the test with the reason."""
  path = os.path.join(SHARED, *parts)
  if not os.path.exists(path):
    pytest.skip(f"shared data {path} is absent (only developers' machines have ../shared/data; "
                "set RODAJAX_SHARED_DATA to point elsewhere)")
  return path
