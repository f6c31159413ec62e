"""How well psi's dominant cluster and the contrastive negatives find normals / anomalies.

  python scripts/uda_clusters.py --config configs/uda.py:pacs --seeds 0,1,2 \
      [--config.cache_dir=runs/uda12/cache ...]

For every (target, normal class, seed) of the config's one-vs-all splits it draws the target
train set exactly as `experiments.uda` does (same split, same clustering key), then prints per
target, averaged over classes and seeds: the normal share of the whole target set (base) and of
the dominant cluster D (purity), D's share of the set, the cosine silhouette of the K-means
partition, and the anomalous share of four candidate negative sets of the same size
(`uda.negative_share` of the set): samples outside D at random (the expected share of "outside D",
as written), outside D farthest from D's mean (`cluster.far_from`, the default), farthest from
D's mean over all samples, and farthest from their nearest source neighbours (5-NN). Labels are
used for this report only. Uses the psi feature cache (computes it when absent).
"""
import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402
from sklearn.metrics import silhouette_score  # noqa: E402

from experiments import uda_train  # noqa: E402
from rodajax import cluster  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "a UDA config (configs/uda.py:pacs)")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "seeds (comma-separated)")


def _tail(score, pool, m):
  """Indices of the `m` highest `score` among `pool`."""
  return pool[np.argsort(-score[pool], kind="stable")[:m]]


def main(_):
  c = _CONFIG.value
  index = uda_train.load_index(c)
  uda_train.validate(c, index)
  cache = uda_train.FeatureCache(c, "runs/uda_clusters", index)
  nz = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)
  seeds = [int(s) for s in _SEEDS.value.split(",")]
  print(f"{c.data.source} -> targets; K = {c.uda.clusters} ({c.uda.cluster}) on psi = "
        f"{c.uda.psi}; negatives: {c.uda.negative_share:.0%} of the target set; seeds {seeds}\n")
  print("| target | n | base normal % | D share | D purity % | silhouette | anomalous % of negatives: "
        "outside D (random) | far from D, outside D (default) | far from D, all | far from source (5-NN) |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for t in uda_train._csv(c.data.targets):
    rows = []
    for cl in uda_train._all_classes(c, index):
      for seed in seeds:
        sp = uda_train.domains.one_vs_all(
            index, c.data.source, t, cl, seed, c.data.contamination, c.data.target_train_fraction,
            c.data.max_test_per_class or None, c.data.max_source or None, c.data.min_images)
        f = nz(cache.take(t, sp.target_train, "psi"))
        fs = nz(cache.take(c.data.source, sp.source_train, "psi"))
        lab = sp.target_train_labels
        _, k_dom, _ = jax.random.split(jax.random.key(seed), 3)   # as uda_train.prepare_one
        labels = np.asarray(cluster.kmeans_labels(cluster.l2_normalise(f), c.uda.clusters, k_dom))
        d = np.asarray(cluster.largest(labels, c.uda.clusters))
        if c.uda.cluster != "kmeans":
          d = cluster.dominant_cluster(f, c.uda.clusters, k_dom, c.uda.cluster)
        m = int(np.ceil(c.uda.negative_share * len(lab)))
        outside, every = np.flatnonzero(~d), np.arange(len(lab))
        far_d = np.linalg.norm(f - nz(f[d].mean(0, keepdims=True)), axis=1)
        knn_src = -np.sort(f @ fs.T, axis=1)[:, -5:].mean(1)
        sil = (silhouette_score(f, labels, metric="cosine") if len(set(labels.tolist())) > 1
               else 0.0)
        rows.append([100 * np.mean(lab == 0), d.mean(), 100 * np.mean(lab[d] == 0), sil,
                     100 * np.mean(lab[outside] != 0),
                     100 * np.mean(lab[cluster.far_from(f, d, m)] != 0),
                     100 * np.mean(lab[_tail(far_d, every, m)] != 0),
                     100 * np.mean(lab[_tail(knn_src, every, m)] != 0)])
    r = np.mean(rows, 0)
    print(f"| {t} | {len(rows)} | {r[0]:.1f} | {r[1]:.2f} | {r[2]:.1f} | {r[3]:.3f} | {r[4]:.1f} | "
          f"{r[5]:.1f} | {r[6]:.1f} | {r[7]:.1f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
