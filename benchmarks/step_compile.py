"""Compilation time of the adaptation step and the held-out criterion at test sizes.

The test suite's time is mostly XLA compilation (benchmarks/README.md "The test suite"). This
compiles, in a fresh process per XLA setting, the programs the tests compile most often, at the
tests' sizes (EfficientNet-Lite0 random init, 64 px, 2 images x 4 views, 32 + 32 patches per
transport problem, a 51-row bank; the class steps map the roda step over 2 classes as
`adapt.class_map` does, every leaf of the state per class where the experiments share the frozen
weights), and prints the median of `--repeats` runs:

  python benchmarks/step_compile.py                 # XLA_FLAGS "", -O0, and -O0 without the
                                                    # fusion emitters (the test session's flags)
  python benchmarks/step_compile.py --flags ""      # one setting
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = r'''
import dataclasses, json, time
import jax, jax.numpy as jnp, numpy as np
from configs import base
from experiments import tta
from rodajax import adapt, backbones, features
S, taps = 64, ("stage3", "stage5")
module, variables = backbones.create("efficientnet_lite0", None, taps=taps)
extract = features.make_extractor(module, taps, S)
cfg = base.get_base_config().adapt
cfg.batch_images, cfg.target_patches, cfg.bank_patches = 2, 32, 32
imgs = jnp.zeros((2, S, S, 3), jnp.uint8)
d = jax.eval_shape(extract, variables, imgs).shape[-1]
bank = jnp.asarray(np.random.default_rng(0).normal(size=(51, d)).astype(np.float32))
source = adapt.Source(bank, bank.mean(0), jnp.eye(d))
s = tta.settings(cfg, "roda")
opt = adapt.make_optimizer(variables["params"], 1e-3)
state, key = adapt.init_state(variables, opt), jax.random.key(0)
crit = lambda v, x, k: adapt.holdout_criterion(extract(v, x).reshape(2, -1, d), source, k, s)
step = adapt.make_step(s, extract, opt)
two = lambda t: jax.tree.map(lambda a: jnp.stack([a, a]), t)   # 2 classes on a leading axis
args2 = (two(state), two(source), jnp.stack([imgs, imgs]), jax.random.split(key, 2))
one_at = lambda i, args: step(*jax.tree.map(lambda a: a[i], args))
out = {}
for name, fn, args in (
    ("step (roda)", step, (state, source, imgs, key)),
    ("class step, 2 classes: one vmap (class_batch 0)", adapt.class_map(step, (0,) * 4, 0), args2),
    ("class step, 2 classes: lax.map, no vmap (class_batch 1)", adapt.class_map(step, (0,) * 4, 1),
     args2),
    ("class step, 2 classes: lax.map over vmaps of 1 (class_batch 1 before 2026-12-07)",
     lambda *a: jax.lax.map(lambda i: one_at(i, a), jnp.arange(2), batch_size=1), args2),
    ("step (moment)", adapt.make_step(dataclasses.replace(s, method="moment"), extract, opt),
     (state, source, imgs, key)),
    ("held-out criterion", crit, (variables, imgs, key))):
  lowered = jax.jit(fn).lower(*args)
  t0 = time.perf_counter()
  lowered.compile()
  out[name] = time.perf_counter() - t0
print("RESULT" + json.dumps(out))
'''


def measure(flags: str) -> dict:
  env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)    # compile, do not read a cache
  p = subprocess.run([sys.executable, "-c", _CHILD], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=900)
  if p.returncode:
    raise SystemExit(p.stderr[-2000:])
  return json.loads(p.stdout.split("RESULT", 1)[1])


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--flags", action="append",
                  help='XLA_FLAGS per setting (repeatable; default: "", -O0, and -O0 '
                       'with --xla_cpu_use_fusion_emitters=false)')
  ap.add_argument("--repeats", type=int, default=3)
  a = ap.parse_args()
  o0 = "--xla_backend_optimization_level=0"
  settings = a.flags if a.flags is not None else [
      "", o0, f"{o0} --xla_cpu_use_fusion_emitters=false"]   # the last: tests/conftest.py
  runs = {f: [measure(f) for _ in range(a.repeats)] for f in settings}
  names = list(next(iter(runs.values()))[0])
  med = lambda xs: sorted(xs)[len(xs) // 2]
  print(f"| program (compile s, median of {a.repeats}) | " +
        " | ".join(f"`{f or 'default'}`" for f in settings) + " |")
  print("|---|" + "---|" * len(settings))
  for n in names:
    print(f"| {n} | " + " | ".join(f"{med([r[n] for r in runs[f]]):.1f}" for f in settings) + " |")


if __name__ == "__main__":
  main()
