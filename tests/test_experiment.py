"""End-to-end: the main command on tiny data, resume, config errors, real bottle."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, shared_path
from helpers import plant_defect, texture, write_mvtec
from experiments import cli, loops, train
from configs import mvtec as mvtec_config
from configs.base import get_base_config as base_config


def _tiny_config(root, **kw):
  c = mvtec_config.get_config()
  c.data.root = str(root)
  c.data.categories = ("widget",)
  c.data.resize, c.data.crop = 64, 64
  c.batch_size = 4
  c.figures = False
  c.shift.corruptions, c.adapt.methods, c.shift.adapt_fraction = ("clean",), ("none",), 0.0
  for k, v in kw.items():
    if "__" not in k:      # a top-level key
      c[k] = v
      continue
    sub, key = k.split("__")
    # "a,b" as the command line gives it, typed like the field (tuples for lists)
    c[sub][key] = cli.convert(f"{sub}.{key}", v, c[sub][key]) if isinstance(v, str) else v
  return c


def test_main_command_smoke_writes_results_and_resumes(tmp_path):
  write_mvtec(tmp_path / "data", n_train=6, n_good=3, n_bad=3, size=64)
  work = tmp_path / "work"
  cmd = [sys.executable, "-m", "experiments.roda", "--config", os.path.join(ROOT, "configs/mvtec.py"),
         f"--config.data.root={tmp_path / 'data'}", "--config.data.categories=widget",
         "--config.data.resize=64", "--config.data.crop=64", "--config.batch_size=4",
         "--config.shift.corruptions=clean", "--config.adapt.methods=none",
         "--config.shift.adapt_fraction=0.0", f"--workdir={work}"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  recs = json.load(open(work / "results.json"))
  assert len(recs) == 1
  r = recs[0]
  for k in ("dataset", "category", "shift", "severity", "method", "image_auroc", "pixel_auroc",
            "aupro", "n_train", "n_test", "seconds"):
    assert k in r
  assert (r["shift"], r["method"], r["n_train"], r["n_test"]) == ("clean", "none", 6, 6)
  assert r["image_auroc"] == 100.0  # a magenta square on a grey texture
  assert r["pixel_auroc"] > 90
  assert "| widget |" in open(work / "results.md").read()
  assert os.path.exists(work / "figures" / "mvtec_widget_maps.png")
  banks = os.listdir(work / "banks")
  assert len(banks) == 1
  # Rerun: the bank is reused and no record is duplicated.
  mtime = os.path.getmtime(work / "banks" / banks[0])
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert len(json.load(open(work / "results.json"))) == 1
  assert os.path.getmtime(work / "banks" / banks[0]) == mtime


def test_anomaly_map_peaks_on_planted_defect(tmp_path):
  write_mvtec(tmp_path, n_train=6, n_good=1, n_bad=0, size=128)
  rng = np.random.default_rng(5)
  from PIL import Image
  img = plant_defect(texture(rng, 128), 88, 40, 10)
  Image.fromarray(img).save(tmp_path / "widget" / "test" / "spot" / "000.png")
  c = _tiny_config(tmp_path)
  c.data.resize = 128
  from rodajax import backbones, data, features, patchcore
  import jax
  ds = data.load(c.data, "widget")
  m, v = backbones.create("efficientnet_lite0", "pretrained")
  ext = features.make_extractor(m, ("stage3", "stage5"), 128)
  f = loops.batched(jax.jit(ext), v, ds.train.images, 4)
  bank = patchcore.fit_memory_bank(f, jax.random.key(0), ratio=0.5)
  scores, maps = loops.predict(patchcore.make_predict(ext, 128), v, ds.test.images,
                                   bank.bank, batch=2)
  assert scores[1] > scores[0]
  y, x = np.unravel_index(maps[1].argmax(), maps[1].shape)
  assert abs(y - 88) <= 8 and abs(x - 40) <= 8


def test_results_are_deterministic(tmp_path):
  write_mvtec(tmp_path / "data", size=64)
  a = train.train_and_evaluate(_tiny_config(tmp_path / "data"), str(tmp_path / "a"))
  b = train.train_and_evaluate(_tiny_config(tmp_path / "data"), str(tmp_path / "b"))
  assert [r["image_auroc"] for r in a] == [r["image_auroc"] for r in b]
  assert [r["pixel_auroc"] for r in a] == [r["pixel_auroc"] for r in b]


def test_shift_and_adaptation_records_for_each_fraction(tmp_path):
  write_mvtec(tmp_path / "data", n_train=6, n_good=6, n_bad=6, size=64)
  c = _tiny_config(tmp_path / "data", shift__corruptions="clean,contrast", shift__severities="5",
                   adapt__methods="none,bn_stats,roda", shift__adapt_fractions="0.5,1.0",
                   adapt__batch_images=2, adapt__target_patches=64, adapt__bank_patches=64,
                   adapt__gate=0.0, adapt__safeguard=True, adapt__select="all",
                   shift__seeds="0,1")
  recs = train.train_and_evaluate(c, str(tmp_path / "w"))
  # 2 seeds x 2 fractions x (clean + contrast) x 3 methods
  assert len(recs) == 2 * 2 * 2 * 3
  assert {r["seed"] for r in recs} == {0, 1}
  keys = {(r["adapt_fraction"], r["shift"], r["severity"], r["method"]) for r in recs}
  assert (0.5, "contrast", 5, "roda") in keys and (1.0, "clean", 0, "bn_stats") in keys
  half = [r for r in recs if r["adapt_fraction"] == 0.5]
  assert all((r["n_adapt"], r["n_test"]) == (6, 6) for r in half)
  assert all((r["n_adapt"], r["n_test"]) == (12, 12) for r in recs if r["adapt_fraction"] == 1.0)
  roda = [r for r in recs if r["method"] == "roda"]
  # One pass (Alg. 1): ceil(n_train / batch) steps; 6 adaptation images -> 2 held out, 4 train.
  assert all(r["steps"] == -(-r["n_adapt_train"] // 2) for r in roda)
  assert all(r["n_adapt_train"] + r["n_holdout"] == r["n_adapt"] for r in roda)
  assert all(len(r["step_metrics"]) == r["steps"] and "row_share" in r["step_metrics"][0]
             for r in roda)
  assert all(r["safeguard"]["kept"] and "unguarded" in r for r in roda)
  # Methods on the same part see the same images: bn_stats differs from none only via BN.
  assert all(r["image_auroc"] is not None for r in recs)
  md = open(tmp_path / "w" / "results.md").read()
  assert "adaptation fraction 0.5: image_auroc" in md and "| roda |" in md
  # A rerun resumes: nothing is recomputed.
  again = train.train_and_evaluate(c, str(tmp_path / "w"))
  assert [r["seconds"] for r in again] == [r["seconds"] for r in recs]


def test_a_safeguard_fallback_reuses_the_source_evaluation(tmp_path, monkeypatch):
  # margin 0.99: the held-out criterion never falls by 99 %, so roda keeps the source model;
  # its evaluation is then none's (same variables, same split), computed once per shift.
  write_mvtec(tmp_path / "data", n_train=6, n_good=6, n_bad=6, size=64)
  c = _tiny_config(tmp_path / "data", shift__corruptions="clean,contrast", shift__severities="5",
                   adapt__methods="none,roda", shift__adapt_fraction=0.5, adapt__batch_images=2,
                   adapt__target_patches=64, adapt__bank_patches=64, adapt__safeguard_margin=0.99,
                   adapt__gate=0.0, adapt__safeguard=True, figures=True)
  calls = []
  evaluate = train.Context.evaluate
  monkeypatch.setattr(train.Context, "evaluate",
                      lambda self, v, *a: calls.append(a[-2]) or evaluate(self, v, *a))
  recs = train.train_and_evaluate(c, str(tmp_path / "w"))
  by = {(r["shift"], r["method"]): r for r in recs}
  for shift in ("clean", "contrast"):
    roda, none = by[shift, "roda"], by[shift, "none"]
    assert roda["safeguard"]["kept"] == "source"
    assert (roda["image_auroc"], roda["pixel_auroc"]) == (none["image_auroc"], none["pixel_auroc"])
  # per shift: the source once (none), the unguarded last step once; roda's guarded one reused
  assert len(calls) == 4 and sum("(unguarded)" in d for d in calls) == 2
  # the centre prior's pixel metrics: once per split, the same for every shift and method
  assert {json.dumps(r["centre_prior"]) for r in recs} == {json.dumps(recs[0]["centre_prior"])}
  assert 0 <= recs[0]["centre_prior"]["pixel_auroc"] <= 100
  # none and roda on the same test images, one figure per shift (their maps coincide here)
  figs = sorted(p.name for p in (tmp_path / "w" / "figures").glob("*_methods*.png"))
  assert figs == [f"mvtec_widget_{s}_methods{r}.png" for s in ("clean", "contrast5")
                  for r in ("", "_roc")]


def test_config_errors_are_clear(tmp_path):
  write_mvtec(tmp_path / "data", size=64)
  with pytest.raises(train.ConfigError, match=r"coreset.ratio=1.5 must be in \(0, 1\]"):
    train.train_and_evaluate(_tiny_config(tmp_path / "data", coreset__ratio=1.5), str(tmp_path / "w"))
  with pytest.raises(Exception, match="category 'nope' not found.*widget"):
    train.train_and_evaluate(_tiny_config(tmp_path / "data", data__categories="nope"), str(tmp_path / "w"))
  for kw, msg in [(dict(shift__corruptions="gaussian_noise", shift__severities="6"),
                   "severity must be an integer from 1 to 5, got 6"),
                  (dict(shift__corruptions="fog"), "unknown corruption 'fog'.*gaussian_noise"),
                  (dict(adapt__methods="none,tent"), "unknown adaptation method 'tent'.*roda"),
                  (dict(shift__adapt_fractions="0.2,1.5"), r"fraction 1.5 .* must be in \[0, 1\]"),
                  (dict(adapt__methods="roda"), "need target images"),
                  (dict(adapt__bn_mode="batch"), "bn_mode='batch'; use one of source"),
                  (dict(adapt__gate_statistic="mean"), "gate_statistic='mean'; use nn_median"),
                  (dict(adapt__gate=-1.0), r"gate=-1.0 must be >= 0"),
                  (dict(adapt__trim=1.0), r"adapt.trim=1.0 must be in \[0, 1\)"),
                  (dict(adapt__safeguard_criterion="auroc"), "criterion='auroc'; use transport"),
                  (dict(adapt__safeguard_criterion="synthetic", adapt__synthetic_copies=0),
                   "synthetic_copies >= 1")]:
    with pytest.raises(Exception, match=msg):
      train.train_and_evaluate(_tiny_config(tmp_path / "data", **kw), str(tmp_path / "w"))
  out = subprocess.run([sys.executable, "-m", "experiments.roda", "--config",
                        os.path.join(ROOT, "configs/mvtec.py"), "--config.data.rooot=x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and "rooot" in out.stderr


def test_bottle_clean_image_auroc(tmp_path):
  root = shared_path("mvtec_ad", "bottle")
  c = mvtec_config.get_config()
  c.data.root = os.path.dirname(root)
  c.figures = False
  c.shift.corruptions, c.adapt.methods, c.shift.adapt_fraction = ("clean",), ("none",), 0.0
  recs = train.train_and_evaluate(c, str(tmp_path))
  assert recs[0]["image_auroc"] >= 98.0


def test_the_seed_redraws_the_split_and_the_noise():
  a, b = train.target_split(50, 0.2, 0), train.target_split(50, 0.2, 1)
  assert len(a[0]) == len(b[0]) == 10 and not np.array_equal(a[0], b[0])
  x = np.full((2, 16, 16, 3), 100, np.uint8)
  n0, n1 = (train.shifted_images(x, "gaussian_noise", 5, s, 2) for s in (0, 1))
  assert not np.array_equal(n0, n1)
  np.testing.assert_array_equal(n0, train.shifted_images(x, "gaussian_noise", 5, 0, 2))


def test_shift_noise_is_the_same_in_every_process():
  # str hashes differ between processes (PYTHONHASHSEED); the corruption key must not.
  code = ("import numpy as np; from experiments import train; "
          "x = np.full((1, 16, 16, 3), 100, np.uint8); "
          "print(int(train.shifted_images(x, 'gaussian_noise', 5, 0, 1).astype(int).sum()))")
  outs = []
  for seed in ("1", "2"):
    env = {**os.environ, "PYTHONHASHSEED": seed}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    outs.append(r.stdout.strip().splitlines()[-1])
  assert outs[0] == outs[1]


def test_epsilon_sweep_reports_plan_diagnostics(tmp_path):
  write_mvtec(tmp_path / "data", n_train=6, n_good=6, n_bad=6, size=64)
  cmd = [sys.executable, "-m", "experiments.epsilon", "--config", os.path.join(ROOT, "configs/mvtec.py"),
         f"--config.data.root={tmp_path / 'data'}", "--config.data.categories=widget",
         "--config.data.resize=64", "--config.data.crop=64", "--config.batch_size=4",
         "--config.shift.corruptions=clean,contrast", "--config.adapt.batch_images=2",
         "--config.adapt.target_patches=64", "--config.adapt.bank_patches=64",
         "--epsilons=0.01,0.2", f"--workdir={tmp_path / 'w'}"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.load(open(tmp_path / "w" / "epsilon.json"))
  assert len(rows) == 2 * 2 and {r["epsilon"] for r in rows} == {0.01, 0.2}
  for shift in ("clean", "contrast"):
    lo, hi = (next(r for r in rows if r["shift"] == shift and r["epsilon"] == e) for e in (0.01, 0.2))
    # A smaller epsilon makes the plan sharper: fewer near-ties, more distinct column argmaxes.
    assert lo["row_near_ties"] <= hi["row_near_ties"]
    assert lo["col_distinct_frac"] >= hi["col_distinct_frac"]
    assert 0.0 <= lo["row_share"] <= 1.0 and lo["n"] == 64


def test_shift_gate_and_routed_statistics_in_the_experiment_loop_and_vmapped(tmp_path):
  """The shipped defaults, in the experiment loop and in one vmapped pass over the categories
  (adapt.vmap_classes, issue 14): clean targets keep the source model (records equal none's),
  shifted ones are adapted; the gate's reference is cached next to the bank. bn_mode=routed:
  gaussian noise raises the stem's variance (geometric statistics), contrast lowers it (target
  statistics). The vmapped pass takes the loop's decisions per category and gives its records,
  with banks of different sizes (padded in the pass) and different step counts (widget is
  frozen for gadget's last step)."""
  write_mvtec(tmp_path / "data", "widget", n_train=10, n_good=6, n_bad=6, size=64, seed=0)
  write_mvtec(tmp_path / "data", "gadget", n_train=14, n_good=10, n_bad=10, size=64, seed=1)
  kw = dict(shift__corruptions="clean,gaussian_noise,contrast", shift__severities="5",
            adapt__methods="none,roda", shift__adapt_fraction=0.5, adapt__batch_images=2,
            adapt__target_patches=64, adapt__bank_patches=64, data__categories="widget,gadget",
            bank_dir=str(tmp_path / "banks"))   # banks: 64 and 89 rows
  assert base_config().adapt.bn_mode == "routed"
  loop = train.train_and_evaluate(_tiny_config(tmp_path / "data", **kw), str(tmp_path / "loop"))
  refs = sorted(f for f in os.listdir(tmp_path / "banks") if f.endswith(".gate.json"))
  assert len(refs) == 2 and refs[0].startswith("mvtec_gadget")
  refs = [json.load(open(tmp_path / "banks" / f)) for f in refs]
  # fit.calibration_fraction = 0.2 of gadget's 14 and widget's 10 training images held out
  assert [(r["n_held"], r["n_kept"]) for r in refs] == [(3, 11), (2, 8)]
  assert all(r["reference"] > 0 for r in refs)
  # class_batch 0: one vmap (the CPU default, 1, is compared with the loop in test_multiclass.py)
  vm = train.train_and_evaluate(_tiny_config(tmp_path / "data", adapt__vmap_classes=True,
                                             adapt__class_batch="0", figures=True, **kw),
                                str(tmp_path / "vmap"))
  # the vmapped pass interleaves the categories; each still gets its figure per shift
  assert sorted(p.name for p in (tmp_path / "vmap" / "figures").glob("*_methods.png")) == [
      f"mvtec_{c}_{s}_methods.png" for c in ("gadget", "widget")
      for s in ("clean", "contrast5", "gaussian_noise5")]
  stats = {"gaussian_noise": "geometric", "contrast": "target_stats"}
  # adaptation images: 0.5 of 12 and of 20 test images; the lower-scoring half kept
  # (adapt.select=lowest); batch 2: widget 3 images in 2 steps, gadget 5 in 3
  kept, steps = {"widget": 3, "gadget": 5}, {"widget": 2, "gadget": 3}
  for recs in (loop, vm):
    by = {(r["category"], r["shift"], r["method"]): r for r in recs}
    assert len(by) == len(recs) == 2 * 3 * 2
    for cat in ("widget", "gadget"):
      clean = by[cat, "clean", "roda"]
      assert not clean["gate"]["shifted"] and clean["steps"] == 0
      assert clean["image_auroc"] == by[cat, "clean", "none"]["image_auroc"]
      for shift, want in stats.items():
        shifted = by[cat, shift, "roda"]
        assert shifted["gate"]["shifted"], (cat, shift)
        assert (shifted["select"]["kept"], shifted["steps"]) == (kept[cat], steps[cat]), (cat, shift)
        assert clean["gate"]["reference"] == shifted["gate"]["reference"]
        assert shifted["bn_stats_used"] == want, (cat, shift)
        assert (shifted["stem_log_var_ratio"] > 1.2) == (shift == "gaussian_noise")
  assert all(r["vmap_classes"] == 2 for r in vm if r["method"] != "none")
  gate = lambda recs: sorted((r["category"], r["shift"], r["gate"]["shifted"],
                              round(r["gate"]["ratio"], 4)) for r in recs if "gate" in r)
  assert gate(loop) == gate(vm)
  select = lambda recs: sorted((r["category"], r["shift"], tuple(r["select"]["indices"]))
                               for r in recs if "select" in r)
  assert select(loop) == select(vm) and len(select(loop)) == 4
  key = lambda r: (r["category"], r["shift"], r["method"])
  for a, b in zip(sorted(loop, key=key), sorted(vm, key=key)):
    assert key(a) == key(b) and a["image_auroc"] == b["image_auroc"], key(a)
    assert abs(a["pixel_auroc"] - b["pixel_auroc"]) < 0.05, key(a)
    assert a.get("steps") == b.get("steps") and a.get("n_adapt_train") == b.get("n_adapt_train")
    assert a.get("bn_stats_used") == b.get("bn_stats_used"), key(a)
    assert a["centre_prior"] == b["centre_prior"], key(a)
    if "stem_log_var_ratio" in a:
      assert abs(a["stem_log_var_ratio"] - b["stem_log_var_ratio"]) < 1e-4


def test_stack_problem_names_why_categories_adapt_one_by_one():
  """What `adapt.vmap_classes` checks before stacking (the experiment then adapts one by one)."""
  from experiments import tta
  from rodajax import adapt
  cfg = base_config().adapt
  cfg.batch_images, cfg.bank_patches = 2, 64
  roda, kl = adapt.Settings(method="roda", bank_patches=64), adapt.Settings(method="kl")
  assert "bank_patches to at most 38" in tta.stack_problem(roda, cfg, [38, 51], [6, 7])
  assert tta.stack_problem(kl, cfg, [38, 51], [6, 7]) is None      # no bank subsets
  assert tta.stack_problem(roda, cfg, [80, 80], [6, 7]) is None
  # 3 images -> 1 held out -> 2 to train; with 6 -> 2 held out -> 4: batch 4 does not fit both.
  cfg.batch_images = 4
  assert "at least adapt.batch_images=4" in tta.stack_problem(roda, cfg, [80, 80], [3, 6])
  assert tta.stack_problem(roda, cfg, [80, 80], [6, 6]) is None
