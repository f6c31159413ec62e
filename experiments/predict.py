"""Score a folder of images with a saved (fitted or adapted) model.

  python -m experiments.predict --model DIR --images FOLDER_OR_GLOB --out OUT \
      [--batch 16] [--maps overlay|both|none]

Writes
  OUT/predictions.csv  one row per image, in sorted path order: path (as found under
                       FOLDER), score (the max patch distance), normalized_score
                       (0 = median normal calibration image, 0.5 = threshold),
                       anomalous (1 when score > the model's threshold), map, note
                       (conversions applied while reading: grey -> RGB, ...; and
                       "overexposed" when over 30 % of the crop is clipped white)
  OUT/maps/            per image, <relative path with / as __>.png: the image's
                       centre crop with its anomaly map on the normalised scale
                       (blue = normal, green = threshold, red = far above);
                       --maps=both adds <name>_map.png (the map, 8-bit, 255 at
                       twice the threshold's normalised level)
  OUT/errors.csv       images that could not be read (named, with the reason);
                       they get no prediction row, the rest are scored
  OUT/summary.json     counts, threshold and its rule, speed, what was reused

Memory is bounded by --batch (images are read, scored and written one batch at
a time; rows go to OUT/.partial.csv as they come, so an interrupted run
resumes where it stopped). A rerun with the same model and images reuses OUT.
"""
import csv
import hashlib
import io
import json
import os
import time

import numpy as np

from experiments import cli

FLAGS = [cli.Flag("model", "a model directory from experiments.fit or experiments.adapt",
                  required=True),
         cli.Flag("images", "folder (subfolders included), quoted glob, or file of images",
                  required=True),
         cli.Flag("out", "output folder (predictions.csv, maps/, summary.json)", required=True),
         cli.Flag("batch", "images per forward pass (bounds memory)", "16"),
         cli.Flag("maps", "anomaly-map PNGs: overlay | both (overlay + the map) | none",
                  "overlay"),
         cli.Flag("labels", "optional: 'folders' (first subfolder: good = normal, other = "
                  "anomalous) or a CSV with path,label columns; adds AUROC and the threshold's "
                  "precision/recall to the summary", "")]
COLUMNS = ("path", "score", "normalized_score", "anomalous", "map", "note")
OVEREXPOSED = 0.3     # share of an image's centre crop clipped white that earns a note
OVEREXPOSED_NOTE = f"overexposed: over {OVEREXPOSED:.0%} of the pixels clipped white"
PARTIAL = ".partial.csv"
PARTIAL_META = ".partial.json"


def map_name(path: str, root: str) -> str:
  rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
  return os.path.splitext(rel.replace(os.sep, "__"))[0] + ".png"


