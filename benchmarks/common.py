"""Timing helpers for the benchmark scripts: medians of repeated runs."""
import statistics
import time

import jax


def median_time(fn, *args, repeats=5, warmup=1):
  """Median wall time (s) of `fn(*args)`, blocking on its result."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def flops_of(jitted, *args):
  """XLA's FLOP count for one call of a jitted function."""
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def matmul_gflops(n=2048, repeats=5):
  """GFLOP/s of an n x n float32 matmul: the machine's reference rate."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  b = jax.random.normal(jax.random.key(1), (n, n))
  f = jax.jit(lambda x, y: x @ y)
  return 2 * n ** 3 / median_time(f, a, b, repeats=repeats) / 1e9


def table(rows, headers):
  """A markdown table as a string."""
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  for r in rows:
    lines.append("| " + " | ".join(str(c) for c in r) + " |")
  return "\n".join(lines)
