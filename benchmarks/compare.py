"""rodajax's coreset, nearest-neighbour search and Sinkhorn next to anomalib, faiss and POT.

    python -m benchmarks.compare [--images 20] [--torch-python PYTHON] [--repeats 5]

One run, the same features for every tool: EfficientNet-Lite0 patch features
(stage3 + stage5, 3x3 aggregation, 224 px) of real ELPV mono cells (the
bundled dataset). Medians of `--repeats` runs after a warm-up (so JAX's
compilation is not counted; it is reported apart). Tools:
  coreset   rodajax.coreset.select_coreset (128-d Gaussian projection, lazy greedy)
            vs anomalib's KCenterGreedy (its SparseRandomProjection, eps 0.9), in the
            interpreter given by --torch-python (torch + `pip install --no-deps anomalib`);
  NN        rodajax.scoring.nearest_distances / nearest_neighbours vs faiss IndexFlatL2
            (k = 1), all threads;
  Sinkhorn  rodajax.transport.sinkhorn_potentials (OTT geometry) vs POT's
            ot.sinkhorn(method="sinkhorn_log"), same cost matrix, epsilon and threshold.
`pip install faiss-cpu pot` (the `bench` extra) for the last two.
Prints markdown tables.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import median_time, table
from rodajax import backbones, coreset, features, scoring, transport
from rodajax.data.elpv import load_elpv


def elpv_features(n_images: int) -> np.ndarray:
  ds = load_elpv("mono", 256, seed=0)
  imgs = ds.train.images[:n_images]
  module, variables = backbones.create("efficientnet_lite0", "pretrained", taps=("stage3", "stage5"))
  extract = jax.jit(features.make_extractor(module, ("stage3", "stage5"), 224))
  f = np.concatenate([np.asarray(extract(variables, jnp.asarray(imgs[i:i + 8])))
                      for i in range(0, len(imgs), 8)])
  return f.reshape(-1, f.shape[-1])


def bench_coreset(f, ratio, repeats, torch_python):
  k = coreset.coreset_size(len(f), ratio)
  x = jnp.asarray(f)
  fn = lambda key: coreset.select_coreset(x, key, ratio=ratio)
  t = time.perf_counter()
  jax.block_until_ready(fn(jax.random.key(0)))
  first = time.perf_counter() - t
  ours = median_time(fn, jax.random.key(1), repeats=repeats)
  rows = [("rodajax select_coreset", f"{ours:.2f}", f"{first:.1f}", "1.00")]
  other = None
  if torch_python:
    with tempfile.TemporaryDirectory() as d:
      p = os.path.join(d, "f.npy")
      np.save(p, f)
      here = os.path.dirname(os.path.abspath(__file__))
      out = subprocess.run([torch_python, os.path.join(here, "anomalib_coreset.py"), p, str(ratio),
                            str(repeats)], capture_output=True, text=True, check=True)
      other = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append((f"anomalib KCenterGreedy (torch {other['torch']}, {other['threads']} threads)",
                 f"{other['seconds']:.2f}", "-", f"{other['seconds'] / ours:.2f}"))
  print(f"### Coreset: {len(f)} x {f.shape[1]} -> {k} centres, median of {repeats}\n")
  print(table(rows, ["implementation", "seconds", "first call (compile)", "their time / ours"]))


def bench_nn(f, bank_size, n_queries, repeats):
  rng = np.random.default_rng(0)
  bank = f[rng.choice(len(f), bank_size, replace=False)]
  q = f[rng.choice(len(f), n_queries, replace=False)] + 0.01 * rng.normal(size=(n_queries, f.shape[1])).astype(np.float32)
  qj, bj = jnp.asarray(q), jnp.asarray(bank)
  t_dist = median_time(lambda: scoring.nearest_distances(qj, bj), repeats=repeats)
  t_idx = median_time(lambda: scoring.nearest_neighbours(qj, bj), repeats=repeats)
  rows = [("rodajax nearest_distances (no index)", f"{t_dist:.3f}"),
          ("rodajax nearest_neighbours (with index)", f"{t_idx:.3f}")]
  ref = np.asarray(scoring.nearest_distances(qj, bj))
  try:
    import faiss
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    times = []
    for r in range(repeats + 1):
      t = time.perf_counter()
      d2, _ = index.search(q, 1)
      if r:
        times.append(time.perf_counter() - t)
    t_f = float(np.median(times))
    diff = float(np.abs(np.sqrt(np.maximum(d2[:, 0], 0)) - ref).max())
    rows.append((f"faiss IndexFlatL2 k=1 ({faiss.omp_get_max_threads()} threads)", f"{t_f:.3f}"))
    rows = [r + (f"{t_f / float(r[1]):.2f}",) for r in rows]
    note = f"max |distance difference| vs faiss: {diff:.2e}"
  except ImportError:
    rows = [r + ("-",) for r in rows]
    note = "faiss not installed (pip install faiss-cpu)"
  print(f"### Nearest neighbour: {n_queries} queries x {bank_size} bank x {f.shape[1]}, median of "
        f"{repeats}\n")
  print(table(rows, ["implementation", "seconds", "faiss time / this"]))
  print(note + "\n")


def bench_sinkhorn(f, n, repeats, epsilon=0.02, iterations=100):
  """Both solvers run exactly `iterations` log-domain iterations (threshold 0), so the time
  compares the same work: OTT checks the L1 row-marginal error, POT the L2 column error every
  10 iterations, and with a threshold they would stop at different points."""
  rng = np.random.default_rng(1)
  x = f[rng.choice(len(f), n, replace=False)]
  y = f[rng.choice(len(f), n, replace=False)]
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  fn = jax.jit(lambda a, b: transport.sinkhorn_potentials(a, b, epsilon, True, 0.0, iterations))
  pot = jax.block_until_ready(fn(xj, yj))
  t_ours = median_time(fn, xj, yj, repeats=repeats)
  rows = [("rodajax sinkhorn_potentials (OTT, held cost matrix)", f"{t_ours:.3f}",
           int(pot.n_iters), f"{1e3 * t_ours / int(pot.n_iters):.1f}", "1.00")]
  try:
    import ot
    c = np.asarray(transport.euclidean_cost(xj, yj), np.float64)
    reg = float(pot.epsilon)
    a = np.full(n, 1.0 / n)
    times = []
    for r in range(repeats + 1):
      t = time.perf_counter()
      _, log = ot.sinkhorn(a, a, c, reg, method="sinkhorn_log", stopThr=0.0,
                           numItermax=iterations, log=True)
      if r:
        times.append(time.perf_counter() - t)
    t_pot = float(np.median(times))
    it = int(log["niter"]) + 1
    rows.append((f"POT {ot.__version__} sinkhorn_log (numpy, float64)", f"{t_pot:.3f}", it,
                 f"{1e3 * t_pot / it:.1f}", f"{t_pot / t_ours:.2f}"))
    f_pot = np.asarray(log["log_u"]) * reg
    d = np.asarray(pot.f, np.float64) - f_pot
    note = (f"potential f vs POT after removing the constant shift: max |diff| "
            f"{np.abs(d - d.mean()).max():.2e} (epsilon {reg:.3f}, costs ~{c.mean():.2f})")
  except ImportError:
    note = "POT not installed (pip install pot)"
  print(f"### Sinkhorn: {n} x {n} Euclidean costs, epsilon {epsilon} x mean cost, {iterations} "
        f"iterations each, median of {repeats}\n")
  print(table(rows, ["implementation", "seconds", "iterations", "ms / iteration",
                     "POT time / this"]))
  print(note + "\n")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--images", type=int, default=20)
  ap.add_argument("--ratio", type=float, default=0.1)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--torch-python", default="")
  args = ap.parse_args()
  f = elpv_features(args.images)
  print(f"features: {len(f)} x {f.shape[1]} (ELPV mono, {args.images} cells); "
        f"{os.cpu_count()} cpus, jax {jax.__version__} on {jax.default_backend()}\n")
  bench_coreset(f, args.ratio, args.repeats, args.torch_python)
  bench_nn(f, 16384 if len(f) >= 16384 else len(f), 12544, args.repeats)
  bench_sinkhorn(f, 4096, args.repeats)


if __name__ == "__main__":
  main()
