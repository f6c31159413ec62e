"""Shared defaults for the anomaly-detection configs (not an experiment by itself)."""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 16            # images per forward pass
  c.figures = True             # ROC curve + anomaly-map overlays per category (clean, none)

  c.data = ml_collections.ConfigDict()
  c.data.name = "elpv"         # elpv | mvtec | mvtec3d | realiad (MVTec layouts)
  c.data.root = ""             # folder holding the category folders (MVTec layouts)
  c.data.categories = "mono,poly"
  c.data.resize = 256          # images are resized to this (bicubic), corrupted here,
  c.data.crop = 224            # then centre-cropped and ImageNet-normalised
  c.data.max_train = 200       # 0 = all training images
  c.data.train_fraction = 0.5  # ELPV: share of normal cells used for training
  c.data.max_test_normal = 100
  c.data.max_test_anomalous = 100
  c.data.anomaly_threshold = 0.67

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "efficientnet_lite0"
  c.model.weights = "pretrained"   # "pretrained", a checkpoint path, or "" for random init
  c.model.taps = ""                # "" = the backbone's default mid-level taps
  c.model.pool = 3                 # local neighbourhood p of PatchCore's aggregation
  c.model.out_dim = 0              # 0 = keep all channels

  c.coreset = ml_collections.ConfigDict()
  c.coreset.ratio = 0.1
  c.coreset.size = 0               # > 0 overrides ratio
  c.coreset.proj_dim = 128

  c.scoring = ml_collections.ConfigDict()
  c.scoring.sigma = 4.0
  c.scoring.chunk = 2048
  c.scoring.reweight = 0           # > 0: PatchCore Eq. 7 with this many neighbours

  c.shift = ml_collections.ConfigDict()
  c.shift.corruptions = "clean"    # comma-separated: clean and/or corruption names
  c.shift.severities = "5"         # comma-separated, 1-5
  c.shift.adapt_fraction = 0.0     # share of the (shifted) test set used for adaptation;
                                   # 1.0 = adapt and evaluate on the same images
  c.shift.adapt_fractions = ""     # comma-separated, e.g. "0.2,0.8,1.0": overrides adapt_fraction

  c.adapt = ml_collections.ConfigDict()
  c.adapt.methods = "none"         # comma-separated; see rodajax/adapt.py for the list
  c.adapt.bn_mode = "target_stats"  # BN statistics while adapting and testing: source |
                                   # target_stats (re-estimated on the adaptation part) | target
  c.adapt.steps = 20               # optimiser steps
  c.adapt.batch_images = 8         # target images per step
  c.adapt.views = 4                # views per image (roda: rotations/flips; discrete_copy: copies)
  c.adapt.patches = 512            # target patches drawn per step for the OT problem
  c.adapt.lr = 1e-3
  c.adapt.optimizer = "adam"
  c.adapt.epsilon = 0.1            # entropic regularisation, relative to the mean cost
  c.adapt.sinkhorn_threshold = 1e-3
  c.adapt.sinkhorn_max_iterations = 100
  c.adapt.kl_reg = 1e-3
  c.adapt.hungarian_patches = 512
  return c
