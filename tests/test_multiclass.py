"""Classes vmapped into one call equal the per-class loop (issue 14).

Two texture classes with banks of different sizes (padded and masked in
the vmapped path), adapted under a contrast shift and scored: per-class
`tta.run` + `make_predict` against one `tta.run_classes` +
`make_class_predict`.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from experiments import loops, train, tta
from helpers import plant_defect, texture
from rodajax import adapt, backbones, features, metrics, patchcore, scoring

S = 64
TRAIN = (10, 14)   # training images per class -> banks of 320 and 448 patches


@pytest.fixture(scope="module")
def classes():
  module, variables = backbones.create("efficientnet_lite0", "pretrained", taps=("stage3", "stage5"))
  extract = features.make_extractor(module, ("stage3", "stage5"), S)
  ext = jax.jit(extract)
  out = []
  for c, n_train in enumerate(TRAIN):
    rng = np.random.default_rng(10 + c)
    tint = rng.integers(-40, 40, 3)
    tex = lambda: np.clip(texture(rng, S).astype(int) + tint, 0, 255).astype(np.uint8)
    train_imgs = np.stack([tex() for _ in range(n_train)])
    bank = patchcore.fit_memory_bank(loops.batched(ext, variables, train_imgs, 4),
                                     jax.random.key(c), ratio=0.5, proj_dim=None)
    good = [tex() for _ in range(6)]
    bad = [plant_defect(tex(), *rng.integers(S // 4, 3 * S // 4, 2), S // 10) for _ in range(6)]
    test = loops.corrupt("contrast", np.stack(good + bad), 5, jax.random.key(100 + c), 8)
    target = loops.corrupt("contrast", np.stack([tex() for _ in range(12)]), 5,
                           jax.random.key(200 + c), 8)
    out.append(dict(bank=bank, source=train.source_of(bank), test=test, target=target,
                    labels=np.array([0] * 6 + [1] * 6)))
  cfg = base.get_base_config()
  cfg.adapt.batch_images, cfg.adapt.lr = 4, 1e-2
  cfg.adapt.target_patches = cfg.adapt.bank_patches = 256
  cfg.adapt.hungarian_patches = 128
  # The vmapped pass against the loop with every stage on (the gate is tested on its own).
  cfg.adapt.gate, cfg.adapt.safeguard, cfg.adapt.bn_mode = 0.0, True, "prior"
  cfg.adapt.select = "all"   # every image (the selection: its own test below)
  return dict(module=module, variables=variables, extract=extract, classes=out, cfg=cfg)


def test_pad_banks_masks_padding_out_of_nearest_neighbours():
  rng = np.random.default_rng(0)
  banks = [rng.normal(size=(m, 8)).astype(np.float32) for m in (5, 9, 7)]
  stacked, valid = scoring.pad_banks(banks)
  assert stacked.shape == (3, 9, 8) and valid.sum(1).tolist() == [5, 9, 7]
  q = rng.normal(size=(20, 8)).astype(np.float32)
  # Zero padding rows would be nearer than the real rows for queries near the origin.
  q[:4] *= 1e-3
  for c, b in enumerate(banks):
    want = np.sqrt(((q[:, None] - b[None]) ** 2).sum(-1)).min(1)
    got = scoring.nearest_distances(jnp.asarray(q), jnp.asarray(stacked[c]), 8, jnp.asarray(valid[c]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="different feature sizes"):
    scoring.pad_banks([banks[0], np.zeros((3, 4))])


def test_padded_bank_draws_the_same_transport_subsets():
  key = jax.random.key(7)
  _, alone = adapt.transport.balanced_subsets(key, 100, 300, 50, 64)
  valid = jnp.arange(420) < 300
  _, padded = adapt.transport.balanced_subsets(key, 100, 420, 50, 64, valid)
  np.testing.assert_array_equal(alone, padded)
  assert int(padded.max()) < 300
  with pytest.raises(ValueError, match="bank_patches > 0"):
    adapt.transport.balanced_subsets(key, 100, 420, 50, 0, valid)


@pytest.fixture(scope="module")
def loop_runs(classes):
  """`tta.run` class by class (roda)."""
  s, cl = classes, classes["classes"]
  fns = tta.build("roda", s["cfg"].adapt, s["module"], s["extract"], s["variables"]["params"], S)
  return [tta.run("roda", fns, s["cfg"].adapt, s["variables"], c["source"], c["target"],
                  jax.random.key(50 + i)) for i, c in enumerate(cl)]


def test_vmapped_classes_equal_the_per_class_loop(classes, loop_runs):
  """Adapted in one vmap over the classes (class_batch 0, the accelerators' default) and scored
  with class_batch 0 and 1 (1: class after class in one program). roda covers the OT step, the
  prior-mixed statistics and the safeguard (moment / kl / hungarian / bn_stats go through the
  same step and statistics code). class_batch 1 maps the same per-class functions with
  `adapt.class_map`'s `lax.map`; for CI time the adaptation is not compiled that way here (its
  class step compiles in about twice a vmap's time): the scoring below and tests/test_uda.py's
  vmapped runs compare that map with the loop."""
  method, s, cl = "roda", classes, classes["classes"]
  cfg = s["cfg"].adapt.copy_and_resolve_references()
  cfg.class_batch = "0"
  keys = [jax.random.key(50 + c) for c in range(len(cl))]
  loop = loop_runs
  fns_v = tta.build(method, cfg, s["module"], s["extract"], s["variables"]["params"], S,
                    classes=True)
  kept_v, last_v, info_v = tta.run_classes(method, fns_v, cfg, [s["variables"]] * len(cl),
                                           [c["source"] for c in cl], [c["target"] for c in cl],
                                           keys)
  predict = patchcore.make_predict(s["extract"], S)
  predict_v = {cb: patchcore.make_class_predict(s["extract"], s["variables"]["params"], S,
                                                class_batch=cb) for cb in (0, 1)}
  banks, valid = scoring.pad_banks([c["bank"].bank for c in cl])
  banks, valid = jnp.asarray(banks), jnp.asarray(valid)
  tests = jnp.asarray(np.stack([c["test"] for c in cl]))
  # Scoring alone, on the loop's adapted variables: one class-mapped call == class by class.
  scored_l = {cb: p(adapt.stack_classes([r[0] for r in loop]), banks, valid, tests)
              for cb, p in predict_v.items()}
  # Adapted and scored in the vmapped path.
  scores_v, _ = predict_v[0](adapt.stack_classes(kept_v), banks, valid, tests)
  moved = False
  for i, (c, (kept, last, info)) in enumerate(zip(cl, loop)):
    sc, mp = predict(kept, jnp.asarray(c["bank"].bank), jnp.asarray(c["test"]))
    auc = metrics.auroc(c["labels"], np.asarray(sc))
    for scores_l, maps_l in scored_l.values():
      np.testing.assert_allclose(scores_l[i], sc, rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(maps_l[i], mp, rtol=1e-5, atol=1e-5)
      assert metrics.auroc(c["labels"], np.asarray(scores_l[i])) == auc
    # The adaptation: the vmapped convolutions batch C x B images where the loop batches B,
    # which rounds differently (~1e-6 relative); Adam's normalised step m / sqrt(v) turns a
    # rounding difference in a near-zero gradient into up to one step (lr) on that parameter.
    # Losses agree to 1e-4, scores to 1e-4, and the decisions and the AUROC are the same.
    assert info.get("steps") == info_v[i].get("steps")
    assert info.get("safeguard", {}).get("kept") == info_v[i].get("safeguard", {}).get("kept")
    if "step_metrics" in info:
      np.testing.assert_allclose([m["loss"] for m in info["step_metrics"]],
                                 [m["loss"] for m in info_v[i]["step_metrics"]], rtol=1e-4)
    # Adam bounds each step by ~lr, so no parameter can move apart more than 2 lr per step; in
    # practice >= 99% of them agree to lr / 10 (a near-zero gradient may flip one's sign).
    steps = max(info.get("steps", 0), 1)
    diffs = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() /
                            np.maximum(1.0, np.abs(np.asarray(a)).ravel())
                            for a, b in zip(jax.tree.leaves(last), jax.tree.leaves(last_v[i]))])
    assert diffs.max() <= 2 * steps * cfg.lr, diffs.max()
    assert np.mean(diffs <= cfg.lr / 10) >= 0.99, np.mean(diffs <= cfg.lr / 10)
    np.testing.assert_allclose(scores_v[i], sc, rtol=1e-4, atol=1e-4)
    assert metrics.auroc(c["labels"], np.asarray(scores_v[i])) == auc
    moved |= any(not np.array_equal(a, b) for a, b in
                 zip(jax.tree.leaves(last), jax.tree.leaves(s["variables"])))
  assert moved, f"{method} changed nothing: the comparison would be vacuous"


def test_run_classes_refuses_what_it_cannot_stack(classes):
  s, cl = classes, classes["classes"]
  cfg = s["cfg"].adapt.copy_and_resolve_references()
  fns_v = tta.build("roda", cfg, s["module"], s["extract"], s["variables"]["params"], S,
                    classes=True)
  keys = [jax.random.key(0), jax.random.key(1)]
  # Different image counts are fine (tests/test_experiment.py), unless a class has fewer
  # training images than a minibatch: 3 images -> 1 held out, 2 < batch_images = 4.
  with pytest.raises(Exception, match="at least adapt.batch_images=4"):
    tta.run_classes("roda", fns_v, cfg, [s["variables"]] * 2, [cl[0]["source"], cl[1]["source"]],
                    [cl[0]["target"], cl[1]["target"][:3]], keys)
  cfg.bank_patches = 400
  fns_v = tta.build("roda", cfg, s["module"], s["extract"], s["variables"]["params"], S,
                    classes=True)
  with pytest.raises(Exception, match="bank_patches to at most 320"):
    tta.run_classes("roda", fns_v, cfg, [s["variables"]] * 2, [cl[0]["source"], cl[1]["source"]],
                    [cl[0]["target"], cl[1]["target"]], keys)


def test_selection_in_the_vmapped_pass_is_the_per_class_selection(classes):
  """adapt.select=lowest: each class keeps the images `run` keeps for it (selected class by
  class before the class-mapped pass) and adapts on them as the loop does. class_batch 0, as
  the test above: its class step is the same program, which the persistent cache hands back
  (class_batch 1, the CPU default, maps the same per-class functions with `lax.map`: compared
  with the loop by the scoring above and by tests/test_uda.py's class steps)."""
  s, cl = classes, classes["classes"]
  cfg = s["cfg"].adapt.copy_and_resolve_references()
  cfg.select, cfg.select_share, cfg.safeguard, cfg.class_batch = "lowest", 0.5, False, "0"
  keys = [jax.random.key(60 + c) for c in range(len(cl))]
  targets = [np.concatenate([c["target"][:8], c["test"][6:10]]) for c in cl]  # 8 good + 4 bad
  fns = tta.build("roda", cfg, s["module"], s["extract"], s["variables"]["params"], S)
  loop = [tta.run("roda", fns, cfg, s["variables"], c["source"], x, k)
          for c, x, k in zip(cl, targets, keys)]
  fns_v = tta.build("roda", cfg, s["module"], s["extract"], s["variables"]["params"], S,
                    classes=True)
  kept_v, _, info_v = tta.run_classes("roda", fns_v, cfg, [s["variables"]] * len(cl),
                                      [c["source"] for c in cl], targets, keys)
  for (kept, _, info), kv, iv in zip(loop, kept_v, info_v):
    assert info["select"]["indices"] == iv["select"]["indices"] and info["select"]["kept"] == 6
    assert info["steps"] == iv["steps"] == 2
    diffs = [np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(kv))]
    assert max(diffs) <= 2 * 2 * cfg.lr, max(diffs)
