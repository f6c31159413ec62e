"""Sweep of Sinkhorn's relative epsilon: how the discretised plan (Eq. 6) behaves.

  python -m experiments.epsilon [--config configs/elpv.py] [--workdir DIR] \
      [--epsilons=0.005,0.01,0.02,0.05,0.1,0.2]

For each category, seed and shift of the config, the first minibatch of the
adaptation part (its views, source parameters) is put against the memory bank
as in a RoDA step, once per epsilon. Reported per epsilon (mean over shifts and
seeds): Sinkhorn iterations and convergence, the share of the loss carried by
row-argmax pairs, the share of column pairs, distinct target patches chosen by
column argmaxes and distinct bank entries chosen by row argmaxes (as fractions
of n and m), and the near-tie rate of row argmaxes (top-2 plan ratio > 0.9).
Writes DIR/epsilon.json and DIR/epsilon.md. Expect ~1 minute per category.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli, train, tta
from rodajax import adapt, augment, report, transport

FLAGS = [cli.Flag("workdir", "output folder (default runs/epsilon)"),
         cli.Flag("epsilons", "comma-separated relative epsilons to sweep",
                  "0.005,0.01,0.02,0.05,0.1,0.2")]

KEYS = ("epsilon", "n", "sinkhorn_iters", "converged", "row_share", "col_pairs_share",
        "col_distinct_frac", "row_distinct_frac", "row_near_ties")


def near_ties(z, bank, pot, chunk=2048):
  """Share of target patches whose second-best plan entry is > 0.9 x the best (row-wise)."""
  c = transport.euclidean_cost(z, bank)
  top2 = jax.lax.top_k((pot.g[None] - c) / pot.epsilon, 2)[0]
  return jnp.mean(jnp.exp(top2[:, 1] - top2[:, 0]) > 0.9)


def main(argv):
  args = cli.parse(argv, __doc__, FLAGS, os.path.join(cli.CONFIGS, "elpv.py"))
  cli.quiet_logs()
  config = args.config
  workdir = args.flags["workdir"] or os.path.join("runs", "epsilon")
  try:
    epsilons = [float(e) for e in train.parse_list(args.flags["epsilons"])]
  except ValueError:
    raise cli.UserError(f"--epsilons={args.flags['epsilons']!r} must be comma-separated "
                        "numbers") from None
  rows = []
  for ds, v, source, extract in train.fitted_categories(config, workdir):
    category = ds.category
    for seed in train.seeds(config):
      adapt_idx, _ = train.target_split(len(ds.test), max(config.shift.adapt_fraction, 0.2), seed)
      for shift, severity in train.shift_list(config):
        imgs = train.shifted_images(ds.test.images[adapt_idx], shift, severity, seed,
                                    config.batch_size)[:config.adapt.batch_images]
        x = augment.views(jnp.asarray(imgs), jax.random.key(seed), config.adapt.views, "dihedral")
        z = extract(v, x).reshape(-1, source.bank.shape[1])
        for eps in epsilons:
          cfg = config.adapt.copy_and_resolve_references()
          cfg.epsilon = float(eps)
          s = tta.settings(cfg, "roda")
          zs, bs, _, pot = adapt.transport_problem(z, source.bank, jax.random.key(seed), s)
          row, col = transport.plan_argmaxes(zs, bs, pot.f, pot.g)
          d = jax.device_get(transport.plan_diagnostics(zs, bs, row, col))
          rows.append({"category": category, "seed": seed, "shift": shift, "epsilon": float(eps),
                       "n": int(zs.shape[0]), "sinkhorn_iters": int(pot.n_iters),
                       "converged": bool(pot.converged), "row_share": float(d["row_share"]),
                       "col_pairs_share": float(d["col_pairs_share"]),
                       "col_distinct_frac": float(d["col_distinct"]) / zs.shape[0],
                       "row_distinct_frac": float(d["row_distinct"]) / bs.shape[0],
                       "row_near_ties": float(near_ties(zs, bs, pot))})
        print(f"{category} seed {seed} {shift}: done", flush=True)
  summary = []
  for eps in sorted({r["epsilon"] for r in rows}):
    mine = [r for r in rows if r["epsilon"] == eps]
    summary.append({k: (f"{eps:g}" if k == "epsilon" else float(np.mean([r[k] for r in mine])))
                    for k in KEYS})
  report.atomic_write(os.path.join(workdir, "epsilon.json"), json.dumps(rows, indent=1))
  md = report.markdown_table(summary, KEYS)
  report.atomic_write(os.path.join(workdir, "epsilon.md"), md)
  print(md)
  print(f"results: {os.path.join(workdir, 'epsilon.json')} and "
        f"{os.path.join(workdir, 'epsilon.md')} ({len(rows)} rows, all computed in this run)",
        flush=True)


if __name__ == "__main__":
  cli.run(main)
