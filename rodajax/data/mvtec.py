"""MVTec AD and MVTec 3D-AD (RGB part) folder layouts, and the generic result type.

MVTec AD:     <root>/<category>/train/good/*.png
              <root>/<category>/test/<type>/*.png
              <root>/<category>/ground_truth/<type>/<stem>_mask.png   (optional)
MVTec 3D-AD:  <root>/<category>/{train,validation,test}/<type>/rgb/*.png
              <root>/<category>/test/<type>/gt/*.png                 (optional)
Real-IAD and other datasets exported in the MVTec AD layout load the same way.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from rodajax.data.images import DataError, image_size_of, list_images, load_many, load_mask


@dataclasses.dataclass
class ImageSet:
  """Images of one split, resized, uint8.

  Attributes:
    images: uint8 `[N, R, R, 3]`.
    labels: int32 `[N]`, 1 = anomalous.
    masks: bool `[N, R, R]` or None when no image of the split has a mask
      (images without a mask get all-False, i.e. normal, pixels).
    has_mask: bool `[N]`, whether the image had a ground-truth file (normal
      images count as having an all-normal mask).
    types: defect type per image ("good" for normals).
    names: source file of each image.
  """
  images: np.ndarray
  labels: np.ndarray
  masks: np.ndarray | None
  has_mask: np.ndarray
  types: list[str]
  names: list[str]

  def __len__(self):
    return len(self.labels)

  def subset(self, idx) -> "ImageSet":
    idx = np.asarray(idx, np.int64)
    return ImageSet(self.images[idx], self.labels[idx],
                    None if self.masks is None else self.masks[idx], self.has_mask[idx],
                    [self.types[i] for i in idx], [self.names[i] for i in idx])


@dataclasses.dataclass
class Dataset:
  name: str
  category: str
  train: ImageSet
  test: ImageSet


def _layout(cat_dir: str) -> str:
  if os.path.isdir(os.path.join(cat_dir, "train", "good", "rgb")):
    return "mvtec3d"
  return "mvtec"


def _image_dir(cat_dir, split, dtype, layout):
  d = os.path.join(cat_dir, split, dtype)
  return os.path.join(d, "rgb") if layout == "mvtec3d" else d


def _mask_path(cat_dir, dtype, image_path, layout):
  stem = os.path.splitext(os.path.basename(image_path))[0]
  if layout == "mvtec3d":
    cand = [os.path.join(cat_dir, "test", dtype, "gt", os.path.basename(image_path)),
            os.path.join(cat_dir, "test", dtype, "gt", stem + ".png")]
  else:
    cand = [os.path.join(cat_dir, "ground_truth", dtype, stem + "_mask.png"),
            os.path.join(cat_dir, "ground_truth", dtype, stem + ".png")]
  return next((c for c in cand if os.path.isfile(c)), None)


def categories(root: str) -> list[str]:
  """Categories under an MVTec-layout root (folders that have train/good)."""
  if not os.path.isdir(root):
    return []
  return sorted(c for c in os.listdir(root)
                if os.path.isdir(os.path.join(root, c, "train", "good")))


def load_mvtec(root: str, category: str, resize: int = 256, name: str = "mvtec",
               max_train: int | None = None, test: bool = True) -> Dataset:
  """Loads one category of an MVTec AD / MVTec 3D-AD (RGB) folder (`test=False`: train only).

  Raises:
    DataError: missing root or category (lists those that exist), empty train
      folder, unreadable image (names it), mask whose size differs from its image.
  """
  if not os.path.isdir(root):
    raise DataError(f"data root {root!r} does not exist; set --config.data.root to the folder "
                    "that holds the category folders (e.g. .../mvtec_anomaly_detection)")
  cat_dir = os.path.join(root, category)
  if not os.path.isdir(os.path.join(cat_dir, "train", "good")):
    have = categories(root)
    raise DataError(f"category {category!r} not found under {root!r} (no {category}/train/good); "
                    f"categories there: {', '.join(have) if have else 'none'}")
  layout = _layout(cat_dir)
  train_paths = list_images(_image_dir(cat_dir, "train", "good", layout))
  if not train_paths:
    raise DataError(f"no training images in {_image_dir(cat_dir, 'train', 'good', layout)!r}; "
                    f"expected .png/.jpg/.bmp files of normal samples")
  if max_train:
    train_paths = train_paths[:max_train]
  train = ImageSet(load_many(train_paths, resize), np.zeros(len(train_paths), np.int32), None,
                   np.ones(len(train_paths), bool), ["good"] * len(train_paths), train_paths)
  if not test:
    empty = ImageSet(np.zeros((0, resize, resize, 3), np.uint8), np.zeros(0, np.int32), None,
                     np.zeros(0, bool), [], [])
    return Dataset(name, category, train, empty)
  test_dir = os.path.join(cat_dir, "test")
  types = sorted(t for t in os.listdir(test_dir) if os.path.isdir(os.path.join(test_dir, t))) \
      if os.path.isdir(test_dir) else []
  types = sorted(types, key=lambda t: (t != "good", t))
  paths, labels, tys, mask_paths = [], [], [], []
  for t in types:
    for p in list_images(_image_dir(cat_dir, "test", t, layout)):
      paths.append(p)
      labels.append(int(t != "good"))
      tys.append(t)
      mask_paths.append(None if t == "good" else _mask_path(cat_dir, t, p, layout))
  if not paths:
    raise DataError(f"no test images under {test_dir!r}; expected test/<type>/ folders")
  images = load_many(paths, resize)
  any_mask = any(m is not None for m in mask_paths)
  masks = np.zeros((len(paths), resize, resize), bool) if any_mask else None
  has_mask = np.array([(lab == 0) or (m is not None) for lab, m in zip(labels, mask_paths)])
  if any_mask:
    for i, (p, m) in enumerate(zip(paths, mask_paths)):
      if m is not None:
        masks[i] = load_mask(m, resize, image_size=image_size_of(p))
  test = ImageSet(images, np.asarray(labels, np.int32), masks, has_mask, tys, paths)
  return Dataset(name, category, train, test)


def parse_categories(value) -> list[str]:
  """'bottle,tire' or ['bottle', 'tire'] -> ['bottle', 'tire']."""
  if isinstance(value, str):
    return [c.strip() for c in value.split(",") if c.strip()]
  return [str(c) for c in value]
