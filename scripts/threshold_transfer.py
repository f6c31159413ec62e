"""Does the fitted threshold survive a drift, and which label-free rule carries it over?

  python scripts/threshold_transfer.py [--out runs/threshold.json] [--seeds 0,1,2]
      [--datasets bottle,tire,mono,poly] [--line_share 0.1] [--banks runs/tt]

A drifted production line, simulated on the four 2D dev sets: per seed, half of
the test set's normal images (seeded) plus anomalous ones making up `line_share`
of them are the line's unlabeled images (what `experiments.adapt --images` gets);
the other half of the normals and the remaining anomalous images are scored.
Shifts: clean and the four severity-5 corruptions of docs/results.md, drawn as in
`experiments.roda`. Per record the script keeps the scores, then reports the
false-positive rate, recall and F1 on the scored images of each threshold:

  keep          the fitted threshold (split-conformal 0.99 of the held-out training
                normals, `experiments.fit`);
  normals       recalibrated on the line images that are normal (labels used: what
                `experiments.adapt --normals` gives with that many normal images);
  RULE/eps      `calibration.transfer_threshold(rule, anomaly_share=eps)` from the
                line images' scores, no labels.

for `none` (the fitted model) and `roda` (the shipped adaptation defaults).
Scores are kept in --out, so the table can be recomputed without the models
(`--table_only`). A study for docs/results.md, not part of the library.
"""
import argparse
import json
import os

import jax
import numpy as np
from tqdm import tqdm

from configs import base, elpv, mvtec
from experiments import loops, train, tta
from rodajax import calibration, data, patchcore
from rodajax.report import atomic_write

SHIFTS = [("clean", 0), ("gaussian_noise", 5), ("defocus_blur", 5), ("brightness", 5),
          ("contrast", 5)]
RULES = [("keep", None), ("normals", None)] + [
    (f"{r}/{e}", (r, e)) for r in calibration.TRANSFER_RULES for e in (0.0, 0.1)]


def config_of(name: str, banks: str):
  if name in ("mono", "poly"):
    c = elpv.get_config()
    c.data.categories = (name,)
    c.data.max_test_normal, c.data.max_test_anomalous = 100, 100
    c.shift.adapt_fraction = 0.2   # (validation only: the line split is this script's)
  else:
    c = mvtec.get_config()
    if name == "tire":
      c.data.name, c.data.root, c.data.categories = "mvtec3d", "../shared/data/mvtec_3d", ("tire",)
  c.adapt.methods = ("none", "roda")
  c.bank_dir = os.path.join(banks, name, "banks")
  return c


def line_split(labels: np.ndarray, share: float, seed: int):
  """(line, scored) indices: half the normals + anomalies making up `share` of the line."""
  rng = np.random.default_rng(seed)
  normal, anomalous = rng.permutation(np.flatnonzero(labels == 0)), rng.permutation(
      np.flatnonzero(labels == 1))
  half = len(normal) // 2
  k = int(round(share / (1 - share) * half))
  line = np.concatenate([normal[:half], anomalous[:k]])
  return np.sort(line), np.sort(np.concatenate([normal[half:], anomalous[k:]]))


def run(name: str, seeds, share: float, banks: str, rows: list, out: str):
  c = config_of(name, banks)
  train.validate(c)
  module, variables, extract = train.build_model(c)
  ds = data.load(c.data, c.data.categories[0], seed=c.seed)
  workdir = os.path.join(banks, name)
  bank, v_source = train.fit_or_restore(c, workdir, ds, module, variables, extract, {})
  source = train.source_of(bank)
  ref = train.gate_reference(c, workdir, ds, v_source, extract, {})
  feats = train.train_features(c, ds, v_source, extract, {})
  _, _, cal = train.calibration_scores(c, feats, f"{name}: ")
  fitted = calibration.conformal_threshold(cal, c.fit.quantile)["value"]
  predict = patchcore.make_predict(extract, c.data.crop, c.scoring.sigma, c.scoring.chunk,
                                   c.scoring.reweight)
  fns = tta.build("roda", c.adapt, module, extract, v_source["params"], c.data.crop)
  labels = np.asarray(ds.test.labels)
  done = {(r["dataset"], r["seed"], r["shift"], r["method"]) for r in rows}
  for seed in seeds:
    line, scored = line_split(labels, share, seed)
    for shift, sev in SHIFTS:
      if (name, seed, shift, "roda") in done:
        continue
      x = train.shifted_images(ds.test.images, shift, sev, seed, c.batch_size)
      kept, _, info = tta.run("roda", fns, c.adapt, v_source, source, x[line],
                              jax.random.key(seed), progress=tqdm, reference=ref)
      for method, v in (("none", v_source), ("roda", kept)):
        if method == "roda" or (name, seed, shift, "none") not in done:
          s = loops.predict(predict, v, x, bank.bank, c.batch_size)[0]
          rows.append({"dataset": name, "seed": seed, "shift": shift, "method": method,
                       "adapted": v is not v_source, "calibration": cal.tolist(),
                       "fitted": fitted, "quantile": c.fit.quantile, "line": s[line].tolist(),
                       "line_labels": labels[line].tolist(), "scored": s[scored].tolist(),
                       "scored_labels": labels[scored].tolist(),
                       "gate": (info.get("gate") or {}).get("shifted")})
      atomic_write(out, json.dumps(rows))
      print(name, seed, shift, "done", flush=True)


