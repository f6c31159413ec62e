"""Shared defaults for the anomaly-detection configs (not an experiment by itself)."""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 16            # images per forward pass
  c.figures = True             # ROC curve + anomaly-map overlays per category (clean, none) and,
                               # per shift of the first seed, every method's maps and ROC curves
  c.bank_dir = ""              # where fitted memory banks are kept ("" = <workdir>/banks)

  c.data = ml_collections.ConfigDict()
  c.data.name = "elpv"         # elpv | mvtec | mvtec3d | realiad (MVTec layouts)
  c.data.root = ""             # folder holding the category folders (MVTec layouts)
  c.data.categories = ("mono", "poly")
  c.data.resize = 256          # images are resized to this (bicubic), corrupted here,
  c.data.crop = 224            # then centre-cropped and ImageNet-normalised
  c.data.max_train = 200       # 0 = all training images
  c.data.train_fraction = 0.5  # ELPV: share of normal cells used for training
  c.data.max_test_normal = 100
  c.data.max_test_anomalous = 100
  c.data.anomaly_threshold = 0.67
  c.data.tfds_dir = ""             # prepare images once into ArrayRecord (tensorflow-datasets)
                                   # here and read them from there ("" = decode every run)

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "efficientnet_lite0"
  c.model.weights = "pretrained"   # "pretrained", a checkpoint path, or "" for random init
  c.model.taps = ()                # () = the backbone's default mid-level taps
  c.model.pool = 3                 # local neighbourhood p of PatchCore's aggregation
  c.model.out_dim = 0              # 0 = keep all channels
  c.model.bn_stats = "weights"     # BatchNorm running statistics of the source model: the weights' own, or "train" (re-estimated on the normal training images before the bank is built)

  c.coreset = ml_collections.ConfigDict()
  c.coreset.ratio = 0.1
  c.coreset.size = 0               # > 0 overrides ratio
  c.coreset.proj_dim = 128

  c.scoring = ml_collections.ConfigDict()
  c.scoring.sigma = 4.0
  c.scoring.chunk = 2048
  c.scoring.reweight = 0           # > 0: PatchCore Eq. 7 with this many neighbours
  c.scoring.shard_bank = False     # place the memory bank row-wise over all devices
                                   # (NamedSharding over a "bank" mesh axis; 2D only)

  c.fit = ml_collections.ConfigDict()   # python -m experiments.fit (a saved model)
  c.fit.calibration_fraction = 0.2  # share of the training normals held out (seeded) to calibrate
                                    # the threshold against a bank fitted without them
  c.fit.threshold = "quantile"     # quantile (split-conformal, held-out normals) | f1 (labelled
                                   # images in fit.validation)
  c.fit.quantile = 0.99            # a new normal image exceeds the threshold with prob. <= 1 - q
  c.fit.validation = ""            # folder of labelled images for threshold=f1: good/ = normal,
                                   # any other subfolder = anomalous

  c.shift = ml_collections.ConfigDict()
  c.shift.corruptions = ("clean",)  # clean and/or corruption names (CLI: comma-separated)
  c.shift.severities = (5,)        # 1-5
  c.shift.adapt_fraction = 0.0     # share of the (shifted) test set used for adaptation;
                                   # 1.0 = adapt and evaluate on the same images
  c.shift.adapt_fractions = ()     # e.g. (0.2, 0.8, 1.0): overrides adapt_fraction
  c.shift.seeds = ()               # each seed redraws the adaptation/evaluation
                                   # split and the corruption noise (() = (seed,))

  c.adapt = ml_collections.ConfigDict()
  c.adapt.methods = ("none",)      # see rodajax/adapt.py for the list
  c.adapt.vmap_classes = False     # adapt every category in one vmapped pass per (seed, shift,
                                   # fraction, method): tta.run_classes; same numbers as the
                                   # loop to float rounding, one compilation for all categories
  c.adapt.class_batch = "auto"     # classes per vmapped group: 0 = all at once (accelerators),
                                   # k = groups of k in sequence (lax.map); auto: 1 on CPU
  c.adapt.bn_mode = "routed"       # BN statistics while adapting and testing: source |
                                   # target_stats (re-estimated on the adaptation images) |
                                   # target_mean (their means, the source variances) |
                                   # geometric (their means, sqrt(source x target variance)) |
                                   # routed (geometric where the stem's variance flags noise,
                                   # target_stats elsewhere; noise_ratio) |
                                   # prior (mixed with an N-sample source prior, N = bn_prior);
                                   # docs/results.md "Shipped since 2026-12-05" for the choice
  c.adapt.bn_prior = 16            # N of the prior mode (Schneider et al. 2020), in images
  c.adapt.noise_ratio = 1.2        # routed: geometric where the stem BatchNorm's mean log
                                   # variance ratio (adaptation images / source) exceeds this
                                   # (dev sets: 1.62-2.35 under gaussian noise, <= 0.75 otherwise)
  c.adapt.stats_batch = 64         # images per forward when estimating target BN statistics
                                   # (exact when all adaptation images fit in one)
  c.adapt.epochs = 1               # passes over the adaptation images (Alg. 1: one)
  c.adapt.batch_images = 8         # target images per step
  c.adapt.views = 4                # views per image (roda: rotations/flips; discrete_copy: copies)
  c.adapt.target_patches = 4096    # target patches per OT problem (0 = all patches of all views)
  c.adapt.bank_patches = 4096      # bank entries per OT problem (0 = the whole bank); equal to
                                   # target_patches keeps the problem balanced
  c.adapt.lr = 3e-3                # Adam on BN scale/bias (tuned on ELPV with target statistics,
                                   # confirmed on bottle and tire; docs/results.md "Learning rate")
  c.adapt.optimizer = "adam"       # adam | sgd
  c.adapt.epsilon = 0.02           # entropic regularisation, relative to the mean cost
                                   # (python -m experiments.epsilon: balance and ties per value)
  c.adapt.sinkhorn_threshold = 1e-3
  c.adapt.sinkhorn_max_iterations = 200
  c.adapt.online_above = 64 * 2 ** 20  # OT problems with more cost entries use online costs
  c.adapt.chunk = 2048             # rows per chunk (online costs, argmaxes)
  c.adapt.kl_reg = 1e-3
  c.adapt.hungarian_patches = 512
  c.adapt.trim = 0.0               # discrete methods: share of each problem's target patches,
                                   # the farthest from the bank, left out of the loss (0 = Eq. 6)
  c.adapt.gate = 1.25              # shift gate: adapt only when the source model's gate
                                   # statistic on the adaptation images is >= gate x that of
                                   # held-out training normals (fit.calibration_fraction);
                                   # 0 = always adapt; docs/results.md "The shift gate"
  c.adapt.gate_statistic = "nn_median"  # nn_median (median patch NN distance) | transport
  c.adapt.select = "lowest"        # adaptation images to adapt on (after the gate): all |
                                   # lowest (the select_share lowest-scoring under the statistics
                                   # taken from all of them; label-free; docs/results.md
                                   # "Shipped since 2026-12-06")
  c.adapt.select_share = 0.5       # lowest: share of the adaptation images kept
  c.adapt.safeguard = False        # hold out adaptation images, keep the adapted model only
                                   # if a label-free criterion improves on them (off: the
                                   # transport cost rises after target statistics whatever the
                                   # AUROC does; docs/results.md)
  c.adapt.holdout_fraction = 0.25  # share of the adaptation images held out for it
  c.adapt.safeguard_criterion = "transport"  # transport (Eq. 6 cost) | nn (mean NN distance)
                                   # | synthetic (1 - AUROC of synthetic defects) | synthetic_gain
  c.adapt.safeguard_veto = "synthetic_gain"  # a second criterion that must not get worse ("" = none);
                                   # docs/results.md "A veto for the safeguard"
  c.adapt.synthetic_copies = 4     # synthetic-defect copies per held-out image (0 = off)
  c.adapt.safeguard_candidates = "last"  # last: the end of the pass vs the source | steps: every
                                   # step's parameters, the lowest criterion kept
  c.adapt.safeguard_margin = 0.01  # relative improvement needed to leave the source model
  return c
