"""UDA runs per second: one by one vs trained together (one-vs-all classes x seeds, issue 14).

    python -m benchmarks.uda_runs [--runs 1,4,8,16] [--steps 60] [--repeats 3]

Real inputs: EfficientNet-Lite0 trunk features (frozen stages 1-6, 224 px) of 96 ELPV mono
(source) and 96 poly (target) cells; each run has its own head initialisation (its seed),
source / target subsets and dominant set, as the one-vs-all protocol's runs do. Deep SVDD + MMD
(the default), `--steps` Adam steps of 32 + 32. Loop = `loops.train_uda` run by run; together =
`loops.train_uda_runs` with class_batch 0 (one vmap) and 1 (lax.map, the CPU default). Medians of
`--repeats` after a warm-up; the runs' final losses are compared in the same run.
"""
import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import table
from experiments import loops, uda_train
from rodajax import backbones, uda
from rodajax.data.elpv import load_elpv
from rodajax.features import crop_and_normalise


def trunk(cell, n, module, variables, start):
  imgs = load_elpv(cell, 224, seed=0).train.images[:n]
  fn = functools.partial(jax.jit(uda.trunk_features(module, start)), variables)
  return np.concatenate([np.asarray(fn(crop_and_normalise(jnp.asarray(imgs[i:i + 16]), 224)))
                         for i in range(0, n, 16)])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--runs", default="1,4,8,16")
  ap.add_argument("--steps", type=int, default=60)
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  module, variables = backbones.create("efficientnet_lite0", "pretrained")
  start = uda.stage_start(module, 7)
  hs_all, ht_all = (trunk(c, 96, module, variables, start) for c in ("mono", "poly"))
  s = uda.Settings(alignment="mmd", steps=args.steps, batch=32, lr=1e-3)
  fns = uda_train.StepFunctions()
  counts = [int(x) for x in args.runs.split(",")]
  runs = []
  rng = np.random.default_rng(0)
  for r in range(max(counts)):
    model, v = uda.init_model(module, variables, start, 128, jax.random.key(r), jnp.asarray(hs_all))
    i_s, i_t = rng.choice(96, 64, replace=False), rng.choice(96, 64, replace=False)
    runs.append((v, hs_all[i_s], ht_all[i_t], rng.random(64) < 0.8, jax.random.key(100 + r)))
  template = uda.init_params(model, runs[0][0], jax.random.key(0))
  step_fns = fns.step(model, s, template)
  together = {cb: loops.uda_run_step(model, s, template, cb) for cb in (0, 1)}

  def loop(rs):
    return [loops.train_uda(model, step_fns, v, h, t, d, s, k)[2]["loss_last"]
            for v, h, t, d, k in rs]

  def joint(rs, cb):
    vs, hs, ht, ds, ks = (list(x) for x in zip(*rs))
    return [o[2]["loss_last"] for o in loops.train_uda_runs(model, together[cb], vs, hs, ht, ds, s,
                                                            ks, fns.embed(model))]
  rows = []
  for n in counts:
    rs, res = runs[:n], {}
    for name, fn in (("loop", loop), ("vmap", lambda r: joint(r, 0)), ("map", lambda r: joint(r, 1))):
      res[name] = np.asarray(fn(rs))
      times = []
      for _ in range(args.repeats):
        t = time.perf_counter()
        fn(rs)
        times.append(time.perf_counter() - t)
      res[name + "_t"] = statistics.median(times)
    diff = max(float(np.max(np.abs(res[k] - res["loop"]) / np.abs(res["loop"]))) for k in ("vmap", "map"))
    rows.append((n, f"{n / res['loop_t']:.2f}", f"{n / res['vmap_t']:.2f}", f"{n / res['map_t']:.2f}",
                 f"{res['loop_t'] / res['vmap_t']:.2f}", f"{res['loop_t'] / res['map_t']:.2f}",
                 f"{diff:.1e}"))
  print(f"### UDA training, {args.steps} steps of 32 + 32, ELPV trunk features, median of "
        f"{args.repeats}, {jax.device_count()} {jax.default_backend()} device(s)\n")
  print(table(rows, ["runs", "loop runs/s", "vmap (class_batch 0) runs/s",
                     "grouped (class_batch 1) runs/s", "vmap / loop", "grouped / loop",
                     "max rel. final-loss diff"]))


if __name__ == "__main__":
  main()
