"""Fit a detector once: a self-contained model directory with a calibrated threshold.

  python -m experiments.fit --config CONFIG [--config.key=value ...] --model DIR

Fits on the training (normal) images of the config's one category (MVTec
layouts: data.root + data.categories=<one>; ELPV: mono or poly) and writes DIR:
the backbone (name, weights file digest, the variables themselves), the
memory bank, the config, the image threshold and the score normalisation
(see rodajax/calibration.py).

Threshold (config.fit): a share of the training normals (fit.calibration_fraction,
seeded) is held out; a calibration bank is fitted without them and their scores
give the split-conformal fit.quantile (default 0.99). The saved bank itself is
fitted on all training images (the same bank `experiments.roda` fits), so the
threshold is conservative for it. With fit.threshold=f1 the threshold maximises
F1 on the labelled images of fit.validation (good/ = normal, any other
subfolder = anomalous).

A rerun with the same config reuses DIR; a DIR fitted with another config is
kept unless --overwrite=true (the old one is then moved aside, not deleted).
"""
import hashlib
import json
import os
import tempfile
import time

import numpy as np

from experiments import cli

FLAGS = [cli.Flag("model", "the model directory to write", required=True),
         cli.Flag("overwrite", "replace a model fitted with another config (true/false)", "false")]


def fit_fingerprint(config, category) -> str:
  from experiments import train
  keys = {"bank": train.bank_fingerprint(config, category), "fit": config.fit.to_dict(),
          "scoring": config.scoring.to_dict(),
          "gate": train.gate_settings(config)}
  return hashlib.sha1(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:12]


def validate_fit(config) -> str:
  from experiments import train
  from rodajax import data
  if data.is_points(config.data):
    raise cli.UserError(f"fit/adapt/predict read images; point clouds (config.data.name="
                        f"{config.data.name!r}) run through python -m experiments.roda "
                        "--config configs/pointcloud.py for now")
  train.validate(config)
  cats = train.parse_list(config.data.categories)
  if len(cats) != 1:
    raise cli.UserError(f"fit makes one model per category; config.data.categories="
                        f"{config.data.categories!r} names {len(cats)}: pass "
                        f"--config.data.categories={cats[0]} (and another --model per category)")
  f = config.fit
  if f.threshold not in ("quantile", "f1"):
    raise cli.UserError(f"config.fit.threshold={f.threshold!r}; use quantile or f1")
  if not 0.0 < f.quantile < 1.0:
    raise cli.UserError(f"config.fit.quantile={f.quantile} must be in (0, 1), e.g. 0.99")
  if not 0.0 <= f.calibration_fraction < 1.0:
    raise cli.UserError(f"config.fit.calibration_fraction={f.calibration_fraction} must be in "
                        "[0, 1), e.g. 0.2")
  if f.threshold == "quantile" and f.calibration_fraction <= 0.0:
    raise cli.UserError("config.fit.threshold=quantile needs held-out normals: set "
                        "config.fit.calibration_fraction > 0 (e.g. 0.2)")
  if f.threshold == "f1" and not f.validation:
    raise cli.UserError("config.fit.threshold=f1 needs labelled images: set config.fit.validation "
                        "to a folder with good/ and defect subfolders")
  return cats[0]


def labelled_folder(folder: str):
  """(paths, labels) of a folder whose good/ holds normals and other subfolders anomalies."""
  from rodajax import data
  if not os.path.isdir(folder):
    raise cli.UserError(f"config.fit.validation={folder!r} is not a folder")
  paths, labels = [], []
  for sub in sorted(os.listdir(folder)):
    d = os.path.join(folder, sub)
    if os.path.isdir(d) and not sub.startswith("."):
      found = data.list_images(d, recursive=True)
      paths += found
      labels += [int(sub != "good")] * len(found)
  if not paths or len(set(labels)) != 2:
    raise cli.UserError(f"config.fit.validation={folder!r} needs images in good/ and in at least "
                        "one defect subfolder (e.g. good/, scratch/)")
  return paths, np.asarray(labels)


def weights_reference(config) -> dict:
  from rodajax import backbones
  w = config.model.weights
  if not w:
    return {"weights": "random init", "weights_file": None, "weights_sha256": None}
  from experiments import modeldir
  path = backbones.pretrained_path(config.model.backbone) if w == "pretrained" else w
  return {"weights": w, "weights_file": os.path.abspath(path),
          "weights_sha256": modeldir.file_digest(path)}


