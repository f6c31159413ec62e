"""UDA one-class AD on PACS: Photo -> Art painting, Cartoon, Sketch, one-vs-all.

Run:
  python -m experiments.uda --config configs/pacs.py
  python -m experiments.uda --config configs/pacs.py --config.data.root=/data/PACS \
      --config.uda.methods=source_only,all_target,cluster_f,cluster_psi,few_shot,oracle

For each normal class c (7) and target domain (3), seeds 0-2: Deep SVDD on c's photos
(f: EfficientNet-Lite0, its last stage + head trainable), aligned with the dominant cluster
(by default the trimmed set: all but the 20% of it farthest from the rest's mean;
`--config.uda.cluster=kmeans` for the paper's K-means, `gmm` for a 3-component GMM) of the unlabelled
target set (c's target images + 10% other classes), the
clustering done on psi = frozen EfficientNet-Lite2 features (separate from f), scored on
held-out target images. Alignment: MMD by default (measured best); the paper's contrastive
loss with `--config.uda.alignment=contrastive` (InfoNCE denominator, far negatives; as
written: `--config.uda.contrastive=negatives --config.uda.negatives=outside`), a
gradient-reversal discriminator with `adversarial`. docs/uda.md has the tables.
Writes <workdir>/results.{json,md}: methods x targets, mean ± std over classes and
seeds (the paper's Table 5 layout). Frozen features are cached per domain.
Expect on 2 CPU cores: ~2 min of feature caching per domain, then ~5 s per run.
"""
from configs import uda


def get_config():
  return uda.get_config("pacs")
