"""UDA one-class AD on PACS: Photo -> Art painting, Cartoon, Sketch, one-vs-all.

Run:
  python -m experiments.uda --config configs/pacs.py
  python -m experiments.uda --config configs/pacs.py --config.data.root=/data/PACS \
      --config.uda.methods=source_only,all_target,cluster_f,cluster_psi,few_shot,oracle

For each normal class c (7) and target domain (3), seeds 0-2: Deep SVDD on c's photos,
aligned (MMD by default; `--config.uda.alignment=contrastive` for Eqs. 8-9 as written,
`adversarial` for a gradient-reversal discriminator) with the dominant K-means cluster
(K=3, on frozen EfficientNet-Lite0 features) of the unlabelled target set (c's target
images + 10% other classes), scored on held-out target images.
Writes <workdir>/results.{json,md}: methods x targets, mean ± std over classes and
seeds (the paper's Table 5 layout). Frozen features are cached per domain.
Expect on 2 CPU cores: ~2 min of feature caching, then tens of seconds per run.
"""
from configs import uda


def get_config():
  return uda.get_config("pacs")
