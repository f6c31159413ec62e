"""Image and mask loading, resizing and cropping (numpy, uint8).

The pipeline keeps images as uint8 `[N, R, R, 3]` after resizing to R (default
256): corruptions act there, in [0, 255], before the centre crop and the
ImageNet normalisation, as in ImageNet-C and the reference PatchCore.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
  """A dataset that is missing, empty or malformed; the message says how to fix it."""


def list_images(folder: str) -> list[str]:
  """Sorted image files directly inside `folder`."""
  if not os.path.isdir(folder):
    return []
  return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def load_rgb(path: str, size: int | None) -> np.ndarray:
  """One image as uint8 RGB `[size, size, 3]` (bicubic resize; grey/RGBA -> RGB)."""
  try:
    with Image.open(path) as im:
      im = im.convert("RGB")
      if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
      return np.asarray(im, np.uint8)
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise DataError(f"cannot read image {path!r} ({e}); remove or replace the file") from e


def load_mask(path: str, size: int | None, image_size: tuple[int, int] | None = None) -> np.ndarray:
  """A ground-truth mask as bool `[size, size]` (nearest-neighbour resize)."""
  try:
    with Image.open(path) as im:
      if image_size is not None and im.size != image_size:
        raise DataError(f"mask {path!r} is {im.size[0]}x{im.size[1]} but its image is "
                        f"{image_size[0]}x{image_size[1]}; masks must match their images")
      im = im.convert("L")
      if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.NEAREST)
      return np.asarray(im) > 127
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise DataError(f"cannot read mask {path!r} ({e})") from e


def image_size_of(path: str) -> tuple[int, int]:
  try:
    with Image.open(path) as im:
      return im.size
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise DataError(f"cannot read image {path!r} ({e}); remove or replace the file") from e


def load_many(paths: Sequence[str], size: int, workers: int = 4) -> np.ndarray:
  """Images as uint8 `[N, size, size, 3]`, read in a thread pool."""
  if not paths:
    return np.zeros((0, size, size, 3), np.uint8)
  with ThreadPoolExecutor(workers) as ex:
    return np.stack(list(ex.map(lambda p: load_rgb(p, size), paths)))


def centre_crop(x: np.ndarray, crop: int) -> np.ndarray:
  """Centre crop of the two spatial axes after the batch axis: `[N, R, R, ...]`."""
  h, w = x.shape[1:3]
  if crop > min(h, w):
    raise DataError(f"crop {crop} is larger than the resized image {h}x{w}; "
                    "set data.crop <= data.resize")
  t, l = (h - crop) // 2, (w - crop) // 2
  return x[:, t:t + crop, l:l + crop]
