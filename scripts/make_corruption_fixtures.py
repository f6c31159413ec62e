"""Writes tests/fixtures/corruptions.npz: ImageNet-C reference outputs for the
deterministic corruptions, made with the libraries ImageNet-C uses.

Run ONCE in a scratch environment (never needed by the project or its tests):
    /tmp/ref/bin/pip install opencv-python-headless scikit-image pillow numpy scipy
    /tmp/ref/bin/python scripts/make_corruption_fixtures.py

The corruption code below restates ImageNet-C's formulas (Hendrycks &
Dietterich, `imagenet_c/corruptions.py`) for one 40x40 image at severities 1-5.
"""
import os

import cv2
import numpy as np
import skimage as sk
from PIL import Image
from skimage.filters import gaussian

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def disk(radius, alias_blur=0.1, dtype=np.float32):
  if radius <= 8:
    L, ksize = np.arange(-8, 8 + 1), (3, 3)
  else:
    L, ksize = np.arange(-radius, radius + 1), (5, 5)
  X, Y = np.meshgrid(L, L)
  aliased = np.array((X ** 2 + Y ** 2) <= radius ** 2, dtype=dtype)
  aliased /= np.sum(aliased)
  return cv2.GaussianBlur(aliased, ksize=ksize, sigmaX=alias_blur)


def defocus_blur(x, s):
  c = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][s - 1]
  x = np.array(x) / 255.
  k = disk(radius=c[0], alias_blur=c[1])
  ch = [cv2.filter2D(x[:, :, d], -1, k) for d in range(3)]
  return np.clip(np.array(ch).transpose((1, 2, 0)), 0, 1) * 255


def brightness(x, s):
  c = [.1, .2, .3, .4, .5][s - 1]
  x = np.array(x) / 255.
  x = sk.color.rgb2hsv(x)
  x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
  return np.clip(sk.color.hsv2rgb(x), 0, 1) * 255


def contrast(x, s):
  c = [0.4, .3, .2, .1, .05][s - 1]
  x = np.array(x) / 255.
  means = np.mean(x, axis=(0, 1), keepdims=True)
  return np.clip((x - means) * c + means, 0, 1) * 255


def saturate(x, s):
  c = [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)][s - 1]
  x = np.array(x) / 255.
  x = sk.color.rgb2hsv(x)
  x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
  return np.clip(sk.color.hsv2rgb(x), 0, 1) * 255


def gaussian_blur(x, s):
  c = [1, 2, 3, 4, 6][s - 1]
  x = gaussian(np.array(x) / 255., sigma=c, channel_axis=-1)
  return np.clip(x, 0, 1) * 255


def pixelate(x, s):
  c = [0.6, 0.5, 0.4, 0.3, 0.25][s - 1]
  h, w = x.size[1], x.size[0]
  x = x.resize((int(w * c), int(h * c)), Image.BOX)
  return np.asarray(x.resize((w, h), Image.BOX), np.float64)


if __name__ == "__main__":
  rng = np.random.default_rng(0)
  base = rng.integers(0, 256, (5, 5, 3)).astype(np.uint8)
  img = np.asarray(Image.fromarray(base).resize((40, 40), Image.BICUBIC))
  img = np.clip(img.astype(int) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
  img[5:12, 30:37] = [250, 250, 250]   # a saturated patch
  img[30:36, 3:9] = [0, 0, 0]          # and a black one
  out = {"image": img}
  for name, fn in [("defocus_blur", defocus_blur), ("brightness", brightness),
                   ("contrast", contrast), ("saturate", saturate),
                   ("gaussian_blur", gaussian_blur), ("pixelate", pixelate)]:
    arg = Image.fromarray(img) if name == "pixelate" else img
    out[name] = np.stack([fn(arg, s) for s in range(1, 6)]).astype(np.float32)
  out["versions"] = np.array([cv2.__version__, sk.__version__, Image.__version__])
  np.savez_compressed(os.path.join(ROOT, "tests", "fixtures", "corruptions.npz"), **out)
  print({k: v.shape for k, v in out.items()})
