"""Dataset loaders: layouts, splits, and errors that name the problem."""
import os

import numpy as np
import pytest
from PIL import Image

from helpers import write_mvtec
from rodajax import data
from rodajax.data import DataError


def test_mvtec_layout_loads_images_labels_masks(tmp_path):
  write_mvtec(tmp_path, n_train=4, n_good=2, n_bad=3, size=48)
  ds = data.load_mvtec(str(tmp_path), "widget", resize=32)
  assert ds.train.images.shape == (4, 32, 32, 3) and ds.train.images.dtype == np.uint8
  assert list(ds.test.labels) == [0, 0, 1, 1, 1]
  assert ds.test.types == ["good", "good", "spot", "spot", "spot"]
  assert ds.test.masks.shape == (5, 32, 32)
  assert not ds.test.masks[:2].any() and all(ds.test.masks[i].any() for i in (2, 3, 4))
  assert ds.test.has_mask.all()


def test_grey_and_rgba_images_become_rgb_and_masks_are_optional(tmp_path):
  d = write_mvtec(tmp_path, n_train=2, n_good=1, n_bad=2, size=32, masks=False)
  Image.fromarray(np.full((32, 32), 90, np.uint8)).save(os.path.join(d, "train/good", "grey.png"))
  Image.fromarray(np.full((32, 32, 4), 90, np.uint8)).save(os.path.join(d, "train/good", "rgba.png"))
  ds = data.load_mvtec(str(tmp_path), "widget", resize=32)
  assert ds.train.images.shape == (4, 32, 32, 3)
  assert ds.test.masks is None


def test_mvtec3d_rgb_layout(tmp_path):
  root = tmp_path / "tire"
  for sub in ("train/good/rgb", "test/good/rgb", "test/cut/rgb", "test/cut/gt"):
    os.makedirs(root / sub)
  img = np.zeros((40, 40, 3), np.uint8)
  Image.fromarray(img).save(root / "train/good/rgb/000.png")
  Image.fromarray(img).save(root / "test/good/rgb/000.png")
  Image.fromarray(img).save(root / "test/cut/rgb/000.png")
  m = np.zeros((40, 40), np.uint8)
  m[5:9, 5:9] = 255
  Image.fromarray(m).save(root / "test/cut/gt/000.png")
  ds = data.load_mvtec(str(tmp_path), "tire", resize=40, name="mvtec3d")
  assert list(ds.test.labels) == [0, 1] and ds.test.masks[1].sum() == 16


def test_missing_root_and_category_list_what_exists(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    data.load_mvtec(str(tmp_path / "nowhere"), "bottle")
  write_mvtec(tmp_path, size=32)
  with pytest.raises(DataError, match="category 'bottle' not found.*categories there: widget"):
    data.load_mvtec(str(tmp_path), "bottle")


def test_empty_train_unreadable_image_and_bad_mask(tmp_path):
  d = write_mvtec(tmp_path, size=32)
  for f in os.listdir(os.path.join(d, "train/good")):
    os.remove(os.path.join(d, "train/good", f))
  with pytest.raises(DataError, match="no training images"):
    data.load_mvtec(str(tmp_path), "widget")
  d = write_mvtec(tmp_path / "b", size=32)
  with open(os.path.join(d, "train/good", "broken.png"), "wb") as f:
    f.write(b"not a png")
  with pytest.raises(DataError, match="broken.png"):
    data.load_mvtec(str(tmp_path / "b"), "widget")
  d = write_mvtec(tmp_path / "c", size=32)
  Image.fromarray(np.zeros((16, 16), np.uint8)).save(os.path.join(d, "ground_truth/spot/000_mask.png"))
  with pytest.raises(DataError, match="000_mask.png.*must match"):
    data.load_mvtec(str(tmp_path / "c"), "widget")


def test_elpv_split_is_seeded_disjoint_and_labelled():
  a = data.load_elpv("mono", resize=32, seed=0, max_train=20, max_test_normal=10, max_test_anomalous=10)
  b = data.load_elpv("mono", resize=32, seed=0, max_train=20, max_test_normal=10, max_test_anomalous=10)
  c = data.load_elpv("mono", resize=32, seed=1, max_train=20, max_test_normal=10, max_test_anomalous=10)
  assert a.train.names == b.train.names and a.train.names != c.train.names
  assert not set(a.train.names) & set(a.test.names)
  assert list(a.test.labels) == [0] * 10 + [1] * 10
  paths, prob, types = data.elpv.elpv_index()
  p = dict(zip(paths, prob))
  t = dict(zip(paths, types))
  assert all(p[n] == 0 and t[n] == "mono" for n in a.train.names)
  assert all(p[n] >= 0.67 for n, lab in zip(a.test.names, a.test.labels) if lab)
  with pytest.raises(DataError, match="known: mono, poly"):
    data.load_elpv("thin-film")
