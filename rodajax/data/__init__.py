"""Datasets: MVTec AD / MVTec 3D-AD (RGB) folder layouts, ELPV (embedded), splits."""
from rodajax.data.elpv import CELL_TYPES, load_elpv
from rodajax.data.images import (DataError, centre_crop, expand, list_images, load_many, load_rgb,
                                 read_many, read_rgb, tally_notes)
from rodajax.data.mvtec import (Dataset, ImageSet, categories, load_mvtec,
                                parse_categories)


def load(config_data, category: str, seed: int = 0, test: bool = True) -> Dataset:
  """Loads `category` of the dataset that `config.data` names ('elpv' or 'mvtec').

  `test=False`: the training images only (MVTec layouts; a folder may then lack test/).
  """
  name = config_data.name
  if name == "elpv":
    return load_elpv(category, resize=config_data.resize, seed=seed,
                     train_fraction=config_data.train_fraction,
                     max_train=config_data.max_train or None,
                     max_test_normal=config_data.max_test_normal or None,
                     max_test_anomalous=config_data.max_test_anomalous or None,
                     anomaly_threshold=config_data.anomaly_threshold)
  if name in ("mvtec", "mvtec3d", "realiad"):
    return load_mvtec(config_data.root, category, resize=config_data.resize, name=name,
                      max_train=config_data.max_train or None, test=test)
  raise DataError(f"unknown dataset {name!r}; known: elpv, mvtec, mvtec3d, realiad")