def main(argv):
  args = cli.parse(argv, __doc__, FLAGS, os.path.join(cli.CONFIGS, "elpv.py"))
  cli.quiet_logs()
  from tqdm import tqdm

  from experiments import loops, modeldir, train
  from rodajax import calibration, data, patchcore, report

  config, out = args.config, args.flags["model"]
  overwrite = cli.parse_bool("overwrite", args.flags["overwrite"])
  category = validate_fit(config)
  fp = fit_fingerprint(config, category)
  if os.path.exists(out):
    if modeldir.is_model(out):
      try:
        old = modeldir.read_manifest(out)
      except cli.UserError as e:
        if not os.access(os.path.dirname(os.path.abspath(out)), os.W_OK):
          raise
        aside = report.set_aside(out)
        cli.warn(f"{e}; moved it to {aside} and fitting again")
        old = None
      if old is not None and old.get("fit_fingerprint") == fp:
        print(f"model: {out} was already fitted with this config ({old['created']}); reused, "
              "nothing recomputed", flush=True)
        return
      if old is not None and not overwrite:
        raise cli.UserError(f"{out!r} holds a model fitted with another config; pass another "
                            "--model, or --overwrite=true to replace it (the old one is moved "
                            "aside)")
    elif not os.path.isdir(out) or os.listdir(out):
      raise cli.UserError(f"{out!r} exists and is not a model directory; pass a new --model")
    else:
      os.rmdir(out)   # an empty folder the user made for it

  t0 = time.perf_counter()
  module, variables, extract = train.build_model(config)
  ds = data.load(config.data, category, seed=config.seed, test=False)
  timing = {}
  if config.model.get("bn_stats", "weights") == "train":
    variables = train.train_statistics(config, module, variables, ds.train.images)
  feats = train.train_features(config, ds, variables, extract, timing)
  with tempfile.TemporaryDirectory() as tmp:
    bank, variables = train.fit_or_restore(config, tmp, ds, module, variables, extract, timing,
                                           feats, statistics_done=True)
  c = config
  n = len(ds.train)
  manifest = {"dataset": ds.name, "category": category, "backbone": c.model.backbone,
              **weights_reference(c), "n_train": n, "fit_fingerprint": fp}
  median, cal = None, {}
  if c.fit.calibration_fraction > 0:
    held, cal_bank, held_scores = train.calibration_scores(c, feats)
    median = float(np.median(held_scores))
    cal = {"n_calibration": len(held), "calibration_images": [ds.train.names[i] for i in held],
           "calibration_scores": [float(s) for s in held_scores]}
    # The shift gate's clean reference (experiments.adapt): the same held-out normals.
    manifest["gate"] = {"reference": train.reference_statistic(c, feats[held], cal_bank),
                        "n_held": len(held),
                        "settings": train.gate_settings(c)}
  if c.fit.threshold == "quantile":
    thr = calibration.conformal_threshold(np.asarray(cal["calibration_scores"]), c.fit.quantile)
    thr["rule"] = (f"split-conformal quantile {c.fit.quantile} of {thr['n']} held-out normal "
                   "scores (calibration bank without them)")
  else:
    paths, labels = labelled_folder(c.fit.validation)
    imgs = data.load_many(paths, c.data.resize)
    predict = patchcore.make_predict(extract, c.data.crop, c.scoring.sigma, c.scoring.chunk,
                                     c.scoring.reweight)
    scores = loops.predict(predict, variables, imgs, bank.bank, c.batch_size,
                               progress=tqdm, desc="validation scores")[0]
    thr = calibration.f1_threshold(labels, scores)
    thr["rule"] = f"F1-optimal on {len(paths)} labelled images of {c.fit.validation}"
    if median is None:
      median = float(np.median(scores[labels == 0]))
  manifest.update({
      "threshold": thr, "normalisation": {
          "median": median, "threshold": thr["value"],
          "formula": "0.5 * (score - median) / (threshold - median): 0 = median normal, "
                     "0.5 = threshold"},
      "bank": {"size": int(bank.bank.shape[0]), "dim": int(bank.bank.shape[1]),
               "grid": list(bank.grid)},
      "fit": {**cal, "seconds": time.perf_counter() - t0, **timing},
      "config": json.loads(c.to_json_best_effort())})
  if os.path.exists(out):
    aside = report.set_aside(out, "previous")
    cli.warn(f"the previous model in {out} was moved to {aside}")
  modeldir.save_source(out, manifest, bank, variables)
  note = f" ({thr['note']})" if thr.get("note") else ""
  print(f"model: {out} (bank {bank.bank.shape[0]} x {bank.bank.shape[1]} from {n} training "
        f"images of {ds.name}/{category}; threshold {thr['value']:.4f}: {thr['rule']}{note}; "
        f"{time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
  cli.run(main)
