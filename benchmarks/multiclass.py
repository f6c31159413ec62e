"""Classes per second: the per-class loop vs one vmapped call (issue 14).

    python -m benchmarks.multiclass [--classes 1,4,8,15] [--size 64] [--repeats 3]

Each class: its own memory bank (texture images, EfficientNet-Lite0 stage3 +
stage5 features), 12 target images under contrast (severity 5), RoDA with the
default settings scaled to the image size (one pass, batch 4, safeguard on,
256 x 256 transport problems, the shift gate off so that every class adapts), then 12 test
images scored. Loop =
`tta.run` + `make_predict` class by class; vmap = `tta.run_classes` +
`make_class_predict` with `adapt.class_batch=0` (every class in one vmap) and
grouped = `class_batch=1` (`lax.map` class after class inside one program, the
CPU default). Both warm up once per class count (compilation not
counted); the medians of `--repeats` runs are reported, and the scores of
the two paths are compared in the same run.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import table
from configs import base
from experiments import loops, train, tta
from rodajax import adapt, backbones, features, patchcore, scoring


def texture(rng, s):
  yy, xx = np.mgrid[:s, :s] / s
  f = rng.uniform(2, 6, 2)
  img = 128 + 60 * np.sin(2 * np.pi * (f[0] * xx + f[1] * yy))[..., None] + rng.normal(0, 12, (s, s, 3))
  return np.clip(img + rng.integers(-40, 40, 3), 0, 255).astype(np.uint8)


def make_classes(n, s, ext, variables):
  out = []
  for c in range(n):
    rng = np.random.default_rng(c)
    train_imgs = np.stack([texture(rng, s) for _ in range(10 + c % 3 * 2)])
    bank = patchcore.fit_memory_bank(loops.batched(ext, variables, train_imgs, 4),
                                     jax.random.key(c), ratio=0.5, proj_dim=None)
    target = loops.corrupt("contrast", np.stack([texture(rng, s) for _ in range(12)]), 5,
                           jax.random.key(100 + c), 8)
    test = loops.corrupt("contrast", np.stack([texture(rng, s) for _ in range(12)]), 5,
                         jax.random.key(200 + c), 8)
    out.append(dict(bank=bank, source=train.source_of(bank), target=target, test=test))
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--classes", default="1,4,8,15")
  ap.add_argument("--size", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  s = args.size
  taps = ("stage3", "stage5")
  module, variables = backbones.create("efficientnet_lite0", "pretrained", taps=taps)
  extract = features.make_extractor(module, taps, s)
  counts = [int(x) for x in args.classes.split(",")]
  classes = make_classes(max(counts), s, jax.jit(extract), variables)
  cfg = base.get_base_config().adapt
  cfg.batch_images = 4
  cfg.gate = 0          # every class adapts (the gate would need a clean reference per class)
  cfg.target_patches = cfg.bank_patches = 256
  params = variables["params"]
  fns = tta.build("roda", cfg, module, extract, params, s)
  predict = patchcore.make_predict(extract, s)
  built = {}
  for cb in (0, 1):
    c2 = cfg.copy_and_resolve_references()
    c2.class_batch = str(cb)
    built[cb] = (c2, tta.build("roda", c2, module, extract, params, s, classes=True),
                 patchcore.make_class_predict(extract, params, s, class_batch=cb))

  def loop(cl):
    out = []
    for i, c in enumerate(cl):
      kept, _, _ = tta.run("roda", fns, cfg, variables, c["source"], c["target"], jax.random.key(i))
      out.append(predict(kept, jnp.asarray(c["bank"].bank), jnp.asarray(c["test"]))[0])
    return np.stack(jax.device_get(out))

  def vmapped(cl, cb):
    cfg_v, fns_v, predict_v = built[cb]
    kept, _, _ = tta.run_classes("roda", fns_v, cfg_v, [variables] * len(cl),
                                 [c["source"] for c in cl], [c["target"] for c in cl],
                                 [jax.random.key(i) for i in range(len(cl))])
    banks, valid = scoring.pad_banks([c["bank"].bank for c in cl])
    sc, _ = predict_v(adapt.stack_classes(kept), jnp.asarray(banks), jnp.asarray(valid),
                      jnp.asarray(np.stack([c["test"] for c in cl])))
    return np.asarray(sc)

  rows = []
  for n in counts:
    cl = classes[:n]
    res = {}
    for name, fn in (("loop", loop), ("vmap", lambda cl: vmapped(cl, 0)),
                     ("map", lambda cl: vmapped(cl, 1))):
      t = time.perf_counter()
      res[name] = fn(cl)                      # warm-up: compiles for this class count
      first = time.perf_counter() - t
      times = []
      for _ in range(args.repeats):
        t = time.perf_counter()
        fn(cl)
        times.append(time.perf_counter() - t)
      res[name + "_t"], res[name + "_first"] = statistics.median(times), first
    rel = lambda k: float(np.max(np.abs(res["loop"] - res[k]) / np.maximum(np.abs(res["loop"]), 1e-6)))
    rows.append((n, f"{n / res['loop_t']:.2f}", f"{n / res['vmap_t']:.2f}",
                 f"{n / res['map_t']:.2f}", f"{res['loop_t'] / res['vmap_t']:.2f}",
                 f"{res['loop_t'] / res['map_t']:.2f}",
                 f"{res['loop_first']:.0f} / {res['vmap_first']:.0f} / {res['map_first']:.0f}",
                 f"{rel('vmap'):.1e} / {rel('map'):.1e}"))
  print(f"### RoDA + scoring, {s} px, 12 target + 12 test images per class, median of "
        f"{args.repeats}, {jax.device_count()} {jax.default_backend()} device(s)\n")
  print(table(rows, ["classes", "loop classes/s", "vmap (class_batch 0) classes/s",
                     "grouped (class_batch 1) classes/s", "vmap / loop speed", "grouped / loop speed",
                     "first call s (loop / vmap / grouped)", "max rel. score diff vs loop (vmap / grouped)"]))


if __name__ == "__main__":
  main()
