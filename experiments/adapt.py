"""Adapt a fitted model to a drifted line on unlabeled images (RoDA by default).

  python -m experiments.adapt --model DIR --images FOLDER_OR_GLOB --out DIR2 \
      [--method roda] [--seed 0] [--config.adapt.key=value ...]

Reads every image of FOLDER (subfolders included; no labels needed: mostly
normal images from the new conditions), runs the adaptation of `config.adapt`
saved in DIR (the shift gate: the images are adapted to only if their median
patch distance to the bank is >= adapt.gate x that of the training normals held
out at fit time; then one pass of minibatches on BatchNorm statistics of the
images; see experiments/tta.py) and writes DIR2 with
the adapted BatchNorm parameters and statistics only: the memory bank, the
threshold and everything else stay those of DIR, which DIR2 names and must
keep next to it. DIR2/model.json records what was adapted, the gate's (and, if
on, the safeguard's) decision and the scores of the adaptation images before and after.
With --normals FOLDER (known-normal images of the new conditions) the
threshold and the normalisation are recalibrated on them after adaptation;
without it, --threshold=transfer carries the fitted threshold over without
labels (the held-out training normals' score quantiles mapped onto the
adaptation images', rodajax/calibration.py; docs/results.md measures it: it
needs adaptation images that are mostly normal), and --threshold=keep (the
default) keeps it.
A rerun with the same model, images and settings reuses DIR2.
"""
import hashlib
import json
import os
import time

import numpy as np

from experiments import cli

MIN_TRANSFER = 8   # adaptation images needed to transfer the threshold (quartiles of fewer: noise)

FLAGS = [cli.Flag("model", "the fitted model directory (python -m experiments.fit)", required=True),
         cli.Flag("images", "folder (subfolders included), quoted glob, or file of unlabeled "
                  "target images", required=True),
         cli.Flag("out", "the adapted model directory to write", required=True),
         cli.Flag("method", "adaptation method (roda, or a baseline: bn_stats, moment, kl, "
                  "hungarian, sinkhorn, discrete)", "roda"),
         cli.Flag("seed", "seed of the holdout split, minibatch order and views", "0"),
         cli.Flag("normals", "optional folder of known-normal images from the new conditions: "
                  "the threshold is recalibrated on them (split-conformal, config.fit.quantile) "
                  "instead of kept from the fitted model", ""),
         cli.Flag("threshold", "without --normals: keep (the fitted threshold) or transfer (the "
                  "fitted threshold carried to the new conditions without labels, from the "
                  "adaptation images' scores: rodajax.calibration.transfer_threshold, rule "
                  f"affine; needs >= {MIN_TRANSFER} images and most of them normal, see "
                  "--anomaly_share: with many anomalous ones it flags nothing)", "keep"),
         cli.Flag("anomaly_share", "with --threshold=transfer: the largest share of anomalous "
                  "images expected among --images, in [0, 0.5)", "0.1"),
         cli.Flag("overwrite", "replace an adapted model made with other images or settings "
                  "(true/false)", "false")]


