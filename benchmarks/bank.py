"""Score time and memory against the memory bank's size, one device vs a bank sharded over 4.

    python -m benchmarks.bank [--sizes 16384,65536,262144,1048576] [--queries 3136] [--chunk 512]

Each (layout, size) runs in its own process (so peak RSS is its own): a bank
[M, 152] float32, `--queries` patch features (4 images x 784 patches), the
nearest-neighbour distances of `rodajax.scoring.nearest_distances` (chunked: a
[chunk, M / devices] block per device at a time). "sharded x4" places the bank
with `experiments.placement.shard_bank` over 4 XLA host devices
(--xla_force_host_platform_device_count=4) on the same 2 cores: it measures the
partitioned program and its memory, not a speed-up (there are no more cores).
Median of 3 after a warm-up. The largest bank a 24 GiB machine holds follows from
the measured bytes per bank row (the RSS slope between the two largest sizes).
"""
import argparse
import json
import os
import subprocess
import sys

from benchmarks.common import table

CHILD = r'''
import json, os, resource, statistics, sys, time
devices, m, nq, chunk = (int(a) for a in sys.argv[1:5])
if devices > 1:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
import jax, jax.numpy as jnp, numpy as np
from experiments import placement
from rodajax import scoring
bank = np.asarray(jax.random.normal(jax.random.key(0), (m, 152)))
q = jax.random.normal(jax.random.key(1), (nq, 152))
if devices > 1:
  mesh = placement.bank_mesh()
  b, valid = placement.shard_bank(bank, mesh)
  q = placement.replicate(q, mesh)
else:
  b, valid = jnp.asarray(bank), None
del bank
fn = lambda: scoring.nearest_distances(q, b, chunk, valid)
jax.block_until_ready(fn())
times = []
for _ in range(3):
  t = time.perf_counter(); jax.block_until_ready(fn()); times.append(time.perf_counter() - t)
print("RESULT", json.dumps({"s": statistics.median(times),
                            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="16384,65536,262144,1048576")
  ap.add_argument("--queries", type=int, default=3136)
  ap.add_argument("--chunk", type=int, default=512)
  args = ap.parse_args()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
  sizes = [int(s) for s in args.sizes.split(",")]
  rows, res = [], {}
  for m in sizes:
    row = [f"{m:,}", f"{m * 152 * 4 / 2**20:.0f}"]
    for dev in (1, 4):
      out = subprocess.run([sys.executable, "-c", CHILD, str(dev), str(m), str(args.queries),
                            str(args.chunk)], env=env, capture_output=True, text=True, check=True)
      r = json.loads(out.stdout.split("RESULT", 1)[1])
      res[(dev, m)] = r
      row += [f"{r['s']:.3f}", f"{r['rss_mib']:.0f}"]
    rows.append(row)
  print(f"### Nearest-neighbour search, {args.queries} queries x bank [M, 152], chunk "
        f"{args.chunk}, median of 3, 2 cores\n")
  print(table(rows, ["bank rows", "bank MiB", "1 device s", "1 device peak RSS MiB",
                     "sharded x4 s", "sharded x4 peak RSS MiB"]))
  if len(sizes) >= 2:
    a, b = sizes[-2], sizes[-1]
    for dev in (1, 4):
      per_row = (res[(dev, b)]["rss_mib"] - res[(dev, a)]["rss_mib"]) * 2**20 / (b - a)
      base = res[(dev, a)]["rss_mib"] * 2**20 - per_row * a
      print(f"- {'1 device' if dev == 1 else 'sharded x4'}: {per_row:.0f} bytes per bank row "
            f"(measured slope) -> about {(24 * 2**30 - base) / per_row / 1e6:.1f} M rows in 24 GiB")


if __name__ == "__main__":
  main()
