"""Load time of a category: decoding the folder vs the tfds ArrayRecord copy (first and second run).

    python -m benchmarks.data [--root ../shared/data/mvtec_ad] [--category bottle] [--repeats 3]

Three ways to get the same arrays (checked equal): `rodajax.data.load` with
no tfds_dir (decode + resize every image, every run); with a fresh tfds_dir
(first run: decode, resize and write ArrayRecord); with the prepared tfds_dir
(second and later runs: read by index). Medians of `--repeats` runs, each in
a fresh temporary folder for the first-run case.
"""
import argparse
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import table
from configs import base
from rodajax import data


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--root", default="../shared/data/mvtec_ad")
  ap.add_argument("--category", default="bottle")
  ap.add_argument("--name", default="mvtec")
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  c = base.get_base_config().data
  c.name, c.root, c.max_train = args.name, args.root, 0

  def timed(cfg):
    t = time.perf_counter()
    ds = data.load(cfg, args.category)
    return time.perf_counter() - t, ds

  direct, first, second = [], [], []
  for _ in range(args.repeats):
    c.tfds_dir = ""
    t, ref = timed(c)
    direct.append(t)
    with tempfile.TemporaryDirectory() as d:
      c.tfds_dir = d
      t, _ = timed(c)
      first.append(t)
      t, ds = timed(c)
      second.append(t)
      np.testing.assert_array_equal(ds.train.images, ref.train.images)
      np.testing.assert_array_equal(ds.test.images, ref.test.images)
  n = len(ref.train) + len(ref.test)
  med = lambda v: statistics.median(v)
  rows = [("decode the folder (no tfds_dir)", f"{med(direct):.2f}", f"{n / med(direct):.0f}"),
          ("tfds first run (decode + write ArrayRecord)", f"{med(first):.2f}", f"{n / med(first):.0f}"),
          ("tfds later runs (read ArrayRecord)", f"{med(second):.2f}", f"{n / med(second):.0f}")]
  print(f"### {args.name}/{args.category}: {len(ref.train)} train + {len(ref.test)} test images, "
        f"resized to {c.resize}, median of {args.repeats}\n")
  print(table(rows, ["load", "seconds", "images/s"]))


if __name__ == "__main__":
  main()
