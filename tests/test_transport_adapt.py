"""Transport (discretisation, chunked argmaxes, Sinkhorn marginals) and BN-only adaptation."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from rodajax import adapt, backbones, features, transport
from configs import base


def test_discretise_hand_made_plan_with_ties():
  g = jnp.asarray([[0.5, 0.1, 0.0],
                   [0.2, 0.2, 0.1],   # tie in row 1 -> first index (0)
                   [0.0, 0.0, 0.3]])
  want = np.array([[1, 0, 0],   # row argmax of row 0, col argmax of col 0
                   [1, 1, 0],   # row 1 -> col 0; col 1 argmax -> row 1
                   [0, 0, 1]], np.float32)
  np.testing.assert_array_equal(transport.discretise(g), want)


def test_chunked_argmaxes_equal_dense_plan_and_marginals_hold():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(70, 6)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(50, 6)), jnp.float32)
  pot = transport.sinkhorn_potentials(x, y, epsilon=0.05, threshold=1e-4, max_iterations=2000)
  assert bool(pot.converged)
  gamma = transport.dense_plan(x, y, pot)
  np.testing.assert_allclose(gamma.sum(1), np.full(70, 1 / 70), atol=2e-4)
  np.testing.assert_allclose(gamma.sum(0), np.full(50, 1 / 50), atol=2e-4)
  row, col = transport.plan_argmaxes(x, y, pot.f, pot.g, chunk=16)
  np.testing.assert_array_equal(row, np.argmax(gamma, 1))
  np.testing.assert_array_equal(col, np.argmax(gamma, 0))
  pi = np.asarray(transport.discretise(gamma))
  c = np.asarray(transport.euclidean_cost(x, y))
  loss = float(transport.discrete_loss(x, y, row, col))
  assert loss == np.float32((pi * c).sum() / pi.sum()) or abs(loss - (pi * c).sum() / pi.sum()) < 1e-5


def test_only_batchnorm_affine_parameters_change():
  module, variables = backbones.create("efficientnet_lite0", "pretrained", taps=("stage3", "stage5"))
  ext = features.make_extractor(module, ("stage3", "stage5"), 64)
  cfg = base.get_base_config().adapt
  cfg.patches = 64
  cfg.lr = 1e-2
  bank = jax.random.normal(jax.random.key(0), (128, 152))
  step, opt = adapt.make_step("roda", ext, variables["params"], cfg)
  imgs = jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3)), jnp.uint8)
  p, _, loss, _ = step(variables["params"], opt.init(variables["params"]), variables["batch_stats"],
                       imgs, jax.random.key(1), bank, jnp.zeros(152), jnp.eye(152))
  assert np.isfinite(float(loss))
  before, after = traverse_util.flatten_dict(variables["params"]), traverse_util.flatten_dict(p)
  labels = traverse_util.flatten_dict(adapt.bn_labels(variables["params"]))
  changed = [k for k in before if not np.array_equal(before[k], after[k])]
  assert changed and all(labels[k] == "bn" for k in changed)
  assert all(np.array_equal(before[k], after[k]) for k in before if labels[k] == "frozen")


def test_unknown_method_lists_known():
  import pytest
  with pytest.raises(ValueError, match="known: none, bn_stats"):
    adapt.check_method("tent")
