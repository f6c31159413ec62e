"""Shared defaults of the UDA one-class configs (not an experiment by itself)."""
import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                     # first seed; runs use seed .. seed + seeds - 1
  c.seeds = 3
  c.batch_size = 32              # images per forward pass when caching frozen features
  c.cache_dir = ""               # frozen trunk / psi features per domain ("" = <workdir>/cache);
                                 # point several studies at one folder to compute them once

  c.data = ml_collections.ConfigDict()
  c.data.name = "domains"        # domains (<root>/<domain>/<class>/<images>) | elpv
  c.data.dataset_name = "pacs"   # the `dataset` field of the records
  c.data.root = ""
  c.data.source = "photo"
  c.data.targets = ("art_painting", "cartoon", "sketch")
  c.data.classes = ()            # () = every class of the source domain
  c.data.resize = 224            # images resized (bicubic) to this square, no crop
  c.data.contamination = 0.1     # anomalous share of the unlabelled target train set, [0, 1)
  c.data.target_train_fraction = 0.5
  c.data.max_test_per_class = 30  # anomalous test images drawn per other class (0 = all)
  c.data.max_source = 0          # 0 = every source image of the normal class
  c.data.min_images = 8
  c.data.anomaly_threshold = 0.67  # ELPV only
  c.data.tfds_dir = ""           # domain folders: images prepared once into ArrayRecord here
                                 # (tensorflow-datasets) for the feature cache ("" = decode)

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "efficientnet_lite0"  # f; or resnet18 / resnet50 / wide_resnet50_2 with
                                 # the user's torchvision weights
  c.model.tail_stage = 7         # stages before it are frozen and cached; from it on, f trains
                                 # (EfficientNet-Lite: stage 1..7; ResNet: layer 1..4)
  c.model.out_dim = 128          # projection head (bias-free)

  c.uda = ml_collections.ConfigDict()
  c.uda.methods = ("source_only", "cluster_psi")
  c.uda.alignment = "mmd"        # mmd | contrastive (Eqs. 8-9) | adversarial; MMD is the default
                                 # because it measured best (docs/uda.md)
  c.uda.psi = "efficientnet_lite2"  # frozen encoder of the clustering (a backbone name other than
                                 # f's, "file:<npz>" with precomputed features, or "f")
  c.uda.cluster = "trimmed"      # trimmed (all but the far tail: trimmed K-means, K = 1) | gmm |
                                 # kmeans (OTT; the paper's main method) | meanshift (scikit-learn).
                                 # trimmed: best mean over PACS x 3 and ELPV x 2 and over the
                                 # 5-30 % contamination sweep (GMM is better at 20-30 % alone;
                                 # MeanShift returns the whole set there); docs/uda.md, Table 7
  c.uda.clusters = 3             # K (K-means, GMM components); K 2..8 changed little (Fig. 4)
  c.uda.trim_share = 0.2         # cluster=trimmed: share of the target set left out of D (the
                                 # samples farthest from D's own mean; trimmed K-means, K = 1)
  c.uda.few_shot_k = 10
  c.uda.trainable = "bn_head"    # bn_head (BN affine of the tail + head) | all (whole tail)
  c.uda.lambda_ad = 1.0
  c.uda.lambda_uda = 1.0
  c.uda.tau = 0.1
  c.uda.lr = 1e-3
  c.uda.steps = 60
  c.uda.batch = 32
  c.uda.grl_scale = 1.0
  c.uda.contrastive = "infonce"  # denominator of Eqs. 8-9: infonce (positive included) |
                                 # negatives (as written; saturates, docs/uda.md)
  c.uda.negatives = "far"        # contrastive negatives: far (the negative_share of the target set
                                 # outside D farthest from D's mean; clustering methods only) |
                                 # outside (every target sample not in D, as written)
  c.uda.negative_share = 0.1
  c.uda.space = "euclidean"      # Deep SVDD on f(x) | on f(x)/||f(x)|| (sphere; matches the cosine)
  c.uda.bn_bias = "frozen"       # BatchNorm beta frozen (Deep SVDD no-bias rule) | trained
  c.uda.vmap_runs = False        # train every (class, seed) of a (target, method) together: one
                                 # mapped step per iteration (same numbers as run by run)
  c.uda.class_batch = "auto"     # runs per vmapped group: 0 = all (accelerators), auto = 1 on CPU
  return c
