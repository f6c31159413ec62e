"""RoDA end to end on a small synthetic shift; determinism; bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from helpers import plant_defect, texture
from rodajax import adapt, backbones, corruptions, features, metrics, patchcore, transport

S = 64


@pytest.fixture(scope="module")
def setup():
  """A texture class (12 training images), a contrast shift, 8 + 8 test images."""
  rng = np.random.default_rng(0)
  train = np.stack([texture(rng, S) for _ in range(12)])
  good = [texture(rng, S) for _ in range(8)]
  bad = []
  for _ in range(8):
    y, x = rng.integers(S // 4, 3 * S // 4, 2)
    bad.append(plant_defect(texture(rng, S), y, x, S // 10))
  labels = np.array([0] * 8 + [1] * 8)
  module, variables = backbones.create("efficientnet_lite0", "pretrained", taps=("stage3", "stage5"))

  def make_extractor(train=False):
    return features.make_extractor(module, ("stage3", "stage5"), S, train=train)
  make_extractor = __import__("functools").lru_cache(None)(make_extractor)
  f = patchcore.batched(jax.jit(make_extractor()), variables, train, 4)
  bank = patchcore.fit_memory_bank(f, jax.random.key(0), ratio=0.5, proj_dim=None)
  test = corruptions.apply_batched("contrast", np.stack(good + bad), 5, jax.random.key(1), 8)
  target = corruptions.apply_batched("contrast", np.stack([texture(rng, S) for _ in range(8)]), 5,
                                     jax.random.key(2), 8)
  cfg = base.get_base_config()
  cfg.data.crop, cfg.batch_size = S, 8
  cfg.adapt.steps, cfg.adapt.lr, cfg.adapt.batch_images, cfg.adapt.patches = 10, 1e-2, 4, 256
  return dict(module=module, variables=variables, mk=make_extractor, bank=bank, test=test,
              labels=labels, target=target, cfg=cfg)


def _auroc(s, method, v):
  scores, _ = patchcore.predict(adapt.eval_extractor(s["cfg"], s["mk"], method), v, s["test"],
                                s["bank"].bank, S, 8)
  return metrics.auroc(s["labels"], scores)


def test_roda_lowers_its_loss_and_raises_auroc_on_a_synthetic_shift(setup):
  s = setup
  clean, _ = patchcore.predict(s["mk"](), s["variables"], s["test"], s["bank"].bank, S, 8)
  none = _auroc(s, "none", s["variables"])
  v, info = adapt.run("roda", s["cfg"], s["module"], s["variables"], s["mk"], s["bank"],
                      s["target"], jax.random.key(0))
  roda = _auroc(s, "roda", v)
  assert info["steps"] == 10 and "error" not in info
  assert info["loss_last"] < 0.8 * info["loss_first"]
  # Contrast at severity 5 breaks the detector (measured: ~41); RoDA restores it (~100).
  assert none < 60 and roda > none + 25


def test_adaptation_is_deterministic(setup):
  s = setup
  cfg = s["cfg"].copy_and_resolve_references()
  cfg.adapt.steps = 2
  runs = [adapt.run("roda", cfg, s["module"], s["variables"], s["mk"], s["bank"], s["target"],
                    jax.random.key(3)) for _ in range(2)]
  a, b = (jax.tree.leaves(v["params"]) for v, _ in runs)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert runs[0][1]["loss_last"] == runs[1][1]["loss_last"]


def test_too_few_adaptation_images_is_a_clear_error(setup):
  s = setup
  with pytest.raises(ValueError, match="fewer than config.adapt.batch_images=4"):
    adapt.run("roda", s["cfg"], s["module"], s["variables"], s["mk"], s["bank"], s["target"][:3],
              jax.random.key(0))


def test_non_finite_costs_are_reported_not_hidden(setup):
  s = setup
  bad_bank = patchcore.MemoryBank(np.full_like(s["bank"].bank, np.nan), s["bank"].feature_mean,
                                  s["bank"].feature_cov, s["bank"].grid)
  v, info = adapt.run("roda", s["cfg"], s["module"], s["variables"], s["mk"], bad_bank, s["target"],
                      jax.random.key(0))
  assert "non-finite loss at step 0" in info["error"]
  # The parameters of the last finite step (here: the source ones) are kept.
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(v["params"]),
                                                  jax.tree.leaves(s["variables"]["params"])))


def test_sinkhorn_that_does_not_converge_is_reported(setup):
  s = setup
  cfg = s["cfg"].copy_and_resolve_references()
  cfg.adapt.steps, cfg.adapt.sinkhorn_max_iterations, cfg.adapt.sinkhorn_threshold = 1, 10, 1e-9
  _, info = adapt.run("sinkhorn", cfg, s["module"], s["variables"], s["mk"], s["bank"], s["target"],
                      jax.random.key(0))
  assert info["sinkhorn_converged_frac"] == 0.0
  assert "raise adapt.epsilon or adapt.sinkhorn_max_iterations" in info["warning"]


def test_assignment_analysis_counts_anomalous_patches():
  # Bank: normal features near 0; target: 6 normal patches near 0, 2 far away (anomalous).
  cfg = base.get_base_config().adapt
  cfg.patches, cfg.batch_images = 64, 2
  rng = np.random.default_rng(0)
  bank = rng.normal(0, 0.1, (40, 3)).astype(np.float32)
  feats = rng.normal(0, 0.1, (2, 2, 2, 3)).astype(np.float32)
  feats[0, 0, 0] += 10.0
  feats[1, 1, 1] += 10.0
  masks = np.zeros((2, 8, 8), np.uint8)
  masks[0, 0, 0] = 1      # cell (0, 0) of image 0
  masks[1, 7, 7] = 1      # cell (1, 1) of image 1
  imgs = np.zeros((2, 8, 8, 3), np.uint8)   # stand-ins, the extractor ignores them

  def extract(_, x):
    return jnp.concatenate([jnp.asarray(feats)] * (x.shape[0] // 2))
  cont = adapt.assignment_analysis("sinkhorn", extract, None, imgs, masks, jax.random.key(0),
                                   bank, cfg)
  disc = adapt.assignment_analysis("discrete", extract, None, imgs, masks, jax.random.key(0),
                                   bank, cfg)
  assert (cont["n_patches"], cont["n_anomalous"]) == (8, 2)
  assert cont["anomalous_loss_share"] == pytest.approx(25.0)
  assert cont["anomalous_picked_by_bank"] is None   # no argmax in a continuous plan
  # Independent count on the dense plan of transport.discretise (Eq. 6).
  z = jnp.asarray(feats.reshape(-1, 3))
  lab = np.zeros(8, bool)
  lab[[0, 7]] = True
  pot = transport.sinkhorn_potentials(z, jnp.asarray(bank), cfg.epsilon, True,
                                      cfg.sinkhorn_threshold, cfg.sinkhorn_max_iterations)
  pi = np.asarray(transport.discretise(transport.dense_plan(z, jnp.asarray(bank), pot)))
  col_pick = np.zeros(8, bool)
  col_pick[np.argmax(np.asarray(transport.dense_plan(z, jnp.asarray(bank), pot)), 0)] = True
  assert disc["anomalous_picked_by_bank"] == int((col_pick & lab).sum())
  assert disc["anomalous_loss_share"] == pytest.approx(100 * pi[lab].sum() / pi.sum(), rel=1e-5)


def test_patch_labels_mark_cells_with_mask_pixels():
  m = np.zeros((1, 8, 8), np.uint8)
  m[0, 5, 2] = 255
  lab = np.asarray(features.patch_labels(jnp.asarray(m), (2, 2)))
  np.testing.assert_array_equal(lab[0], [[False, False], [True, False]])
