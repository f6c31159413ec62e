"""How much of the 3D Gaussian-noise gap any feature alignment could recover (issue 15).

  python scripts/pc_noise_oracle.py --root DEV [--categories a,b] [--seeds 0,1,2]
      [--severities 1,3,5] [--out runs/pc_oracle.json]

Per class, seed and noise severity, object AUROC on the whole test set of three
detectors, all with the shipped `configs/pointcloud.py` settings:

  clean   the source bank (clean training clouds) on the clean test clouds;
  none    the source bank on the noisy test clouds (what adaptation starts from);
  oracle  a bank fitted on the training clouds with noise of the same sigma (an
          independent draw) on the noisy test clouds: the detector one would have
          if the normal data of the new conditions were known. It bounds what an
          adaptation that maps target features back onto the source bank can reach,
          since the oracle bank is the target normals' features themselves.

Prints a table per severity (mean over classes and seeds) and writes every value
to --out. A diagnostic for docs/pointclouds.md, not part of the library.
"""
import argparse
import json
import os

import jax
import numpy as np

from configs import pointcloud
from experiments import loops, train
from rodajax import data, metrics, points
from rodajax.report import atomic_write


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", required=True)
  p.add_argument("--categories", default="")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--severities", default="1,3,5")
  p.add_argument("--out", default="runs/pc_oracle.json")
  a = p.parse_args()
  c = pointcloud.get_config()
  c.data.root = a.root
  c.data.categories = tuple(x for x in a.categories.split(",") if x)
  seeds = [int(s) for s in a.seeds.split(",")]
  sevs = [int(s) for s in a.severities.split(",")]
  _, variables, extract = train.build_model(c)
  predict = points.make_predict(extract, c.data.groups, c.scoring.chunk, c.scoring.neighbours)
  feats_of = jax.jit(extract)
  rows = []
  for cat in data.categories_of(c.data):
    ds = data.load(c.data, cat, seed=c.seed)
    labels = ds.test.labels

    def auroc(bank, clouds):
      s = loops.predict(predict, variables, clouds, bank.bank, c.batch_size)[0]
      return metrics.auroc(labels, s)   # percent

    src = train.fit_bank(c, loops.batched(feats_of, variables, ds.train.images, c.batch_size),
                         f"{cat}: source ")
    clean = auroc(src, ds.test.images)
    for seed in seeds:
      for sev in sevs:
        noisy_test = train.shifted_images(ds.test.images, "gaussian_noise", sev, seed,
                                          c.batch_size)
        # An independent draw for the training clouds (seed + 1000: not the test's key).
        noisy_train = train.shifted_images(ds.train.images, "gaussian_noise", sev, seed + 1000,
                                           c.batch_size)
        orc = train.fit_bank(c, loops.batched(feats_of, variables, noisy_train, c.batch_size),
                             f"{cat}: oracle s{sev} ")
        row = {"category": cat, "seed": seed, "severity": sev, "clean": clean,
               "none": auroc(src, noisy_test), "oracle": auroc(orc, noisy_test)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        atomic_write(a.out, json.dumps(rows, indent=1))
  print("\n| severity (sigma) | clean | none | oracle bank | gap none | gap oracle can close |")
  print("|---|---|---|---|---|---|")
  for sev in sevs:
    r = [x for x in rows if x["severity"] == sev]
    m = {k: float(np.mean([x[k] for x in r])) for k in ("clean", "none", "oracle")}
    gap = m["clean"] - m["none"]
    share = (m["oracle"] - m["none"]) / gap if gap > 0 else float("nan")
    print(f"| {sev} ({[0.005, 0.01, 0.015, 0.02, 0.03][sev - 1]}) | {m['clean']:.2f} | "
          f"{m['none']:.2f} | {m['oracle']:.2f} | {gap:.2f} | {100 * share:.0f}% "
          f"(n = {len(r)}) |")


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  main()
