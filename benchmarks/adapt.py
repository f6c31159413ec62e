"""Adaptation benchmarks: seconds per step and the transport's peak memory.

  python -m benchmarks.adapt            # prints two markdown tables

1. One BN-only update (`rodajax.adapt.make_step`) for 8 target images at 256 -> 224,
   EfficientNet-Lite0, a memory bank of 16,384 x 152 (random, the size of bottle's),
   median of 5 steps after compilation, per method.
2. XLA's peak temporary memory (compiled `memory_analysis`) of the discrete RoDA
   assignment: the chunked argmaxes from the potentials (`transport.plan_argmaxes`)
   against the dense plan (gamma [n, m], then row/column argmax), for n target patches.
"""
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import median_time, table
from configs import base
from rodajax import adapt, backbones, features, transport

BANK = (16384, 152)


def step_times(methods=("roda", "discrete", "sinkhorn", "moment")):
  module, variables = backbones.create("efficientnet_lite0", "pretrained", taps=("stage3", "stage5"))
  ext = features.make_extractor(module, ("stage3", "stage5"), 224)
  cfg = base.get_base_config().adapt
  bank = jax.random.normal(jax.random.key(0), BANK)
  imgs = jnp.asarray(np.random.default_rng(0).integers(0, 255, (8, 256, 256, 3)), jnp.uint8)
  rows = []
  for m in methods:
    step, opt = adapt.make_step(m, ext, variables["params"], cfg)
    st = opt.init(variables["params"])
    args = (variables["params"], st, variables["batch_stats"], imgs, jax.random.key(1), bank,
            jnp.zeros(152), jnp.eye(152))
    views = cfg.views if adapt.METHODS[m][1] is None else 1
    rows.append((m, views, f"{median_time(step, *args, repeats=5):.2f}"))
  return rows


def peak_memory(ns=(512, 4096, 25088)):
  m = BANK[0]
  y = jax.random.normal(jax.random.key(0), BANK)
  g = jnp.zeros(m)
  rows = []
  for n in ns:
    x = jax.random.normal(jax.random.key(1), (n, BANK[1]))
    f = jnp.zeros(n)
    chunked = jax.jit(lambda x, y, f, g: transport.plan_argmaxes(x, y, f, g))

    def dense(x, y, f, g):
      gamma = jnp.exp((f[:, None] + g[None] - transport.euclidean_cost(x, y)) / 0.1)
      return jnp.argmax(gamma, 1), jnp.argmax(gamma, 0)
    dense = jax.jit(dense)
    mc = chunked.lower(x, y, f, g).compile().memory_analysis().temp_size_in_bytes
    md = dense.lower(x, y, f, g).compile().memory_analysis().temp_size_in_bytes
    tc = median_time(chunked, x, y, f, g, repeats=3)
    td = median_time(dense, x, y, f, g, repeats=3) if n * m * 4 < 4e9 else float("nan")
    rows.append((n, f"{n * m * 4 / 2**20:.0f}", f"{mc / 2**20:.1f}", f"{md / 2**20:.1f}",
                 f"{tc:.3f}", f"{td:.3f}"))
  return rows


if __name__ == "__main__":
  print(f"## Adaptation step, 8 images, bank {BANK[0]} x {BANK[1]}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)\n")
  print(table(step_times(), ["method", "views", "seconds/step (median of 5)"]))
  print("\n## Discrete assignment: peak temporary memory (XLA memory_analysis)\n")
  print(table(peak_memory(), ["target patches n", "dense plan n x m (MiB)", "chunked peak (MiB)",
                              "dense peak (MiB)", "chunked s", "dense s"]))
