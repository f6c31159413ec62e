"""Paper Fig. 5a: the share of the OT loss that falls on anomalous target patches.

  python -m experiments.assignments --config configs/roda_assignment.py [--workdir DIR]

For each category and shift of the config, the adaptation part of the shifted
test set (ground-truth masks needed) goes through the first transport problem
of each OT method (continuous, discrete, discrete + copy, RoDA); writes
`DIR/assignments.json` and `DIR/assignments.md`.
"""
import os

import jax
import jax.numpy as jnp

from experiments import cli, train, tta
from rodajax import adapt, augment, data, features, report

FLAGS = [cli.Flag("workdir", "output folder (default runs/<config name>)")]

KEYS = ("category", "shift", "severity", "seed", "method", "n_patches", "n_anomalous",
        "anomalous_fraction", "anomalous_picked_by_bank", "anomalous_loss_share")


def analyse(method, config, extract, variables, source, images, masks, key):
  """Fig. 5a counts of `method` over the minibatches of `images` (source parameters).

  Masks follow the images through the same views; a patch is anomalous when
  its cell holds a mask pixel.
  """
  s = tta.settings(config.adapt, method)
  batch = min(config.adapt.batch_images, len(images))
  fn = jax.jit(lambda z, lab, k: adapt.assignment_analysis(z, lab, source, k, s))
  tot = {}
  for i in range(0, len(images) - batch + 1, batch):
    k_view, k_sub = jax.random.split(jax.random.fold_in(key, i))
    mode = adapt.METHODS[method][2]
    x = augment.views(jnp.asarray(images[i:i + batch]), k_view, s.n_views, mode)
    mv = augment.views(jnp.asarray(masks[i:i + batch])[..., None], k_view, s.n_views, mode)[..., 0]
    z = extract(variables, x)
    lab = features.patch_labels(mv, z.shape[1:3]).reshape(-1)
    out = jax.device_get(fn(z.reshape(-1, z.shape[-1]), lab, k_sub))
    tot = {k: tot.get(k, 0) + float(v) for k, v in out.items()}
  cont = adapt.METHODS[method][0] == "continuous"
  return {"n_patches": int(tot["patches"]), "n_anomalous": int(tot["anomalous"]),
          "anomalous_fraction": 100.0 * tot["anomalous"] / max(tot["patches"], 1),
          "anomalous_picked_by_bank": None if cont else int(tot["anomalous_picked"]),
          "anomalous_loss_share": 100.0 * tot["anomalous_weight"] / max(tot["weight"], 1e-12)}


def main(argv):
  args = cli.parse(argv, __doc__, FLAGS, os.path.join(cli.CONFIGS, "roda_assignment.py"))
  cli.quiet_logs()
  config = args.config
  name = os.path.splitext(os.path.basename(args.config_file))[0]
  workdir = args.flags["workdir"] or os.path.join("runs", name)
  records = []
  for ds, v, source, extract in train.fitted_categories(config, workdir):
    category = ds.category
    if ds.test.masks is None:
      raise cli.UserError(f"{ds.name}/{category} has no ground-truth masks; the assignment analysis "
                       "needs them (MVTec AD or MVTec 3D-AD test sets)")
    for seed in train.seeds(config):
      adapt_idx, _ = train.target_split(len(ds.test), config.shift.adapt_fraction, seed)
      masks = data.centre_crop(ds.test.masks[adapt_idx], config.data.crop)
      for shift, severity in train.shift_list(config):
        shifted = train.shifted_images(ds.test.images, shift, severity, seed, config.batch_size)
        for method in train.parse_list(config.adapt.methods):
          out = analyse(method, config, extract, v, source, shifted[adapt_idx], masks,
                        jax.random.key(seed))
          rec = {"dataset": ds.name, "category": category, "shift": shift, "severity": severity,
                 "seed": seed, "method": method, **out}
          records.append(rec)
          print(" | ".join(f"{k}={report._fmt(rec[k])}" for k in KEYS), flush=True)
  import json
  report.atomic_write(os.path.join(workdir, "assignments.json"), json.dumps(records, indent=1))
  report.atomic_write(os.path.join(workdir, "assignments.md"), report.markdown_table(records, KEYS))
  print(f"results: {os.path.join(workdir, 'assignments.json')} and "
        f"{os.path.join(workdir, 'assignments.md')} ({len(records)} records, all computed in "
        "this run)", flush=True)


if __name__ == "__main__":
  cli.run(main)
