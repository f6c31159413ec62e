"""PatchCore on any MVTec-layout folder (MVTec AD, MVTec 3D-AD RGB, Real-IAD exports).

Run:
  python -m experiments.roda --config configs/mvtec.py \
      --config.data.root=/path/to/mvtec_anomaly_detection --config.data.categories=bottle,cable

Expect: with EfficientNet-Lite0, 256 -> 224, a 10% coreset, MVTec AD bottle scores
about 100 clean image AUROC; a category of ~200 training images fits and evaluates in
well under a minute on 2 CPU cores. Results in <workdir>/results.{json,md}.
"""
from configs.base import get_base_config


def get_config():
  c = get_base_config()
  c.data.name = "mvtec"
  c.data.root = "../shared/data/mvtec_ad"
  c.data.categories = "bottle"
  c.data.max_train = 0
  return c
