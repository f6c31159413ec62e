"""How many test images ImageNet-C brightness clips, good against defective, on the four dev sets.

An image counts as clipped when more than 30 % of its centre-cropped pixels reach a grey level of
250 or more: the rule of `experiments.predict`'s overexposure note (`predict.OVEREXPOSED`). Brightness draws no noise, so the shifted images are the same at every seed.
Prints a markdown table (docs/results.md, "The selection's worst cell, looked at").

  python scripts/brightness_clipping.py        # needs ../shared/data (bottle, tire) and ELPV
"""
import numpy as np
from configs import elpv, mvtec
from experiments import predict, train
from rodajax import data
sets = []
c = mvtec.get_config(); sets.append(("bottle", c, "bottle"))
c = mvtec.get_config(); c.data.name, c.data.root, c.data.categories = "mvtec3d", "../shared/data/mvtec_3d", ("tire",); sets.append(("tire", c, "tire"))
for cat in ("mono", "poly"):
  c = elpv.get_config(); c.data.categories=(cat,); c.data.max_test_normal=50; c.data.max_test_anomalous=50; sets.append((f"ELPV {cat}", c, cat))
print("| set | severity | good cells > 30 % clipped | defective cells > 30 % clipped |")
print("|---|---|---|---|")
for name, c, cat in sets:
  ds = data.load(c.data, cat, seed=c.seed)
  lab = np.asarray(ds.test.labels)
  for sev in (0, 1, 3, 5):
    x = ds.test.images if sev == 0 else np.asarray(train.shifted_images(ds.test.images, "brightness", sev, 0, 16))
    sat = data.clipped_share(data.centre_crop(x, c.data.crop)) > predict.OVEREXPOSED
    print(f"| {name} | {sev or 'clean'} | {sat[lab==0].sum()} of {(lab==0).sum()} | {sat[lab==1].sum()} of {(lab==1).sum()} |")