def _colormap() -> np.ndarray:
  import matplotlib
  matplotlib.use("Agg")
  return (matplotlib.colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def write_maps(folder, name, image, level, lut, both):
  """Overlay (and map) PNGs of one image; `level` = the map on the normalised scale."""
  from PIL import Image
  u = np.clip(level, 0.0, 1.0)
  heat = lut[np.round(u * 255).astype(np.int32)]
  overlay = (0.5 * image.astype(np.float32) + 0.5 * heat).astype(np.uint8)
  Image.fromarray(overlay).save(os.path.join(folder, name), compress_level=1)
  if both:
    Image.fromarray(np.round(u * 255).astype(np.uint8)).save(
        os.path.join(folder, name[:-4] + "_map.png"), compress_level=1)


def evaluate(rows, root, labels_spec) -> dict:
  """Image AUROC and the saved threshold's precision / recall / F1 against known labels."""
  from sklearn.metrics import precision_recall_fscore_support, roc_auc_score
  if labels_spec == "folders":
    lab = {r["path"]: int(os.path.relpath(os.path.abspath(r["path"]), os.path.abspath(root))
                          .split(os.sep)[0] != "good") for r in rows}
  else:
    if not os.path.isfile(labels_spec):
      raise cli.UserError(f"--labels={labels_spec!r}: use 'folders' or a CSV file with path,label")
    with open(labels_spec, newline="") as f:
      table = {os.path.abspath(r["path"]): int(r["label"]) for r in csv.DictReader(f)}
    lab = {r["path"]: table.get(os.path.abspath(r["path"])) for r in rows}
    missing = [p for p, v in lab.items() if v is None]
    if missing:
      raise cli.UserError(f"--labels={labels_spec!r} has no label for {len(missing)} images "
                          f"(first: {missing[0]})")
  y = np.asarray([lab[r["path"]] for r in rows])
  s = np.asarray([float(r["score"]) for r in rows])
  d = np.asarray([int(r["anomalous"]) for r in rows])
  out = {"n_normal": int((y == 0).sum()), "n_anomalous": int(y.sum())}
  if len(set(y)) == 2:
    out["image_auroc"] = float(roc_auc_score(y, s) * 100)
  p, r, f, _ = precision_recall_fscore_support(y, d, average="binary", zero_division=0)
  out.update({"precision": float(p) * 100, "recall": float(r) * 100, "f1": float(f) * 100,
              "false_positive_rate": float(np.mean(d[y == 0])) * 100 if (y == 0).any() else None})
  return out


def _read_partial(out, content):
  """Rows of an interrupted run with the same model (path -> row); damaged parts are dropped."""
  from rodajax import report
  meta, part = os.path.join(out, PARTIAL_META), os.path.join(out, PARTIAL)
  if not (os.path.isfile(meta) and os.path.isfile(part)):
    return {}
  try:
    if json.load(open(meta)).get("model_content_sha256") != content:
      return {}
    rows = {}
    with open(part, newline="") as f:
      for r in csv.DictReader(f):
        if r.get("path") and r.get("anomalous") in ("0", "1"):
          float(r["score"])
          rows[r["path"]] = r
    return rows
  except (ValueError, OSError, csv.Error, TypeError) as e:
    aside = report.set_aside(part)
    cli.warn(f"{part} is damaged ({e}); moved it to {aside}; scoring all images again")
    return {}


def main(argv):
  args = cli.parse(argv, __doc__, FLAGS)
  cli.quiet_logs()
  from concurrent.futures import ThreadPoolExecutor

  import jax
  from tqdm import tqdm

  from experiments import modeldir, train
  from rodajax import calibration, data, patchcore, report

  try:
    batch = int(args.flags["batch"])
    assert batch >= 1
  except (ValueError, AssertionError):
    raise cli.UserError(f"--batch={args.flags['batch']!r}: expects a positive integer") from None
  maps_mode = args.flags["maps"]
  if maps_mode not in ("overlay", "both", "none"):
    raise cli.UserError(f"--maps={maps_mode!r}: use overlay, both or none")
  out = args.flags["out"]
  model = modeldir.load(args.flags["model"])
  paths, root = data.expand(args.flags["images"])
  images_sha = hashlib.sha256("\n".join(paths).encode()).hexdigest()
  pred_path, summary_path = os.path.join(out, "predictions.csv"), os.path.join(out, "summary.json")
  if os.path.isfile(summary_path) and os.path.isfile(pred_path):
    try:
      old = json.load(open(summary_path))
    except ValueError:
      old = {}
    if (old.get("model_content_sha256") == model.content and old.get("images_sha256") == images_sha
        and old.get("maps_mode") == maps_mode):
      print(f"predictions: {pred_path} already holds these {len(paths)} images scored by this "
            f"model; reused, nothing recomputed (summary: {summary_path})", flush=True)
      return
  cli.writable_folder(out, "--out", "choose a writable folder")
  maps_dir = os.path.join(out, "maps")
  if maps_mode != "none":
    os.makedirs(maps_dir, exist_ok=True)

  c = model.config
  t0 = time.perf_counter()
  rows = _read_partial(out, model.content)
  reused = len([p for p in paths if p in rows])
  report.atomic_write(os.path.join(out, PARTIAL_META),
                      json.dumps({"model_content_sha256": model.content}))
  todo = [p for p in paths if p not in rows]
  _, extract = train.build_extractor(c)
  predict = patchcore.make_predict(extract, c.data.crop, c.scoring.sigma, c.scoring.chunk,
                                   c.scoring.reweight)
  bank = jax.numpy.asarray(model.bank.bank)
  thr, med = model.threshold, model.median
  lut = _colormap()
  errors = []
  new_file = not os.path.isfile(os.path.join(out, PARTIAL)) or not rows
  part = open(os.path.join(out, PARTIAL), "w" if new_file else "a", newline="")
  os.chmod(part.name, report.file_mode())
  writer = csv.DictWriter(part, COLUMNS)
  if new_file:
    writer.writeheader()

  def read(p):
    try:
      return data.read_rgb(p, c.data.resize)
    except data.DataError as e:
      return e
  chunks = [todo[i:i + batch] for i in range(0, len(todo), batch)]
  try:
    with ThreadPoolExecutor(4) as readers, ThreadPoolExecutor(2) as writers, \
        tqdm(total=len(todo), desc="predict", unit="img") as bar:
      # Reads ahead by at most two batches (Executor.map would queue every image at once).
      ahead = [[readers.submit(read, p) for p in ch] for ch in chunks[:2]]
      written = []
      for i, chunk in enumerate(chunks):
        if i + 2 < len(chunks):
          ahead.append([readers.submit(read, p) for p in chunks[i + 2]])
        loaded = [f.result() for f in ahead.pop(0)]
        ok = [(p, r) for p, r in zip(chunk, loaded) if not isinstance(r, Exception)]
        errors += [(p, str(r)) for p, r in zip(chunk, loaded) if isinstance(r, Exception)]
        if ok:
          x = np.stack([r[0] for _, r in ok])
          m = len(x)
          if m < batch:   # one compiled shape for every batch
            x = np.concatenate([x, np.repeat(x[-1:], batch - m, axis=0)])
          scores, maps = jax.device_get(predict(model.variables, bank, x))
          scores, maps = scores[:m], maps[:m]
          if not np.all(np.isfinite(scores)):
            bad = ok[int(np.flatnonzero(~np.isfinite(scores))[0])][0]
            raise cli.UserError(f"the model {args.flags['model']!r} gives NaN/inf scores "
                                f"(first on {bad!r}): its weights or adaptation are broken; "
                                "predict with the fitted model, or adapt again with a lower "
                                "--config.adapt.lr")
          norm = calibration.normalise(scores, med, thr)
          crops = data.centre_crop(x[:m], c.data.crop)
          clipped = data.clipped_share(crops) > OVEREXPOSED
          for f in written:
            f.result()      # at most two batches of maps in flight: flat memory
          written = []
          for j, (p, (_, note)) in enumerate(ok):
            name = map_name(p, root) if maps_mode != "none" else ""
            if name:
              written.append(writers.submit(write_maps, maps_dir, name, crops[j],
                                            calibration.normalise(maps[j], med, thr), lut,
                                            maps_mode == "both"))
            if clipped[j]:
              note = "; ".join(filter(None, (note, OVEREXPOSED_NOTE)))
            rows[p] = {"path": p, "score": f"{scores[j]:.9g}", "normalized_score":
                       f"{norm[j]:.6g}", "anomalous": str(int(scores[j] > thr)),
                       "map": os.path.join("maps", name) if name else "", "note": note}
            writer.writerow(rows[p])
          part.flush()
        bar.update(len(chunk))
      for f in written:
        f.result()
  finally:
    part.close()
  seconds = time.perf_counter() - t0

  body = [rows[p] for p in paths if p in rows]
  buf = io.StringIO()
  table = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
  table.writeheader()
  table.writerows(body)
  report.atomic_write(pred_path, buf.getvalue())
  err_path = os.path.join(out, "errors.csv")
  if errors:
    buf = io.StringIO()
    ew = csv.writer(buf, lineterminator="\n")
    ew.writerow(("path", "error"))
    ew.writerows(errors)
    report.atomic_write(err_path, buf.getvalue())
  elif os.path.exists(err_path):
    os.remove(err_path)
  if not body:
    raise cli.UserError(f"none of the {len(paths)} images could be read (first: {errors[0][0]}: "
                        f"{errors[0][1]}); all are listed in {err_path}")
  notes = data.tally_notes(r["note"] for r in body)   # reused rows included
  n_anom = sum(r["anomalous"] == "1" for r in body)
  evaluation = evaluate(body, root, args.flags["labels"]) if args.flags["labels"] else None
  summary = {"model": os.path.abspath(args.flags["model"]), "model_kind": model.manifest["kind"],
             "model_content_sha256": model.content, "threshold": thr,
             "threshold_rule": model.manifest["threshold"].get("rule"),
             "images": args.flags["images"], "images_sha256": images_sha,
             "n_images": len(paths), "n_scored": len(body), "n_anomalous": n_anom,
             "n_errors": len(errors), "reused": reused,
             "n_overexposed": notes.get(OVEREXPOSED_NOTE, 0),
             "conversions": {k: v for k, v in notes.items() if k != OVEREXPOSED_NOTE},
             "seconds": seconds, "images_per_s": (len(todo) - len(errors)) / max(seconds, 1e-9),
             "batch": batch, "maps_mode": maps_mode, "evaluation": evaluation,
             "predictions": pred_path, "maps": maps_dir if maps_mode != "none" else None}
  report.atomic_write(summary_path, json.dumps(summary, indent=1))
  for f in (PARTIAL, PARTIAL_META):
    if os.path.exists(os.path.join(out, f)):
      os.remove(os.path.join(out, f))
  n_over = notes.pop(OVEREXPOSED_NOTE, 0)
  if notes:
    cli.warn(f"converted while reading: {cli.notes_line(notes)}")
  if n_over:
    cli.warn(f"{n_over} of {len(body)} images are overexposed (over {OVEREXPOSED:.0%} of the "
             "centre crop at grey level 250 or more; `note` in predictions.csv): clipped areas "
             "hide defects and can score as anomalous, so check the exposure of these images")
  if errors:
    cli.warn(f"{len(errors)} of {len(paths)} images could not be read (first: {errors[0][0]}: "
             f"{errors[0][1]}); they are listed in {err_path}")
  if evaluation:
    print("evaluation against " + args.flags["labels"] + ": " + ", ".join(
        f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in evaluation.items()),
        flush=True)
  print(f"predictions: {pred_path} ({len(body)} images, {n_anom} anomalous at threshold "
        f"{thr:.4g}; {reused} reused from an interrupted run; {summary['images_per_s']:.1f} img/s)"
        + (f"; maps: {maps_dir}/" if maps_mode != "none" else "") + f"; summary: {summary_path}",
        flush=True)


if __name__ == "__main__":
  cli.run(main)
