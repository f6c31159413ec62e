"""Adaptation benchmarks: seconds per step, against the bounds of the transport problem.

  python -m benchmarks.adapt            # prints markdown tables (about 10 minutes on 2 cores)

1. One BN-only step (`rodajax.adapt.make_step`, jitted) for 8 target images at
   256 -> 224, EfficientNet-Lite0, 4 views (roda) = 25,088 target patches, against
   a memory bank of 16,384 x 152 (random, the size of bottle's), median of 5 steps
   after compilation (the full problem: one step; online: including compilation),
   for the transport problem's layouts:
     balanced subset (default): 4,096 target patches x 4,096 bank entries;
     all patches, cost matrix held (1.6 GB);
     all patches, online (chunked costs, no [n, m] array).
   Beside it, in the same run: the network alone (`moment`: forward + BN-only
   backward, no transport), the cost matrix alone (one chunked pass computing
   C for 25,088 x 16,384, ~1.25e11 FLOP) and one pure logsumexp pass over it.
2. One class's adaptation (`experiments.tta.run`), after compilation, with the
   shipped defaults: the shift gate's statistic on bottle's 17 adaptation
   images (its reference set so that the gate says "shifted": the whole pass
   runs), target BN statistics, one pass of ceil(17 / 8) = 3 steps; and, beside
   it, with the held-out safeguard on (`safeguard=True`, gate off: 13 training
   images, 2 steps, the safeguard's criteria with synthetic-defect copies on the
   source and the end of the pass).
3. XLA's peak temporary memory of the discrete assignment, chunked vs dense.
"""
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import median_time, table
from configs import base
from experiments import tta
from rodajax import adapt, backbones, features, transport

BANK = (16384, 152)
N_IMAGES, VIEWS, PATCHES = 8, 4, 784


def _model():
  module, variables = backbones.create("efficientnet_lite0", "pretrained", taps=("stage3", "stage5"))
  return module, variables, features.make_extractor(module, ("stage3", "stage5"), 224)


def step_times(repeats=5):
  module, variables, ext = _model()
  source = adapt.Source(jax.random.normal(jax.random.key(0), BANK), jnp.zeros(BANK[1]),
                        jnp.eye(BANK[1]))
  imgs = jnp.asarray(np.random.default_rng(0).integers(0, 255, (N_IMAGES, 256, 256, 3)), jnp.uint8)
  optimizer = adapt.make_optimizer(variables["params"], 1e-3)
  state = adapt.init_state(variables, optimizer)
  layouts = [
      ("roda, balanced subset 4,096 x 4,096 (default)", adapt.Settings()),
      ("roda, all 25,088 patches x 16,384, cost matrix held",
       adapt.Settings(target_patches=0, bank_patches=0, online_above=2 ** 31)),
      ("roda, all 25,088 patches x 16,384, online", adapt.Settings(target_patches=0, bank_patches=0)),
      ("network only (moment: forward + BN backward)", adapt.Settings(method="moment")),
  ]
  rows, times = [], {}
  for name, s in layouts:
    step = jax.jit(adapt.make_step(s, ext, optimizer))
    full = s.target_patches == 0
    # The full problem takes minutes a step on 2 cores: one timed step after one warm-up
    # (held cost matrix), one step including compilation (online).
    reps = 1 if full else repeats
    warm = 0 if full and s.online_above < 2 ** 31 else 1
    out = []
    t = median_time(lambda: out.append(step(state, source, imgs, jax.random.key(1))) or out[-1],
                    repeats=reps, warmup=warm)
    m = out[-1][1]
    iters = int(m["sinkhorn_iters"]) if "sinkhorn_iters" in m else "–"
    times[name] = t
    rows.append([name, iters, f"{t:.2f}"])
  # The bounds on the full problem: the cost matrix alone, and one logsumexp pass over it.
  n = N_IMAGES * VIEWS * PATCHES
  x = jax.random.normal(jax.random.key(2), (n, BANK[1]))
  xc = x[: (n // 2048) * 2048].reshape(-1, 2048, BANK[1])
  cost = jax.jit(lambda xc, y: jax.lax.map(lambda a: jnp.sum(transport.euclidean_cost(a, y)), xc))
  lse = jax.jit(lambda xc, y, g: jax.lax.map(
      lambda a: jnp.sum(jax.nn.logsumexp(g[None] - transport.euclidean_cost(a, y), 1)), xc))
  t_cost = median_time(cost, xc, source.bank, repeats=repeats) * n / (xc.shape[0] * 2048)
  t_lse = median_time(lse, xc, source.bank, jnp.zeros(BANK[0]), repeats=repeats) * n / (
      xc.shape[0] * 2048)
  flop = 2.0 * n * BANK[0] * BANK[1]
  bounds = [["cost matrix alone (2 n m D = %.2e FLOP)" % flop, f"{t_cost:.2f}",
             f"{flop / t_cost / 1e9:.0f} GFLOP/s"],
            ["cost + one logsumexp pass", f"{t_lse:.2f}", ""]]
  shares = [[name, f"{t:.2f}", f"{t / t_cost:.1f}x", f"{t / t_lse:.1f}x"]
            for name, t in times.items()]
  return rows, bounds, shares


def class_adaptation(repeats=3):
  module, variables, ext = _model()
  cfg = base.get_base_config().adapt
  source = adapt.Source(jax.random.normal(jax.random.key(0), BANK), jnp.zeros(BANK[1]),
                        jnp.eye(BANK[1]))
  imgs = np.random.default_rng(1).integers(0, 255, (17, 256, 256, 3)).astype(np.uint8)
  guarded = cfg.copy_and_resolve_references()
  guarded.gate, guarded.safeguard = 0.0, True
  rows = []
  for method, c, what in (("roda", cfg, "defaults (gate, 3 steps)"),
                          ("bn_stats", cfg, "defaults"), ("kl", cfg, "defaults"),
                          ("roda", guarded, "held-out safeguard, no gate (2 steps)")):
    fns = tta.build(method, c, module, ext, variables["params"], 224)
    run = lambda: tta.run(method, fns, c, variables, source, imgs, jax.random.key(0),
                          reference=1e-6)[0]
    rows.append([method, what, f"{median_time(run, repeats=repeats):.1f}"])
  return rows


def peak_memory(ns=(4096, 25088)):
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
    rows.append((n, f"{n * m * 4 / 2**20:.0f}", f"{mc / 2**20:.1f}", f"{md / 2**20:.1f}"))
  return rows


if __name__ == "__main__":
  dev = f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
  steps, bounds, shares = step_times()
  print(f"## RoDA step: {N_IMAGES} images x {VIEWS} views x {PATCHES} patches against a "
        f"{BANK[0]} x {BANK[1]} bank, {dev}, median of 5\n")
  print(table(steps, ["layout", "Sinkhorn iterations", "seconds/step"]))
  print("\n## Bounds of the full problem (same run)\n")
  print(table(bounds, ["pass", "seconds", "rate"]))
  print("\n## Step as a multiple of the bounds\n")
  print(table(shares, ["layout", "seconds", "/ cost matrix", "/ cost + logsumexp"]))
  print("\n## One class's adaptation after compilation (bottle-sized: 17 images; median of 3)\n")
  print(table(class_adaptation(), ["method", "settings", "seconds"]))
  print("\n## Discrete assignment: peak temporary memory (XLA memory_analysis)\n")
  print(table(peak_memory(), ["target patches n", "dense plan n x m (MiB)", "chunked peak (MiB)",
                              "dense peak (MiB)"]))
