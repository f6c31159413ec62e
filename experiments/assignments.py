"""Paper Fig. 5a: the share of the OT loss that falls on anomalous target patches.

  python -m experiments.assignments --config configs/roda_assignment.py [--workdir DIR]

For each category and shift of the config, the adaptation part of the shifted
test set (ground-truth masks needed) goes through the first transport problem
of each OT method (continuous, discrete, discrete + copy, RoDA); writes
`DIR/assignments.json` and `DIR/assignments.md`.
"""
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import train
from rodajax import adapt, data, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "configs", "roda_assignment.py"), "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default runs/<config name>).")

KEYS = ("category", "shift", "severity", "method", "n_patches", "n_anomalous",
        "anomalous_fraction", "anomalous_picked_by_bank", "anomalous_loss_share")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  workdir = _WORKDIR.value or os.path.join("runs", name)
  train.validate(config)
  os.makedirs(workdir, exist_ok=True)
  module, variables, make_extractor = train.build_model(config)
  records = []
  for category in train._csv(config.data.categories):
    ds = data.load(config.data, category, seed=config.seed)
    if ds.test.masks is None:
      raise SystemExit(f"{ds.name}/{category} has no ground-truth masks; the assignment analysis "
                       "needs them (MVTec AD or MVTec 3D-AD test sets)")
    bank, v = train.fit_or_restore(config, workdir, ds, module, variables, make_extractor(), {})
    adapt_idx, _ = train.target_split(len(ds.test), config.shift.adapt_fraction, config.seed)
    masks = data.centre_crop(ds.test.masks[adapt_idx], config.data.crop)
    for shift, severity in train._shift_list(config):
      shifted = train._shifted(ds.test.images, shift, severity, config.seed, config.batch_size)
      for method in train._csv(config.adapt.methods):
        out = adapt.assignment_analysis(method, make_extractor(), v, shifted[adapt_idx], masks,
                                        jax.random.key(config.seed), bank.bank, config.adapt)
        rec = {"dataset": ds.name, "category": category, "shift": shift, "severity": severity,
               "method": method, **out}
        records.append(rec)
        print(" | ".join(f"{k}={report._fmt(rec[k])}" for k in KEYS), flush=True)
  import json
  report.atomic_write(os.path.join(workdir, "assignments.json"), json.dumps(records, indent=1))
  report.atomic_write(os.path.join(workdir, "assignments.md"), report.markdown_table(records, KEYS))


if __name__ == "__main__":
  app.run(main)
