"""Write a drifted line as image folders: the shifted test set of a config, split 20/80.

  python -m experiments.shift_folder --config CONFIG [--config.key=value ...] --out DIR \
      [--shift brightness] [--severity 3] [--seed 0]

For trying fit -> adapt -> predict without a drifted line of your own (and for
the tests): the test images of the config's one category are corrupted
(ImageNet-C `--shift` at `--severity`, the same noise as experiments.roda for
that seed; `--shift clean` for none) and split as in the experiments
(config.shift.adapt_fraction, default 0.2 here):

  DIR/adapt/             the adaptation part, unlabeled (all images in one folder)
  DIR/test/good/         the evaluation part, normal images
  DIR/test/<type>/       the evaluation part, anomalous images by defect type
  DIR/labels.csv         path,label,type of every image written

Images are written as PNG at config.data.resize (what the pipeline reads).
"""
import csv
import io
import os

from experiments import cli

FLAGS = [cli.Flag("out", "output folder", required=True),
         cli.Flag("shift", "corruption name (clean = none)", "brightness"),
         cli.Flag("severity", "1-5", "3"),
         cli.Flag("seed", "seed of the split and the corruption noise", "0")]


def main(argv):
  args = cli.parse(argv, __doc__, FLAGS, os.path.join(cli.CONFIGS, "elpv.py"))
  cli.quiet_logs()
  import numpy as np
  from PIL import Image

  from experiments import fit, train
  from rodajax import corruptions, data, report

  config, out = args.config, args.flags["out"]
  shift = args.flags["shift"]
  try:
    severity, seed = int(args.flags["severity"]), int(args.flags["seed"])
  except ValueError:
    raise cli.UserError("--severity and --seed expect integers") from None
  if shift != "clean":
    corruptions.check(shift, severity)
  category = fit.validate_fit(config)
  fraction = config.shift.adapt_fraction or 0.2
  if os.path.isdir(out) and os.listdir(out):
    raise cli.UserError(f"--out {out!r} exists and is not empty; pass a new folder")
  ds = data.load(config.data, category, seed=config.seed)
  shifted = train.shifted_images(ds.test.images, shift, severity if shift != "clean" else 0,
                                 seed, config.batch_size)
  adapt_idx, eval_idx = train.target_split(len(ds.test), fraction, seed)
  rows = []
  for part, idx in (("adapt", adapt_idx), ("test", eval_idx)):
    for k, i in enumerate(idx):
      t = ds.test.types[i]
      folder = os.path.join(out, "adapt") if part == "adapt" else os.path.join(out, "test", t)
      os.makedirs(folder, exist_ok=True)
      stem = os.path.splitext(os.path.basename(ds.test.names[i]))[0]
      # The index prefix keeps the experiment's order (sorted listing = the split's order).
      path = os.path.join(folder, f"{k:04d}_{t}_{stem}.png" if part == "adapt" else f"{stem}.png")
      buf = io.BytesIO()
      Image.fromarray(np.asarray(shifted[i])).save(buf, format="PNG")
      report.atomic_write(path, buf.getvalue())
      rows.append((path, int(ds.test.labels[i]), t))
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(("path", "label", "type"))
  w.writerows(rows)
  report.atomic_write(os.path.join(out, "labels.csv"), buf.getvalue())
  print(f"drifted line: {out}/adapt ({len(adapt_idx)} unlabeled images) and {out}/test "
        f"({len(eval_idx)} images, labels in {out}/labels.csv); {ds.name}/{category}, {shift} "
        f"severity {severity}, seed {seed}", flush=True)


if __name__ == "__main__":
  cli.run(main)
