"""Where the full transport problem's time goes on this CPU: one pass of each kind over its matrix.

  python -m benchmarks.sinkhorn_passes       # prints markdown tables (about 8 minutes on 2 cores)

Issue 11's speed bar asks a RoDA step with every patch of 8 images x 4 views (25,088) against a
16,384-entry bank in <= 4 s, reported against the cost matrix and a pure logsumexp pass. This
times, on that problem size (D = 152, float32), each kind of pass a Sinkhorn solver and the
discretisation (Eq. 6) make over the 25,088 x 16,384 matrix (411M entries, 1.6 GB), median of 3
after one warm-up:

1. passes over a held matrix: a plain sum (the memory-bound floor), row and column max,
   logsumexp (`jax.nn.logsumexp`, the reduction of a log-domain Sinkhorn update) and argmax
   (`transport.plan_argmaxes` makes both), and the two matrix-vector products of a kernel-domain
   (scaling) Sinkhorn iteration, K v and u^T K;
2. one Sinkhorn iteration of each solver, (time of 20 iterations - time of 10) / 10 so that
   set-up and the final error are left out (compiled first, one timed run each; OTT checks its
   error every 10 iterations, and runs none when asked for fewer): OTT's log-domain `Sinkhorn` on
   the held cost matrix (what
   `transport.sinkhorn_potentials` runs below `adapt.online_above`) and the online solver
   (`transport.sinkhorn_online`, costs recomputed in row chunks of 2,048: what the full problem
   runs by default);
3. the kernel domain's range: at the default epsilon (0.02 x the mean cost) the share of the
   kernel exp(-(C_ij - min_j C_ij) / epsilon) that is 0 in float32, and the bank entries whose
   whole column is 0 (a scaling iteration divides by that column's sum).

The features are structured, not uniform noise: bank entries N(0, 1), each target patch a random
bank entry plus N(0, 0.5^2) noise, so the plan is peaked as on real features.
"""
import jax
import jax.numpy as jnp
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from benchmarks.common import median_time, table
from rodajax import transport

N, M, D = 25088, 16384, 152
EPSILON = 0.02      # relative to the mean cost: configs/base.py adapt.epsilon


def problem():
  k_bank, k_pick, k_noise = jax.random.split(jax.random.key(0), 3)
  y = jax.random.normal(k_bank, (M, D))
  x = y[jax.random.randint(k_pick, (N,), 0, M)] + 0.5 * jax.random.normal(k_noise, (N, D))
  return x, y


def held_passes(cost, repeats=3):
  """Seconds of one pass of each kind over the held `[N, M]` matrix."""
  f, g = jnp.zeros(N), jnp.zeros(M)
  # A held kernel for the two products: its values do not change their time.
  kernel = jax.jit(lambda c: jnp.exp(-(c - jnp.min(c, 1, keepdims=True))))(cost)
  passes = [
      ("sum (memory-bound floor)", lambda c: jnp.sum(c), (cost,)),
      ("row max", lambda c: jnp.max(c, 1), (cost,)),
      ("column max", lambda c: jnp.max(c, 0), (cost,)),
      ("row logsumexp of (g_j - C_ij)", lambda c, g: jax.nn.logsumexp(g[None] - c, 1), (cost, g)),
      ("column logsumexp of (f_i - C_ij)", lambda c, f: jax.nn.logsumexp(f[:, None] - c, 0),
       (cost, f)),
      ("row argmax", lambda c: jnp.argmax(c, 1), (cost,)),
      ("column argmax", lambda c: jnp.argmax(c, 0), (cost,)),
      ("K v (kernel held)", lambda k, v: k @ v, (kernel, jnp.ones(M))),
      ("u^T K (kernel held)", lambda k, u: u @ k, (kernel, jnp.ones(N))),
  ]
  out = {}
  for name, fn, args in passes:
    out[name] = median_time(jax.jit(fn), *args, repeats=repeats)
  del kernel
  return out


def iteration_seconds(x, y, cost, few=10, many=20):
  """Seconds per Sinkhorn iteration: (`many` iterations - `few`) / (`many` - `few`)."""
  def ott(iters):
    def solve(c):
      geom = geometry.Geometry(cost_matrix=c, epsilon=EPSILON, relative_epsilon="mean")
      solver = sinkhorn.Sinkhorn(threshold=-1.0, min_iterations=iters, max_iterations=iters)
      out = solver(linear_problem.LinearProblem(geom))
      return out.f, out.g
    return jax.jit(solve), (cost,)

  def online(iters):
    return jax.jit(lambda x, y: transport.sinkhorn_online(
        x, y, EPSILON, True, threshold=-1.0, max_iterations=iters, chunk=2048)[:2]), (x, y)

  rows = {}
  for name, make in (("OTT log-domain, cost matrix held", ott),
                     ("online (costs recomputed per chunk of 2,048 rows)", online)):
    t = {}
    for iters in (few, many):
      fn, args = make(iters)
      fn = fn.lower(*args).compile()
      t[iters] = median_time(fn, *args, repeats=1, warmup=0)
    rows[name] = ((t[many] - t[few]) / (many - few), t[few])
  return rows


def kernel_range(cost):
  """The row-centred kernel exp(-span) at the default epsilon, span = (C_ij - min_j C_ij) / eps.

  Returns `(eps, largest span, share of kernel entries 0 in float32, bank entries whose whole
  column is 0)`; `scripts/kernel_range_probe.py` applies it to real features.
  """
  eps = EPSILON * jnp.mean(cost)
  span = (cost - jnp.min(cost, 1, keepdims=True)) / eps
  zero = jnp.exp(-span) == 0.0
  return (float(eps), float(jnp.max(span)), float(jnp.mean(zero)),
          int(jnp.sum(jnp.all(zero, 0))))


if __name__ == "__main__":
  x, y = problem()
  cost_fn = jax.jit(transport.euclidean_cost)
  t_cost = median_time(cost_fn, x, y, repeats=3)
  cost = cost_fn(x, y)
  passes = held_passes(cost)
  iters = iteration_seconds(x, y, cost)
  eps, span, zero_share, zero_cols = kernel_range(cost)
  floor = passes["sum (memory-bound floor)"]
  print(f"## One pass over the {N:,} x {M:,} matrix (float32, {N * M * 4 / 2**30:.2f} GiB), "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), median of 3\n")
  rows = [["cost matrix C = ||x_i - y_j|| (matmul, written)", f"{t_cost:.3f}",
           f"{t_cost / floor:.1f}x"]]
  rows += [[k, f"{v:.3f}", f"{v / floor:.1f}x"] for k, v in passes.items()]
  print(table(rows, ["pass", "seconds", "/ sum pass"]))
  print("\n## One Sinkhorn iteration (an f-update and a g-update), epsilon 0.02 x mean cost\n")
  print(table([[k, f"{v[0]:.2f}", f"{v[1]:.2f}"] for k, v in iters.items()],
              ["solver", "seconds per iteration", "seconds for 10 iterations incl. set-up"]))
  kv = passes["K v (kernel held)"] + passes["u^T K (kernel held)"]
  print(f"\nA kernel-domain (scaling) iteration is its two products: {kv:.3f} s.")
  print(f"\n## The kernel's range at epsilon = 0.02 x mean cost = {eps:.3f}\n")
  print(table([[f"{span:.0f}", f"{100 * zero_share:.1f} %", f"{zero_cols} of {M:,}"]],
              ["largest (C_ij - min_j C_ij) / epsilon", "kernel entries 0 in float32",
               "bank entries whose whole column is 0"]))
