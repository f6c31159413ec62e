"""Datasets: MVTec AD / MVTec 3D-AD (RGB) folder layouts, ELPV (embedded), point clouds."""
from rodajax.data import pointclouds
from rodajax.data.elpv import CELL_TYPES, load_elpv
from rodajax.data.images import (DataError, centre_crop, clipped_share, expand, list_images,
                                 load_many, load_rgb, read_many, read_rgb, tally_notes)
from rodajax.data.mvtec import (Dataset, ImageSet, categories, load_mvtec,
                                parse_categories)


def load(config_data, category: str, seed: int = 0, test: bool = True) -> Dataset:
  """Loads `category` of the dataset that `config.data` names ('elpv' or 'mvtec').

  `test=False`: the training images only (MVTec layouts; a folder may then lack test/).
  With `config.data.tfds_dir` set, image datasets are prepared once into
  ArrayRecord with tensorflow-datasets and read from there (`data.prepared`).
  """
  name = config_data.name
  tfds_dir = config_data.get("tfds_dir", "")
  if tfds_dir and name not in POINT_DATASETS:
    from rodajax.data import prepared
    direct = config_data.copy_and_resolve_references()
    direct.tfds_dir = ""
    return prepared.load_prepared(config_data, category, seed, tfds_dir,
                                  lambda: load(direct, category, seed, test), test)[0]
  if name == "elpv":
    return load_elpv(category, resize=config_data.resize, seed=seed,
                     train_fraction=config_data.train_fraction,
                     max_train=config_data.max_train or None,
                     max_test_normal=config_data.max_test_normal or None,
                     max_test_anomalous=config_data.max_test_anomalous or None,
                     anomaly_threshold=config_data.anomaly_threshold)
  if name == "real3d":
    return pointclouds.load_real3d(config_data.root, category, config_data.points,
                                   config_data.max_train or None)
  if name == "mvtec3d_points":
    return pointclouds.load_mvtec3d_points(config_data.root, category, config_data.points,
                                           config_data.max_train or None,
                                           config_data.plane_distance)
  if name in ("mvtec", "mvtec3d", "realiad"):
    return load_mvtec(config_data.root, category, resize=config_data.resize, name=name,
                      max_train=config_data.max_train or None, test=test)
  raise DataError(f"unknown dataset {name!r}; known: elpv, mvtec, mvtec3d, realiad (images), "
                  f"{', '.join(POINT_DATASETS)} (point clouds)")


POINT_DATASETS = ("real3d", "mvtec3d_points")


def is_points(config_data) -> bool:
  """Whether `config.data` names a point-cloud dataset."""
  return config_data.name in POINT_DATASETS


def categories_of(config_data) -> list[str]:
  """`config.data.categories`, or every class folder under `config.data.root` (point clouds)."""
  named = parse_categories(config_data.categories)
  if named or not is_points(config_data):
    return named
  return pointclouds.categories(config_data.root, config_data.name)
