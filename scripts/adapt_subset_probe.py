"""Probe (issue 11, Session 31): RoDA adapted on a subset of the adaptation images.

Hypothesis: the mild-shift harm comes from the adaptation split's defective images
(about 3/4 of bottle's and tire's, half of ELPV's): their statistics and the pull of
their patches towards the bank. After the gate (on all images, as shipped) says
"shifted", RoDA runs on a subset; VARIANT (env):
  oracle  the normal adaptation images only (uses labels: not label-free)
  random  as many images as `oracle` keeps, drawn at random (seeded by the split's seed)
  low     as many images as `oracle` keeps, the lowest source-model image scores (PatchCore's
          score, the largest patch nearest-neighbour distance: a label-free ranking, but the
          count is the oracle's)
  lowhalf the lower-scoring half (label-free)
  adhalf  the lower-scoring half, scored by the model the steps start from: the source weights
          with the statistics `adapt.bn_mode` takes from all the adaptation images (label-free;
          Session 32; since then `experiments.tta.select_images`, the default
          `adapt.select=lowest`, which this variant calls)
  adhalf_allstats  adhalf's kept half for the steps, but the BatchNorm statistics taken from
          all the adaptation images (Session 34: is the -25 of ELPV mono brightness 3 under
          the selection the statistics of 10 images instead of 20?)
A probe behind docs/results.md "Which adaptation images" (2026-12-06), not a library
feature: it monkeypatches `experiments.tta.run` and `experiments.train.Context.run_one`
(single-category runs only; not `adapt.vmap_classes`). The rerun commands of the probe, e.g.
bottle at severity 1 (tire and ELPV: the data flags of scripts/gate_runs.sh):
  VARIANT=oracle python scripts/adapt_subset_probe.py --config configs/mvtec.py \
    --config.adapt.methods=roda --config.shift.corruptions=gaussian_noise,defocus_blur,brightness,contrast \
    --config.shift.severities=1 --config.shift.seeds=0,1,2 --workdir runs/s31/sev1/oracle/bottle \
    --config.bank_dir=runs/s31/banks/bottle
(the default and none: `python -m experiments.roda` with the same flags and
--config.adapt.methods=none,bn_stats,roda). Each record gets `probe`: variant, images kept,
normal images among them.
"""
import os

import jax.numpy as jnp
import numpy as np

from experiments import cli, loops, roda, train, tta
from rodajax import scoring

V = os.environ["VARIANT"]
cur = {}

_run_one = train.Context.run_one


def run_one(self, ds, variables, source, timing, shift, severity, seed, shifted, fraction,
            first_fraction, method, order=None, adapted=None):
  a, _ = train.target_split(len(ds.test), fraction, seed)
  cur.update(labels=np.asarray(ds.test.labels)[a], seed=seed)
  return _run_one(self, ds, variables, source, timing, shift, severity, seed, shifted, fraction,
                  first_fraction, method, order, adapted)


_run = tta.run


def run(method, fns, cfg, variables, source, images, key, progress=None, cache=None,
        reference=None):
  if method == "none":
    return _run(method, fns, cfg, variables, source, images, key, progress, cache, reference)
  gate = tta.gate_info(fns, cfg, variables, source, images, key, reference)
  if gate is not None and not gate["shifted"]:
    return _run(method, fns, cfg, variables, source, images, key, progress, cache, reference)
  labels = cur["labels"]
  assert len(labels) == len(images), (len(labels), len(images))
  normal = np.flatnonzero(labels == 0)
  n = max(len(normal), 1)
  if V == "oracle":
    keep = normal
  elif V == "random":
    keep = np.sort(np.random.default_rng(cur["seed"]).permutation(len(images))[:n])
  elif V in ("adhalf", "adhalf_allstats"):   # the library's selection (default since 2026-12-06)
    lowest = cfg.copy_and_resolve_references()
    lowest.select, lowest.select_share = "lowest", 0.5
    keep, _ = tta.select_images(fns, lowest, method, variables, source, images)
  elif V in ("low", "lowhalf"):
    z = loops.batched(fns.features, variables, images, min(cfg.stats_batch, len(images)))
    s = np.asarray(scoring.image_scores(scoring.patch_distances(jnp.asarray(z), source.bank)))
    if V == "lowhalf":
      n = max(1, len(images) // 2)
    keep = np.sort(np.argsort(s, kind="stable")[:n])
  else:
    raise ValueError(V)
  cfg2 = cfg.copy_and_resolve_references()
  cfg2.gate, cfg2.select = 0.0, "all"   # the probe selects; since 2026-12-06 adhalf is the default
  target_statistics = tta.target_statistics
  if V == "adhalf_allstats":   # statistics of every adaptation image, whatever `run` asks of
    tta.target_statistics = (lambda moments, variables_, _train, batch, axis=0:
                             target_statistics(moments, variables_, images, batch, axis))
  try:
    kept, last, info = _run(method, fns, cfg2, variables, source, images[keep], key, progress,
                            None, reference)
  finally:
    tta.target_statistics = target_statistics
  info["gate"] = gate
  info["probe"] = {"variant": V, "kept": int(len(keep)), "of": int(len(images)),
                   "normals_kept": int((labels[keep] == 0).sum()),
                   "normals": int(len(normal))}
  return kept, last, info


tta.run = run
train.Context.run_one = run_one

if __name__ == "__main__":
  cli.run(roda.main)
