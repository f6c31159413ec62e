"""Probe (not the library): would ignoring clipped pixels in the image score help brightness?

  python scripts/clipping_probe.py runs/s41/clip_wd runs/s41/clip.jsonl

ELPV mono and poly (20 % adaptation split, 50 + 50 test cells, banks under
runs/s37/share/banks/elpv as `scripts/select_share_sweep.sh` fits them), clean and brightness 3
and 5, seeds 0-2, none and roda (the shipped defaults). docs/results.md "The selection's worst
cell, looked at" has the table.

Wraps Context.evaluate: besides the record's own score (max patch distance), the image score is
recomputed from the anomaly map as (a) its max over all pixels and (b) its max over pixels that
are not clipped (grey >= 250 in the shifted, centre-cropped image, dilated by 8 px); an image
whose pixels are all clipped keeps (a). Image AUROC of (a) and (b) goes to a jsonl.
"""
import json, sys
import numpy as np
from scipy import ndimage
from configs import elpv
from experiments import train
from rodajax import data, metrics

OUT = sys.argv[2]
orig = train.Context.evaluate

def evaluate(self, variables, source, images, test_eval, masks, desc, regions=None):
  m, scores, maps = orig(self, variables, source, images, test_eval, masks, desc, regions)
  x = data.centre_crop(np.asarray(images), self.config.data.crop).mean(-1)
  clip = np.stack([ndimage.binary_dilation(g >= 250, iterations=8) for g in x])
  maps = np.asarray(maps)
  a = maps.reshape(len(maps), -1).max(1)
  b = np.where(clip.all((1, 2)), a, np.where(clip, -np.inf, maps).reshape(len(maps), -1).max(1))
  lab = test_eval.labels
  with open(OUT, "a") as f:
    f.write(json.dumps({"desc": desc, "record": metrics.auroc(lab, scores),
                        "map_max": metrics.auroc(lab, a), "map_max_unclipped": metrics.auroc(lab, b),
                        "clipped_share": float(clip.mean())}) + "\n")
  return m, scores, maps

train.Context.evaluate = evaluate
c = elpv.get_config()
c.shift.adapt_fraction = 0.2
c.data.max_test_normal = c.data.max_test_anomalous = 50
c.shift.corruptions = ("clean", "brightness")
c.shift.severities = (3, 5)
c.shift.seeds = (0, 1, 2)
c.adapt.methods = ("none", "roda")
c.bank_dir = "runs/s37/share/banks/elpv"
c.figures = False
train.train_and_evaluate(c, sys.argv[1])
