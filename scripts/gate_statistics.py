"""Which label-free statistic tells a shifted target from an unshifted one? (issue 11's gate)

  python scripts/gate_statistics.py [--seeds 0,1,2,3,4,5] [--banks runs/sg] > table.md

For bottle, tire, ELPV mono and poly (the dev sets, the settings of
scripts/gate_runs.sh): the source model's statistic on each seed's adaptation
split (20 % of the test set, clean or shifted at severity 5) divided by the same
statistic on training normals held out of a bank fitted without them
(`fit.calibration_fraction`, as the shipped gate). Statistics, all against the
bank: transport (`adapt.transport_criterion`, the discretised Eq. 6 cost),
nn_mean (mean patch nearest-neighbour distance), nn_median (the median patch
distance: robust to the minority of anomalous patches the test splits hold).
A good gate statistic keeps every clean ratio well below every shifted one.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from configs import elpv as elpv_config
from configs import mvtec as mvtec_config
from experiments import loops, train, tta
from rodajax import adapt, data, scoring

SHIFTS = ["clean", "gaussian_noise", "defocus_blur", "brightness", "contrast"]


def dev_sets():
  c = mvtec_config.get_config()
  yield "bottle", c, "bottle"
  c = mvtec_config.get_config()
  c.data.name, c.data.root, c.data.categories = "mvtec3d", "../shared/data/mvtec_3d", ("tire",)
  yield "tire", c, "tire"
  for cat in ("mono", "poly"):
    c = elpv_config.get_config()
    c.shift.adapt_fraction = 0.2
    c.data.max_test_normal = c.data.max_test_anomalous = 50
    yield cat, c, cat


def statistics(config, z, bank, key):
  """The shipped gate statistics (`adapt.gate_statistic`) and, beside them, the mean distance."""
  z = jnp.asarray(z.reshape(-1, z.shape[-1]))
  source, s = train.source_of(bank), tta.settings(config.adapt, "roda")
  out = {name: float(adapt.gate_statistic(z, source, key, s, name))
         for name in adapt.GATE_STATISTICS}
  nn = scoring.nearest_distances(z, source.bank, config.adapt.chunk)
  return {**out, "nn_mean": float(jnp.mean(nn))}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seeds", default="0,1,2,3,4,5")
  ap.add_argument("--banks", default="runs/sg", help="workdirs <banks>/<bottle|tire|elpv>")
  args = ap.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  rows = []
  for name, config, cat in dev_sets():
    module, variables, extract = train.build_model(config)
    ext = jax.jit(extract)
    ds = data.load(config.data, cat, seed=config.seed)
    folder = {"bottle": "bottle", "tire": "tire"}.get(name, "elpv")
    bank, v = train.fit_or_restore(config, os.path.join(args.banks, folder), ds, module,
                                   variables, extract, {})
    feats = train.train_features(config, ds, v, ext, {})
    keep, held = train.calibration_split(len(ds.train), config.fit.calibration_fraction,
                                         config.seed)
    cal = train.fit_bank(config, feats[keep], "calibration ")
    key = tta.gate_key(jax.random.key(config.seed))
    ref = statistics(config, feats[held], cal, key)
    for seed in seeds:
      a_idx, _ = train.target_split(len(ds.test), config.shift.adapt_fraction, seed)
      for shift in SHIFTS:
        x = train.shifted_images(ds.test.images, shift, 0 if shift == "clean" else 5, seed,
                                 config.batch_size)[a_idx]
        z = loops.batched(ext, v, x, config.batch_size)
        st = statistics(config, z, bank, tta.gate_key(jax.random.key(seed)))
        rows.append((name, seed, shift, {k: st[k] / ref[k] for k in st},
                     float(np.mean(ds.test.labels[a_idx]))))
        print(name, seed, shift, {k: round(v, 3) for k, v in rows[-1][3].items()},
              f"anomalous share {rows[-1][4]:.2f}", file=sys.stderr, flush=True)
  names = ["transport", "nn_mean", "nn_median"]
  print(f"| dev set | statistic | clean ratio: max (mean) | shifted ratio: min (mean) | "
        f"shifted splits below the clean max | n seeds |")
  print("|---|---|---|---|---|---|")
  for name in dict.fromkeys(r[0] for r in rows):
    for k in names:
      clean = [r[3][k] for r in rows if r[0] == name and r[2] == "clean"]
      shifted = [r[3][k] for r in rows if r[0] == name and r[2] != "clean"]
      print(f"| {name} | {k} | {max(clean):.3f} ({np.mean(clean):.3f}) | {min(shifted):.3f} "
            f"({np.mean(shifted):.3f}) | {sum(s <= max(clean) for s in shifted)} of "
            f"{len(shifted)} | {len(seeds)} |")
  print()
  print("| statistic | clean ratio max, all dev sets | shifted ratio min | per shift: min ratio |")
  print("|---|---|---|---|")
  for k in names:
    clean = [r[3][k] for r in rows if r[2] == "clean"]
    shifted = [r[3][k] for r in rows if r[2] != "clean"]
    per = ", ".join(f"{s} {min(r[3][k] for r in rows if r[2] == s):.3f}" for s in SHIFTS[1:])
    print(f"| {k} | {max(clean):.3f} | {min(shifted):.3f} | {per} |")


if __name__ == "__main__":
  main()
