"""Probe (issue 11): which BatchNorm statistics to take from the target images.

Target statistics (AdaBN) are what recovers brightness and contrast, and what
costs ELPV poly 3.6 points under gaussian noise (docs/results.md). This runs
`experiments.roda` with `adapt.bn_mode=prior`, the prior mix replaced by a
selection of which running statistics come from the target images:

  all    every mean and variance (= bn_mode target_stats)
  mean   target means, source variances (= bn_mode target_mean)
  var    source means, target variances
  early  the stem and blocks 0-2 (stages 1-2 of EfficientNet-Lite) only
  late   blocks 3 on only (from stage 3, the first tapped stage)
  minvar target means, and per channel the smaller of the source and target
         variances (undo a loss of scale, e.g. contrast; do not divide added
         variance, e.g. sensor noise, into the signal)
  stemvar target statistics everywhere except the stem's variances (source):
         additive sensor noise inflates the stem's variance most (the stem
         log-variance ratio, scripts/bn_variance_ratio.py)
  geovar target means, and per channel the geometric mean sqrt(var_s var_t) of
         the two variances, in every layer (= bn_mode geometric)

Not a mode of the library: a measurement. Use one workdir per variant (record
identities do not include it).

  python scripts/bn_layer_probe.py VARIANT [experiments.roda flags ...]
"""
import re
import sys

import jax

from experiments import cli, roda
from rodajax import adapt

EARLY_BLOCKS = 3   # blocks 0-2 are stages 1-2 of EfficientNet-Lite0..2
STEM = "['_bn0']"   # the stem's BatchNorm (EfficientNet-Lite)


def _is_early(path) -> bool:
  key = jax.tree_util.keystr(path)
  m = re.search(r"_blocks_(\d+)", key)
  if m:
    return int(m.group(1)) < EARLY_BLOCKS
  return key.startswith(STEM)


# variants the library has (bn_mode)
LIBRARY_MODES = {"all": "target_stats", "mean": "target_mean", "geovar": "geometric"}


def select(variant: str):
  def pick(path, s, t):
    key = jax.tree_util.keystr(path)
    if variant == "var":
      return t if key.endswith("['var']") else s
    if variant == "early":
      return t if _is_early(path) else s
    if variant == "late":
      return s if _is_early(path) else t
    if variant == "stemvar":
      stem_var = key.startswith(STEM) and key.endswith("['var']")
      return s if stem_var else t
    if variant == "minvar":
      return t if key.endswith("['mean']") else jax.numpy.minimum(s, t)
    raise SystemExit(f"unknown variant {variant!r}: all | mean | var | early | late | minvar | "
                     "stemvar | geovar")

  def mix(source_stats, target_stats, n_target, prior):
    if variant in LIBRARY_MODES:
      return adapt.bn_statistics(LIBRARY_MODES[variant], source_stats, target_stats, n_target,
                                 prior)
    return jax.tree_util.tree_map_with_path(pick, source_stats, target_stats)
  return mix


if __name__ == "__main__":
  variant, rest = sys.argv[1], sys.argv[2:]
  adapt.mix_batch_stats = select(variant)
  cli.run(roda.main, rest + ["--config.adapt.bn_mode=prior"])