def main(argv):
  args = cli.parse(argv, __doc__, FLAGS, None,
                   overrides_of=(os.path.join(cli.CONFIGS, "elpv.py"), "adapt."))
  cli.quiet_logs()
  import jax
  from tqdm import tqdm

  from experiments import loops, modeldir, train, tta
  from rodajax import adapt, calibration, data, patchcore, report

  out = args.flags["out"]
  overwrite = cli.parse_bool("overwrite", args.flags["overwrite"])
  method = args.flags["method"]
  try:
    adapt.check_method(method)
    seed = int(args.flags["seed"])
  except ValueError as e:
    raise cli.UserError(f"--method/--seed: {e}") from None
  mode = args.flags["threshold"]
  if mode not in ("keep", "transfer"):
    raise cli.UserError(f"--threshold={mode!r}; use keep or transfer (or give --normals)")
  try:
    share = float(args.flags["anomaly_share"])
    if not 0.0 <= share < 0.5:
      raise ValueError("not in [0, 0.5)")
  except ValueError as e:
    raise cli.UserError(f"--anomaly_share={args.flags['anomaly_share']!r}: {e}; give the largest "
                        "share of anomalous images you expect among --images, e.g. 0.1") from None
  if method == "none":
    raise cli.UserError("--method=none adapts nothing; predict with the fitted model directly")
  model = modeldir.load(args.flags["model"])
  if model.manifest["kind"] != "source":
    raise cli.UserError(f"{args.flags['model']!r} is already an adapted model; adapt its base "
                        f"{model.manifest['base']!r} instead")
  config = model.config
  cli.apply_overrides(config, args.overrides)
  train.validate(config)
  paths, _ = data.expand(args.flags["images"])
  normals = data.expand(args.flags["normals"])[0] if args.flags["normals"] else []
  request = {"base_content_sha256": model.content, "method": method, "seed": seed,
             "normals": [os.path.abspath(p) for p in normals],
             "threshold": None if normals else {"mode": mode, "anomaly_share": share},
             "adapt": config.adapt.to_dict(),
             "images_sha256": hashlib.sha256("\n".join(map(os.path.abspath, paths))
                                             .encode()).hexdigest()}
  if os.path.exists(out):
    if modeldir.is_model(out):
      try:
        old = modeldir.read_manifest(out)
      except cli.UserError as e:   # damaged: set aside, adapt again
        old = {"damaged": report.set_aside(out)}
        cli.warn(f"{e}; moved it to {old['damaged']} and adapting again")
      if old.get("adapted", {}).get("request") == request:
        print(f"adapted model: {out} was already made from these images and settings; reused, "
              "nothing recomputed", flush=True)
        return
      if not overwrite and "damaged" not in old:
        raise cli.UserError(f"{out!r} holds a model adapted with other images or settings; pass "
                            "another --out, or --overwrite=true (the old one is moved aside)")
    elif not os.path.isdir(out) or os.listdir(out):
      raise cli.UserError(f"{out!r} exists and is not a model directory; pass a new --out")
    else:
      os.rmdir(out)

  t0 = time.perf_counter()
  images, notes = data.read_many(paths, config.data.resize)
  notes = data.tally_notes(notes)
  if notes:
    cli.warn(f"converted while reading {len(paths)} images: {cli.notes_line(notes)}")
  module, extract = train.build_extractor(config)
  source = train.source_of(model.bank)
  fns = tta.build(method, config.adapt, module, extract, model.variables["params"],
                  config.data.crop)
  gate = model.manifest.get("gate") or {}
  if gate and gate.get("settings") != train.gate_settings(config):
    cli.warn(f"the shift gate's reference was computed with other transport settings "
             f"({gate.get('settings')}); the gate compares unlike costs: refit the model with "
             "these --config.adapt settings, or set --config.adapt.gate=0")
  kept, last, info = tta.run(method, fns, config.adapt, model.variables, source, images,
                             jax.random.key(seed), progress=tqdm,
                             reference=gate.get("reference"))
  predict = patchcore.make_predict(extract, config.data.crop, config.scoring.sigma,
                                   config.scoring.chunk, config.scoring.reweight)

  def score(v):
    return loops.predict(predict, v, images, source.bank, config.batch_size)[0]
  before = score(model.variables)
  after = before if kept is model.variables else score(kept)
  thr = model.threshold
  scores = {"threshold": thr,
            "median_before": float(np.median(before)), "median_after": float(np.median(after)),
            "share_above_threshold_before": float(np.mean(before > thr)),
            "share_above_threshold_after": float(np.mean(after > thr))}
  if not np.all(np.isfinite(after)):
    raise cli.UserError("the adapted model gives NaN/inf scores on the adaptation images "
                        f"(diverged); adapt again with a lower --config.adapt.lr (now "
                        f"{config.adapt.lr})")
  threshold = None
  if normals:
    normal_images = data.load_many(normals, config.data.resize)
    ns = loops.predict(predict, kept, normal_images, source.bank, config.batch_size)[0]
    threshold = calibration.conformal_threshold(ns, config.fit.quantile)
    threshold["rule"] = (f"recalibrated after adaptation: split-conformal quantile "
                         f"{config.fit.quantile} of {len(normals)} normal images of "
                         f"{args.flags['normals']}")
    threshold["median"] = float(np.median(ns))
    scores["share_above_new_threshold_after"] = float(np.mean(after > threshold["value"]))
  elif mode == "transfer" and len(paths) < MIN_TRANSFER:
    cli.warn(f"{len(paths)} adaptation images are too few to transfer the threshold (needs >= "
             f"{MIN_TRANSFER}); the fitted threshold is kept: give more images, or known-normal "
             "ones with --normals")
  elif mode == "transfer":
    cal = model.manifest.get("fit", {}).get("calibration_scores")
    if not cal:
      raise cli.UserError(f"--threshold=transfer needs the held-out normals' scores of the fitted "
                          f"model, and {args.flags['model']!r} has none (fitted with "
                          "fit.calibration_fraction=0): refit it with held-out normals, or give "
                          "known-normal images of the new conditions with --normals")
    try:
      t = calibration.transfer_threshold(np.asarray(cal), after, thr, share, "affine")
    except ValueError as e:
      raise cli.UserError(f"--threshold=transfer: {e}") from None
    threshold = {**t, "median": t["a"] + t["b"] * model.median,
                 "rule": (f"transferred without labels: the fitted threshold "
                          f"{thr:.6g} mapped by the affine map of the lower quartile and "
                          f"median of {len(cal)} held-out training normals' scores onto those "
                          f"of the {len(paths)} adaptation images (assumed <= {share:.0%} "
                          "anomalous)")}
    scores["share_above_new_threshold_after"] = float(np.mean(after > threshold["value"]))
  guard = info.get("safeguard", {})
  adapted = {"request": request, "method": method, "images": os.path.abspath(
      args.flags["images"]), "n_images": len(paths), "conversions": notes,
      "bn_mode": info.get("bn_stats_used"),
      "stem_log_var_ratio": info.get("stem_log_var_ratio"),
      "noise_ratio": info.get("noise_ratio"), "steps": info.get("steps"),
      "loss_first": info.get("loss_first"), "loss_last": info.get("loss_last"),
      "select": info.get("select"),
      "safeguard": {k: guard.get(k) for k in ("criterion", "margin", "source", "kept", "adapted")}
      if guard else None, "gate": info.get("gate"),
      "warning": info.get("warning"), "error": info.get("error"), "scores": scores,
      "seconds": time.perf_counter() - t0}
  # The config as adapted (with the --config.adapt overrides).
  modeldir.save_adapted(out, model, kept, adapted, json.loads(config.to_json_best_effort()),
                        threshold)
  thr = threshold["value"] if threshold else thr
  if scores["median_after"] > thr and not threshold:
    cli.warn(f"more than half of the adaptation images still score above the threshold "
             f"({scores['share_above_threshold_after']:.0%}): the drift is larger than what "
             "adaptation compensated, or many of these images are anomalous; give normal "
             "images of the new conditions with --normals to recalibrate the threshold")
  g = info.get("gate")
  if g and not g["shifted"]:
    decision = (f"the shift gate found no shift ({g['statistic']} {g['value']:.4g} = "
                f"{g['ratio']:.2f} x the clean reference, below {g['threshold']}): the source "
                "model is kept unchanged")
  elif guard:
    decision = (f"the safeguard kept {guard['kept']} (held-out {guard['criterion']} "
                f"{guard['source']:.4g} -> {min(guard['candidates']):.4g})" if guard["adapted"]
                else f"the safeguard kept the source model (no candidate beat its held-out "
                f"{guard['criterion']} {guard['source']:.4g} by {guard['margin']:.0%})")
  else:
    decision = f"{info.get('steps', 0)} steps, no safeguard"
  if info.get("select"):
    sel = info["select"]
    decision = (f"adapted on the {sel['kept']} of {sel['of']} images scoring lowest "
                f"(select={sel['rule']}, share {sel['share']:g}); {decision}")
  if "bn_stats_used" in info:   # absent when the gate kept the source model
    decision = f"{statistics_note(info)}; {decision}"
  if g and g["shifted"]:
    decision = (f"the shift gate found a shift ({g['statistic']} {g['ratio']:.2f} x the clean "
                f"reference, >= {g['threshold']}); {decision}")
  how = ("" if not threshold else " recalibrated on --normals" if normals else
         f" transferred from {model.threshold:.4g}")
  print(f"adapted model: {out} ({method} on {len(paths)} images; {decision}; median score "
        f"{scores['median_before']:.4g} -> {scores['median_after']:.4g}, threshold{how} "
        f"{thr:.4g}; "
        f"{time.perf_counter() - t0:.0f} s)", flush=True)


def statistics_note(info) -> str:
  """Which BatchNorm statistics the adapted model uses, and for `routed` why."""
  used, ratio = info["bn_stats_used"], info.get("stem_log_var_ratio")
  if ratio is None or isinstance(ratio, list):   # not routed, or one per class
    return f"{used} BatchNorm statistics"
  why = f"> {info['noise_ratio']:g}: added noise" if used == "geometric" else (
      f"<= {info['noise_ratio']:g}")
  return f"{used} BatchNorm statistics (routed: stem log variance ratio {ratio:.2f} {why})"


if __name__ == "__main__":
  cli.run(main)
