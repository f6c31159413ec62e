"""Probe (not a test): does the full RoDA problem's Sinkhorn kernel fit float32 on real features?

  python scripts/kernel_range_probe.py BOTTLE_BANK ELPV_MONO_BANK

BANK: a bank checkpoint folder written by `experiments.roda` (`<workdir>/banks/<set>_<cat>_<hash>`,
e.g. from `scripts/dev_sets.sh`'s runs). For the first 8 test images of bottle (../shared) and
ELPV mono, clean and at severity 5 of gaussian noise, brightness and contrast (seed 0), the 8 x 4
dihedral views' 25,088 patches against the whole bank, at the default epsilon 0.02 x mean cost:
the largest (C_ij - min_j C_ij) / epsilon (above ~87 the row-centred kernel exp(-that) is 0 in
float32), the share of zero kernel entries and the bank entries whose whole column is 0.
Prints one line per (set, shift). docs/results.md, "Speed", has its output of 2026-12-08.
"""
import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/

from benchmarks.sinkhorn_passes import kernel_range  # noqa: E402
from experiments import train  # noqa: E402
from rodajax import augment, data, patchcore, transport  # noqa: E402

SETS = (("mvtec", {}, "bottle"),
        ("elpv", {"max_test_normal": 50, "max_test_anomalous": 50}, "mono"))

if __name__ == "__main__":
  if len(sys.argv) != 3:
    raise SystemExit(__doc__)
  for (name, data_kw, cat), path in zip(SETS, sys.argv[1:]):
    c = importlib.import_module(f"configs.{name}").get_config()
    for k, v in data_kw.items():
      c.data[k] = v
    _, _, extract = train.build_model(c)
    tree = ocp.StandardCheckpointer().restore(os.path.abspath(path))
    bank = jnp.asarray(patchcore.MemoryBank.from_tree(tree["memory"]).bank)
    imgs = np.asarray(data.load(c.data, cat).test.images[:8])
    for shift in ("clean", "gaussian_noise", "brightness", "contrast"):
      x = imgs if shift == "clean" else np.asarray(train.shifted_images(imgs, shift, 5, 0, 8))
      z = extract(tree["variables"], augment.views(jnp.asarray(x), jax.random.key(0), 4))
      cost = transport.euclidean_cost(z.reshape(-1, bank.shape[1]), bank)
      eps, span, zero_share, zero_cols = kernel_range(cost)
      print(f"{cat} {shift}: {cost.shape[0]} x {cost.shape[1]}, epsilon {eps:.3f}, "
            f"largest span {span:.0f}, zero kernel entries {100 * zero_share:.2f} %, "
            f"all-zero columns {zero_cols}", flush=True)
      del cost