def rates(thr: float, scores, labels) -> dict:
  s, y = np.asarray(scores), np.asarray(labels)
  flag = s > thr
  tp, fp = np.sum(flag & (y == 1)), np.sum(flag & (y == 0))
  recall = tp / max(np.sum(y == 1), 1)
  precision = tp / max(tp + fp, 1)
  f1 = 2 * precision * recall / max(precision + recall, 1e-12)
  fpr = fp / max(np.sum(y == 0), 1)
  return {"fpr": 100 * fpr, "recall": 100 * recall, "f1": 100 * f1,
          "bacc": 50 * (1 - fpr + recall)}


def threshold_of(rule, r, quantile=None):
  """The rule's threshold for record `r`; `normals` at `quantile` (default: the
  record's own `fit.quantile`, or the config default for records written before it was stored)."""
  name, spec = rule
  if name == "keep":
    return r["fitted"]
  if name == "normals":
    normal = [s for s, y in zip(r["line"], r["line_labels"]) if y == 0]
    q = quantile or r.get("quantile") or base.get_base_config().fit.quantile
    return calibration.conformal_threshold(np.asarray(normal), q)["value"]
  rule_name, eps = spec
  return calibration.transfer_threshold(np.asarray(r["calibration"]), np.asarray(r["line"]),
                                        r["fitted"], eps, rule_name)["value"]


def table(rows):
  print("\nfalse-positive rate / recall / balanced accuracy / F1 (%) on the scored images, mean "
        "over datasets, shifts and seeds")
  for clean in (True, False):
    sel = [r for r in rows if (r["shift"] == "clean") == clean]
    n = len({(r["dataset"], r["seed"], r["shift"]) for r in sel})
    print(f"\n{'clean' if clean else 'the four severity-5 shifts'} (n = {n} lines per method)\n")
    print("| threshold | none FPR | none recall | none bal. acc. | none F1 | roda FPR | roda recall "
          "| roda bal. acc. | roda F1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rule in RULES:
      cells = []
      for method in ("none", "roda"):
        m = [rates(threshold_of(rule, r), r["scored"], r["scored_labels"]) for r in sel
             if r["method"] == method]
        cells += [f"{np.mean([x[k] for x in m]):.1f}" for k in ("fpr", "recall", "bacc", "f1")]
      print(f"| {rule[0]} | " + " | ".join(cells) + " |")
  print("\nper dataset, shifted, roda (FPR / recall / balanced accuracy):")
  for ds in sorted({r["dataset"] for r in rows}):
    sel = [r for r in rows if r["dataset"] == ds and r["shift"] != "clean" and r["method"] == "roda"]
    parts = []
    for rule in RULES:
      m = [rates(threshold_of(rule, r), r["scored"], r["scored_labels"]) for r in sel]
      parts.append(f"{rule[0]} " + "/".join(f"{np.mean([x[k] for x in m]):.0f}"
                                             for k in ("fpr", "recall", "bacc")))
    print(f"  {ds} (n = {len(sel)}): " + "; ".join(parts))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="runs/threshold.json")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--datasets", default="bottle,tire,mono,poly")
  p.add_argument("--line_share", type=float, default=0.1)
  p.add_argument("--banks", default="runs/tt")
  p.add_argument("--table_only", action="store_true")
  a = p.parse_args()
  rows = json.load(open(a.out)) if os.path.exists(a.out) else []
  if not a.table_only:
    for name in a.datasets.split(","):
      run(name, [int(s) for s in a.seeds.split(",")], a.line_share, a.banks, rows, a.out)
  table(rows)


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  main()
