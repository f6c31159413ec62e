"""Transport (discretisation, chunked argmaxes, Sinkhorn marginals) and BN-only adaptation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
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


def test_trimmed_loss_leaves_out_the_farthest_target_patches_and_their_pairs():
  # Hand-made: bank entries b0 = (0, 0), b1 = (1, 0), b2 = (0, 1.1); target patch 2 sits at
  # (10, 0), 9 from its row argmax b1. Row pairs (0,0) 0, (1,1) 0, (2,1) 9, (3,2) 0.1; every
  # column pair repeats a row pair, so Eq. 6 gives 9.1 / 4.
  z = jnp.asarray([[0., 0.], [1., 0.], [10., 0.], [0., 1.]])
  b = jnp.asarray([[0., 0.], [1., 0.], [0., 1.1]])
  row, col = jnp.asarray([0, 1, 1, 2]), jnp.asarray([0, 1, 3])
  np.testing.assert_allclose(transport.discrete_loss(z, b, row, col), 9.1 / 4, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(transport.discrete_loss(z, b, row, col, trim=0.0), 9.1 / 4, rtol=1e-5, atol=1e-5)
  # trim 0.25 of 4 patches: the farthest (patch 2) goes, the rest average 0.1 / 3.
  d_row = transport.pair_distances(z, b, jnp.arange(4), row)
  np.testing.assert_array_equal(transport.trimmed_target_mask(d_row, 0.25),
                                [True, True, False, True])
  np.testing.assert_allclose(transport.discrete_loss(z, b, row, col, trim=0.25), 0.1 / 3,
                             rtol=1e-5, atol=1e-5)
  # A column pair of a trimmed patch goes too: make patch 2 the column argmax of b2.
  col2 = jnp.asarray([0, 1, 2])
  np.testing.assert_allclose(transport.discrete_loss(z, b, row, col2),
                             (9.1 + np.hypot(10, 1.1)) / 5, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(transport.discrete_loss(z, b, row, col2, trim=0.25), 0.1 / 3,
                             rtol=1e-5, atol=1e-5)
  # The trimmed patch gets no gradient; the kept ones do.
  g = jax.grad(lambda x: transport.discrete_loss(x, b, row, col2, trim=0.25))(z)
  np.testing.assert_array_equal(g[2], [0.0, 0.0])
  assert float(jnp.abs(g[3]).sum()) > 0
  with pytest.raises(ValueError, match="adapt.trim"):
    adapt.Settings(trim=1.0)


def test_only_batchnorm_affine_parameters_change():
  module, variables = backbones.create("efficientnet_lite0", "pretrained", taps=("stage3", "stage5"))
  ext = features.make_extractor(module, ("stage3", "stage5"), 64)
  settings = adapt.Settings(target_patches=64, bank_patches=64)
  optimizer = adapt.make_optimizer(variables["params"], 1e-2)
  step = jax.jit(adapt.make_step(settings, ext, optimizer))
  source = adapt.Source(jax.random.normal(jax.random.key(0), (128, 152)), jnp.zeros(152),
                        jnp.eye(152))
  imgs = jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3)), jnp.uint8)
  state, m = step(adapt.init_state(variables, optimizer), source, imgs, jax.random.key(1))
  assert np.isfinite(float(m["loss"])) and bool(m["finite"])
  p = state.params
  before, after = traverse_util.flatten_dict(variables["params"]), traverse_util.flatten_dict(p)
  labels = traverse_util.flatten_dict(adapt.bn_labels(variables["params"]))
  changed = [k for k in before if not np.array_equal(before[k], after[k])]
  assert changed and all(labels[k] == "bn" for k in changed)
  assert all(np.array_equal(before[k], after[k]) for k in before if labels[k] == "frozen")
  # The running statistics are not touched by a step.
  for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(variables["batch_stats"])):
    np.testing.assert_array_equal(a, b)


def test_online_sinkhorn_equals_the_dense_cost_matrix_solution():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(300, 8)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(200, 8)), jnp.float32)
  dense = transport.sinkhorn_potentials(x, y, 0.05, threshold=1e-4, max_iterations=500)
  online = transport.sinkhorn_potentials(x, y, 0.05, threshold=1e-4, max_iterations=500, chunk=64)
  assert bool(dense.converged) and bool(online.converged)
  np.testing.assert_allclose(online.epsilon, dense.epsilon, rtol=1e-5)
  r1, c1 = transport.plan_argmaxes(x, y, dense.f, dense.g)
  r2, c2 = transport.plan_argmaxes(x, y, online.f, online.g)
  assert np.mean(np.asarray(r1) == np.asarray(r2)) > 0.99
  assert np.mean(np.asarray(c1) == np.asarray(c2)) > 0.99


def test_balanced_subsets_and_plan_diagnostics_by_hand():
  t, b = transport.balanced_subsets(jax.random.key(0), 100, 50, 30, 30)
  assert len(np.unique(t)) == 30 and len(np.unique(b)) == 30 and int(b.max()) < 50
  t, b = transport.balanced_subsets(jax.random.key(0), 100, 50, 0, 0)
  np.testing.assert_array_equal(t, np.arange(100))
  assert b is None
  # 3 target points, 2 bank points on a line: x = 0, 1, 10; y = 0, 10.
  x = jnp.asarray([[0.0], [1.0], [10.0]])
  y = jnp.asarray([[0.0], [10.0]])
  row = jnp.asarray([0, 0, 1])        # nearest bank entry of each target point
  col = jnp.asarray([0, 2])           # nearest target point of each bank entry
  d = {k: float(v) for k, v in transport.plan_diagnostics(x, y, row, col).items()}
  # Pairs: rows (0,0) d0, (1,0) d1, (2,1) d0; columns (0,0) and (2,1) duplicate rows -> weight 0.
  assert d["row_share"] == pytest.approx(1.0, abs=1e-5)
  assert d["col_pairs_share"] == 0.0
  assert d["col_distinct"] == 2 and d["row_distinct"] == 2


def test_unknown_method_lists_known():
  import pytest
  with pytest.raises(ValueError, match="known: none, bn_stats"):
    adapt.check_method("tent")
