"""Label-free view of a shift through BatchNorm (issue 11): how the adaptation images' statistics
compare with the source running statistics, per dev set, shift and seed.

For each (dataset, shift at severity 5, seed) the adaptation split of `experiments.roda`
(`train.target_split`, 20 %) is corrupted as there, its BatchNorm statistics are estimated as
`bn_mode=target_stats` does (`tta.target_statistics`, source model), and the log ratio
log(var_target / var_source) is averaged per layer. Printed: the mean over every channel of
every layer, and the stem's (the first BatchNorm) minus its value on the clean splits of the
same dataset; then per split the stem ratio `bn_mode=routed` decides on
(`adapt.stem_log_var_ratio`: live channels only), its range over seeds.

  python scripts/bn_variance_ratio.py [--out runs/bn_variance_ratio.json] [bottle tire mono poly]
"""
import argparse
import collections
import json
import os

import jax
import numpy as np

from configs import elpv, mvtec
from experiments import train, tta
from rodajax import adapt, backbones, data
from rodajax.report import atomic_write

SHIFTS = ("clean", "gaussian_noise", "defocus_blur", "brightness", "contrast")
STEM = "['_bn0']['var']"   # EfficientNet-Lite's first BatchNorm
ROUTED = "stem_log_var_ratio"   # what bn_mode=routed decides on (live channels only)


def config_of(name: str):
  """The dev sets as `scripts/gate_runs.sh` runs them."""
  if name in ("mono", "poly"):
    c = elpv.get_config()
    c.data.categories = (name,)
    c.data.max_test_normal, c.data.max_test_anomalous = 50, 50
  else:
    c = mvtec.get_config()
    if name == "tire":
      c.data.name, c.data.root, c.data.categories = "mvtec3d", "../shared/data/mvtec_3d", ("tire",)
  c.shift.adapt_fraction = 0.2
  return c


def log_ratios(source_stats, target_stats) -> dict:
  """{layer variance key: [mean over channels of log(var_t / var_s), channels]}."""
  flat = lambda t: {jax.tree_util.keystr(p): np.asarray(v)
                    for p, v in jax.tree_util.tree_flatten_with_path(t)[0]
                    if jax.tree_util.keystr(p).endswith("['var']")}
  s, t = flat(source_stats), flat(target_stats)
  return {k: [float(np.mean(np.log(np.maximum(t[k], 1e-12) / np.maximum(s[k], 1e-12)))),
              int(s[k].size)] for k in s}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("datasets", nargs="*", default=["bottle", "tire", "mono", "poly"])
  p.add_argument("--seeds", default="0,1,2,3,4,5")
  p.add_argument("--out", default="runs/bn_variance_ratio.json")
  a = p.parse_args()
  out = json.load(open(a.out)) if os.path.exists(a.out) else {}
  for name in a.datasets:
    c = config_of(name)
    train.validate(c)
    module, variables, extract = train.build_model(c)
    ds = data.load(c.data, c.data.categories[0], seed=c.seed)
    fns = tta.build("bn_stats", c.adapt, module, extract, variables["params"], c.data.crop)
    for shift in SHIFTS:
      for seed in (int(s) for s in a.seeds.split(",")):
        key = f"{name}/{shift}/{seed}"
        if key in out:
          continue
        x = train.shifted_images(ds.test.images, shift, 5, seed, c.batch_size)
        idx, _ = train.target_split(len(ds.test), c.shift.adapt_fraction, seed)
        t = tta.target_statistics(fns.moments, variables, x[idx], c.adapt.stats_batch)
        out[key] = log_ratios(variables["batch_stats"], t)
        out[key][ROUTED] = float(adapt.stem_log_var_ratio(
            variables["batch_stats"], t, backbones.stem_batchnorm(variables["batch_stats"])))
      atomic_write(a.out, json.dumps(out))
  by = collections.defaultdict(list)
  for key, r in out.items():
    name, shift, _ = key.split("/")
    layers = [v for k, v in r.items() if k != ROUTED]
    m, n = np.asarray([v[0] for v in layers]), np.asarray([v[1] for v in layers])
    by[name, shift].append((float(np.sum(m * n) / np.sum(n)), r[STEM][0], r.get(ROUTED)))
  print("| data | shift | n | mean log var ratio, every channel | stem: minus the clean splits' |")
  print("|---|---|---|---|---|")
  for name in a.datasets:
    clean = np.mean([s for _, s, _ in by[name, "clean"]]) if by[name, "clean"] else np.nan
    for shift in SHIFTS:
      v = by[name, shift]
      if v:
        print(f"| {name} | {shift} | {len(v)} | {np.mean([g for g, _, _ in v]):+.3f} | "
              f"{np.mean([s for _, s, _ in v]) - clean:+.2f} |")
  print(f"\n| data | shift | n | {ROUTED} (adapt.stem_log_var_ratio): min | max |")
  print("|---|---|---|---|---|")
  for name in a.datasets:
    for shift in SHIFTS:
      v = [x for _, _, x in by[name, shift] if x is not None]
      if v:
        print(f"| {name} | {shift} | {len(v)} | {min(v):+.2f} | {max(v):+.2f} |")


if __name__ == "__main__":
  main()
