"""PatchCore and RoDA on any MVTec-layout folder (MVTec AD, MVTec 3D-AD RGB, Real-IAD exports).

Run:
  python -m experiments.roda --config configs/mvtec.py \
      --config.data.root=/path/to/mvtec_anomaly_detection --config.data.categories=bottle,cable
  # clean PatchCore only:
  python -m experiments.roda --config configs/mvtec.py --config.shift.corruptions=clean \
      --config.adapt.methods=none

Per category: the memory bank is fitted on train/good; the test set is split (seeded)
into a 20% adaptation part and an 80% evaluation part; for clean and each of the
paper's four ImageNet-C shifts at severity 5, PatchCore without adaptation (`none`)
and after RoDA are evaluated on the same 80%.

Expect (EfficientNet-Lite0, 256 -> 224, 10% coreset, 2 CPU cores): bottle ~100 clean
image AUROC; the shifts cost up to ~40 points without adaptation (gaussian noise,
contrast). RoDA (shift gate; routed BatchNorm statistics; one pass on the lower-scoring
half of the adaptation images) leaves clean images at ~100 (the gate keeps the source
model), recovers contrast (~81 -> ~97) and part of gaussian noise (~58 -> ~72), and moves
brightness and defocus blur by about a point; docs/results.md has the tables over six
seeds (--config.shift.seeds=0,1,2,3,4,5). A category takes about 3 minutes per seed.
Results in <workdir>/results.{json,md}; figures/ holds, per category, the clean ROC
curve and anomaly maps, and per shift (first seed) every method's maps on the same test
images and their ROC curves (`*_methods.png`, `*_methods_roc.png`).
"""
from configs.base import get_base_config


def get_config():
  c = get_base_config()
  c.data.name = "mvtec"
  c.data.root = "../shared/data/mvtec_ad"
  c.data.categories = ("bottle",)
  c.data.max_train = 0
  c.shift.corruptions = ("clean", "gaussian_noise", "defocus_blur", "brightness", "contrast")
  c.shift.severities = (5,)
  c.shift.adapt_fraction = 0.2
  c.adapt.methods = ("none", "roda")
  return c
