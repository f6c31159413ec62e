"""Coreset speed: lazy batched greedy vs the plain dense greedy, same run.

    python -m benchmarks.coreset [--features FILE.npy] [--ratio 0.1]

FILE.npy holds patch features [N, D] (e.g. MVTec bottle's 163,856 x 152); without
it, 164K x 152 Gaussian features are used. Prints a markdown table.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import table
from rodajax import coreset


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--features", default="")
  ap.add_argument("--ratio", type=float, default=0.1)
  args = ap.parse_args()
  f = (np.load(args.features) if args.features else
       np.asarray(jax.random.normal(jax.random.key(0), (164000, 152))))
  z = coreset.project(jnp.asarray(f), jax.random.key(0), 128)
  k = coreset.coreset_size(len(f), args.ratio)
  rows = []
  for name, fn in (("lazy batched (default)", lambda: coreset.greedy_kcenter(z, k, 0)),
                   ("dense greedy", lambda: coreset.greedy_kcenter_dense(z, k, jnp.int32(0)))):
    t = time.perf_counter()
    idx, mind = jax.block_until_ready(fn())
    rows.append((name, f"{len(f)} x {f.shape[1]} -> {k}", f"{time.perf_counter() - t:.1f}",
                 f"{float(jnp.sqrt(mind.max())):.4f}"))
  print(table(rows, ["solver", "problem", "seconds (incl. compile)", "covering radius"]))


if __name__ == "__main__":
  main()
