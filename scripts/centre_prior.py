"""Pixel AUROC / AUPRO of the centre prior (`rodajax.metrics.centre_prior`) on a masked dev set.

A map that ignores the image, the same for every test image: closeness to the image centre.
Printed for the whole test set (the clean PatchCore table's protocol) and for the evaluation
splits of seeds 0-5 at the 20 % adaptation fraction (the adaptation tables' protocol), as a
markdown table; docs/results.md "What adaptation does to the anomaly maps" quotes it.

  python scripts/centre_prior.py                        # MVTec 3D-AD tire (RGB) from ../shared
  python scripts/centre_prior.py --root DIR --name mvtec --category cable
"""
import argparse

import numpy as np

from configs import mvtec
from experiments import train
from rodajax import data, metrics


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--root", default="../shared/data/mvtec_3d")
  ap.add_argument("--name", default="mvtec3d")
  ap.add_argument("--category", default="tire")
  ap.add_argument("--seeds", default="0,1,2,3,4,5")
  ap.add_argument("--fraction", type=float, default=0.2)
  a = ap.parse_args()
  c = mvtec.get_config()
  c.data.name, c.data.root, c.data.categories = a.name, a.root, (a.category,)
  ds = data.load(c.data, a.category, seed=c.seed)
  if ds.test.masks is None:
    raise SystemExit(f"error: {a.name}/{a.category} has no ground-truth masks")
  print(f"| {a.name}/{a.category} | images | pixel AUROC | AUPRO (FPR <= 0.3) |")
  print("|---|---|---|---|")
  rows = [("whole test set", np.arange(len(ds.test)))]
  rows += [(f"evaluation split, seed {s}", train.target_split(len(ds.test), a.fraction, s)[1])
           for s in map(int, a.seeds.split(","))]
  vals = []
  for name, idx in rows:
    t = ds.test.subset(idx)
    m = metrics.centre_prior(data.centre_crop(t.masks, c.data.crop), t.has_mask)
    if name != "whole test set":
      vals.append((m["pixel_auroc"], m["aupro"]))
    print(f"| {name} | {len(idx)} | {m['pixel_auroc']:.2f} | {m['aupro']:.2f} |")
  v = np.asarray(vals)
  print(f"| evaluation splits, mean ± std (n = {len(v)}) | | {v[:, 0].mean():.2f} ± "
        f"{v[:, 0].std():.2f} | {v[:, 1].mean():.2f} ± {v[:, 1].std():.2f} |")


if __name__ == "__main__":
  main()
