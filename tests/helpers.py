"""Builders of tiny synthetic datasets on disk (MVTec layout) for end-to-end tests."""
import os

import numpy as np
from PIL import Image


def texture(rng, size):
  """A smooth grey-green texture: a plausible 'normal' surface."""
  base = rng.normal(0, 1, (size // 8, size // 8, 3))
  base = np.repeat(np.repeat(base, 8, 0), 8, 1)
  img = 120 + 20 * base + 6 * rng.normal(0, 1, (size, size, 3))
  img[..., 1] += 20
  return np.clip(img, 0, 255).astype(np.uint8)


def plant_defect(img, y, x, r):
  img = img.copy()
  img[y - r:y + r, x - r:x + r] = [250, 30, 200]
  return img


def write_mvtec(root, category="widget", n_train=6, n_good=3, n_bad=3, size=64, seed=0,
                masks=True):
  """Writes <root>/<category>/{train/good, test/good, test/spot, ground_truth/spot}."""
  rng = np.random.default_rng(seed)
  d = os.path.join(root, category)
  for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
    os.makedirs(os.path.join(d, sub), exist_ok=True)
  for i in range(n_train):
    Image.fromarray(texture(rng, size)).save(os.path.join(d, "train/good", f"{i:03d}.png"))
  for i in range(n_good):
    Image.fromarray(texture(rng, size)).save(os.path.join(d, "test/good", f"{i:03d}.png"))
  for i in range(n_bad):
    y, x = rng.integers(size // 4, 3 * size // 4, 2)
    r = size // 10
    Image.fromarray(plant_defect(texture(rng, size), y, x, r)).save(
        os.path.join(d, "test/spot", f"{i:03d}.png"))
    if masks:
      m = np.zeros((size, size), np.uint8)
      m[y - r:y + r, x - r:x + r] = 255
      Image.fromarray(m).save(os.path.join(d, "ground_truth/spot", f"{i:03d}_mask.png"))
  return d
