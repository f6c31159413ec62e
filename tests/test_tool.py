"""fit -> adapt -> predict: the saved model predicts what the experiment measures."""
import csv
import json
import os
import shutil
import stat

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import ROOT
from helpers import write_mvtec
from experiments import adapt as adapt_cmd
from experiments import cli, fit, loops, predict, shift_folder, train
from configs import elpv as elpv_config
from configs import mvtec as mvtec_config
from rodajax import patchcore, report

MVTEC = os.path.join(ROOT, "configs", "mvtec.py")
ELPV = os.path.join(ROOT, "configs", "elpv.py")


def run(module, argv, capsys):
  """Runs a command in-process; returns (exit code, stdout, stderr)."""
  code = 0
  try:
    cli.run(module.main, [str(a) for a in argv])
  except SystemExit as e:
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


TINY = {"data.resize": 64, "data.crop": 64, "batch_size": 4, "figures": False,
        "adapt.batch_images": 2, "adapt.target_patches": 64, "adapt.bank_patches": 64}


def flags(extra=None):
  return [f"--config.{k}={v}" for k, v in {**TINY, **(extra or {})}.items()]


def config_of(base, extra):
  c = base.get_config()
  cli.apply_overrides(c, {k: str(v) for k, v in {**TINY, **extra}.items()})
  return c


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def widget(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  write_mvtec(root, n_train=10, n_good=8, n_bad=8, size=64)
  return str(root)


def test_fit_predict_equals_the_experiment_on_an_mvtec_folder(widget, tmp_path, capsys):
  extra = {"data.root": widget, "data.categories": "widget", "shift.corruptions": "clean",
           "adapt.methods": "none", "shift.adapt_fraction": 0.0}
  model = tmp_path / "model"
  code, out, err = run(fit, ["--config", MVTEC, *flags(extra), "--model", model], capsys)
  assert code == 0, err
  assert out.strip().splitlines()[-1].startswith(f"model: {model}")
  manifest = json.load(open(model / "model.json"))
  assert manifest["kind"] == "source" and manifest["n_train"] == 10
  assert manifest["fit"]["n_calibration"] == 2                  # 20% of 10
  assert len(manifest["weights_sha256"]) == 64
  # Threshold: the largest of 2 held-out normal scores (k = ceil(3 * 0.99) > 2).
  assert manifest["threshold"]["value"] == max(manifest["fit"]["calibration_scores"])

  test_dir = os.path.join(widget, "widget", "test")
  out_dir = tmp_path / "pred"
  code, out, err = run(predict, ["--model", model, "--images", test_dir, "--out", out_dir,
                                 "--labels", "folders"], capsys)
  assert code == 0, err
  last = out.strip().splitlines()[-1]
  assert str(out_dir / "predictions.csv") in last and "16 images" in last
  rows = read_csv(out_dir / "predictions.csv")
  assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
  assert all(r["path"].startswith(test_dir) for r in rows) and len(rows) == 16
  assert {"path", "score", "anomalous"} <= set(rows[0])
  thr = manifest["threshold"]["value"]
  for r in rows:
    assert r["anomalous"] == str(int(float(r["score"]) > thr))
    assert os.path.isfile(out_dir / r["map"])
    assert (float(r["normalized_score"]) > 0.5) == (r["anomalous"] == "1")

  # The experiment on the same images and config.
  work = tmp_path / "work"
  config = config_of(mvtec_config, extra)
  rec = train.train_and_evaluate(config, str(work))[0]
  module, variables, extract = train.build_model(config)
  ds = train.data.load(config.data, "widget")
  bank, v = train.fit_or_restore(config, str(work), ds, module, variables, extract, {})
  step = patchcore.make_predict(extract, 64, config.scoring.sigma, config.scoring.chunk, 0)
  scores = loops.predict(step, v, ds.test.images, bank.bank, 4)[0]
  by_path = {r["path"]: float(r["score"]) for r in rows}
  np.testing.assert_allclose([by_path[p] for p in ds.test.names], scores, rtol=1e-6)
  labels = [int(os.path.basename(os.path.dirname(r["path"])) != "good") for r in rows]
  auroc = roc_auc_score(labels, [float(r["score"]) for r in rows]) * 100
  assert auroc == rec["image_auroc"]
  summary = json.load(open(out_dir / "summary.json"))
  assert summary["evaluation"]["image_auroc"] == rec["image_auroc"]
  assert summary["n_anomalous"] == sum(r["anomalous"] == "1" for r in rows)

  # Files are created with the umask's mode (0644 under umask 022), maps are PNGs.
  mode = report.file_mode()
  for f in ("predictions.csv", "summary.json"):
    assert stat.S_IMODE(os.stat(out_dir / f).st_mode) == mode
  assert stat.S_IMODE(os.stat(model / "model.json").st_mode) == mode

  # A rerun reuses everything; an interrupted run resumes from its partial rows.
  code, out, _ = run(predict, ["--model", model, "--images", test_dir, "--out", out_dir,
                               "--labels", "folders"], capsys)
  assert code == 0 and "reused, nothing recomputed" in out
  code, out, _ = run(fit, ["--config", MVTEC, *flags(extra), "--model", model], capsys)
  assert code == 0 and "reused, nothing recomputed" in out
  first = (out_dir / "predictions.csv").read_text()
  (out_dir / "summary.json").unlink()
  (out_dir / "predictions.csv").unlink()
  part = "".join(first.splitlines(keepends=True)[:6])          # header + 5 rows
  (out_dir / predict.PARTIAL).write_text(part + "/half/a/row,1.0")   # a torn last line
  (out_dir / predict.PARTIAL_META).write_text(json.dumps(
      {"model_content_sha256": manifest["content_sha256"]}))
  code, out, _ = run(predict, ["--model", model, "--images", test_dir, "--out", out_dir,
                               "--labels", "folders"], capsys)
  assert code == 0 and "5 reused from an interrupted run" in out
  assert (out_dir / "predictions.csv").read_text() == first
  assert not (out_dir / predict.PARTIAL).exists()


def test_adapt_then_predict_equals_the_experiments_roda_record(widget, tmp_path, capsys):
  extra = {"data.root": widget, "data.categories": "widget", "shift.corruptions": "contrast",
           "shift.severities": "5", "adapt.methods": "none,roda", "shift.adapt_fraction": 0.5}
  line = tmp_path / "line"
  code, out, err = run(shift_folder, ["--config", MVTEC, *flags(extra), "--out", line,
                                      "--shift", "contrast", "--severity", 5], capsys)
  assert code == 0, err
  assert len(os.listdir(line / "adapt")) == 8
  model, adapted = tmp_path / "model", tmp_path / "adapted"
  assert run(fit, ["--config", MVTEC, *flags(extra), "--model", model], capsys)[0] == 0
  code, out, err = run(adapt_cmd, ["--model", model, "--images", line / "adapt", "--out",
                                   adapted], capsys)
  assert code == 0, err
  last_line = out.strip().splitlines()[-1]
  assert last_line.startswith(f"adapted model: {adapted}")
  m = json.load(open(adapted / "model.json"))
  assert m["kind"] == "adapted" and m["base"] == str(model)
  assert m["threshold"] == json.load(open(model / "model.json"))["threshold"]   # kept: default
  # Only BatchNorm leaves are stored: the checkpoint is small next to the base's.
  size = lambda d: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
  assert size(adapted / "checkpoint") < size(model / "checkpoint") / 5

  aurocs = {}
  for name, d in (("none", model), ("roda", adapted)):
    code, out, err = run(predict, ["--model", d, "--images", line / "test", "--out",
                                   tmp_path / f"p_{name}", "--maps", "none", "--labels",
                                   line / "labels.csv"], capsys)
    assert code == 0, err
    aurocs[name] = json.load(open(tmp_path / f"p_{name}" / "summary.json"))["evaluation"][
        "image_auroc"]

  recs = train.train_and_evaluate(config_of(mvtec_config, extra), str(tmp_path / "work"))
  by = {r["method"]: r for r in recs if r["shift"] == "contrast"}
  assert aurocs["none"] == by["none"]["image_auroc"]
  assert aurocs["roda"] == by["roda"]["image_auroc"]
  # The same gate: the fit's held-out normals give the experiment's reference, to the bit.
  tool_gate, exp_gate = m["adapted"]["gate"], by["roda"]["gate"]
  assert tool_gate["reference"] == exp_gate["reference"]
  assert tool_gate["shifted"] == exp_gate["shifted"]
  assert tool_gate["ratio"] == pytest.approx(exp_gate["ratio"], rel=1e-5)
  # The same statistics, routed by the same stem ratio, named in the tool's last line.
  assert m["adapted"]["bn_mode"] == by["roda"]["bn_stats_used"] == "target_stats"
  assert m["adapted"]["stem_log_var_ratio"] == pytest.approx(
      by["roda"]["stem_log_var_ratio"], rel=1e-5)
  assert m["adapted"]["stem_log_var_ratio"] <= m["adapted"]["noise_ratio"] == 1.2
  assert ("target_stats BatchNorm statistics (routed: stem log variance ratio "
          f"{m['adapted']['stem_log_var_ratio']:.2f} <= 1.2)") in last_line


def test_fit_adapt_predict_equals_the_experiment_on_elpv(tmp_path, capsys):
  """The bundled ELPV data through the tool. bn_stats, not roda: the roda path through the tool
  is compared with the experiment above, and its step is the suite's costliest compilation."""
  extra = {"data.categories": "mono", "data.max_train": 16, "data.max_test_normal": 10,
           "data.max_test_anomalous": 10, "shift.corruptions": "brightness",
           "shift.severities": "3", "adapt.methods": "none,bn_stats", "shift.adapt_fraction": 0.2}
  line, model, adapted = tmp_path / "line", tmp_path / "model", tmp_path / "adapted"
  assert run(shift_folder, ["--config", ELPV, *flags(extra), "--out", line, "--shift",
                            "brightness", "--severity", 3], capsys)[0] == 0
  code, _, err = run(fit, ["--config", ELPV, *flags(extra), "--model", model], capsys)
  assert code == 0, err
  code, _, err = run(adapt_cmd, ["--model", model, "--images", line / "adapt", "--out",
                                 adapted, "--method", "bn_stats"], capsys)
  assert code == 0, err
  got = {}
  for name, d in (("none", model), ("bn_stats", adapted)):
    code, _, err = run(predict, ["--model", d, "--images", line / "test", "--out",
                                 tmp_path / name, "--labels", line / "labels.csv"], capsys)
    assert code == 0, err
    got[name] = json.load(open(tmp_path / name / "summary.json"))
  recs = train.train_and_evaluate(config_of(elpv_config, extra), str(tmp_path / "work"))
  by = {r["method"]: r for r in recs}
  assert by["bn_stats"]["image_auroc"] != by["none"]["image_auroc"]   # the statistics moved
  for name in ("none", "bn_stats"):
    assert got[name]["n_scored"] == by[name]["n_test"] == 16
    assert got[name]["evaluation"]["image_auroc"] == by[name]["image_auroc"]


def test_predict_refuses_a_model_that_gives_nan(widget, tmp_path, capsys):
  from experiments import modeldir
  from rodajax import adapt
  model = tmp_path / "model"
  assert run(fit, ["--config", MVTEC, *flags({"data.root": widget, "data.categories": "widget"}),
                   "--model", model], capsys)[0] == 0
  m = modeldir.load(str(model))
  bn = {k: np.full_like(v, np.nan) for k, v in adapt.split_bn(m.variables["params"])[0].items()}
  broken = {"params": adapt.with_bn(m.variables["params"], bn),
            "batch_stats": m.variables["batch_stats"]}
  modeldir.save_adapted(str(tmp_path / "broken"), m, broken, {"method": "test"})
  code, _, err = run(predict, ["--model", tmp_path / "broken", "--images", widget, "--out",
                               tmp_path / "p"], capsys)
  assert code == 2 and "NaN/inf scores" in err and "Traceback" not in err


def test_adapt_recalibrates_the_threshold_on_given_normals(widget, tmp_path, capsys):
  extra = {"data.root": widget, "data.categories": "widget"}
  model, adapted = tmp_path / "model", tmp_path / "adapted"
  assert run(fit, ["--config", MVTEC, *flags(extra), "--model", model], capsys)[0] == 0
  good = os.path.join(widget, "widget", "test", "good")
  code, out, err = run(adapt_cmd, ["--model", model, "--images", good, "--out", adapted,
                                   "--normals", good, "--method", "bn_stats"], capsys)
  assert code == 0, err
  m = json.load(open(adapted / "model.json"))
  assert "recalibrated" in m["threshold"]["rule"] and m["threshold"]["n"] == 8
  # 8 normal scores, q = 0.99 -> the largest: no normal image of the folder is flagged.
  code, _, _ = run(predict, ["--model", adapted, "--images", good, "--out", tmp_path / "p",
                             "--maps", "none"], capsys)
  assert code == 0
  assert all(r["anomalous"] == "0" for r in read_csv(tmp_path / "p" / "predictions.csv"))


def test_adapt_transfers_the_threshold_without_labels(widget, tmp_path, capsys):
  from rodajax import calibration
  extra = {"data.root": widget, "data.categories": "widget"}
  model, adapted = tmp_path / "model", tmp_path / "adapted"
  assert run(fit, ["--config", MVTEC, *flags(extra), "--model", model], capsys)[0] == 0
  good = os.path.join(widget, "widget", "test", "good")
  for bad, says in ((["--threshold", "median"], "use keep or transfer"),
                    (["--threshold", "transfer", "--anomaly_share", "0.6"], "--anomaly_share")):
    code, _, err = run(adapt_cmd, ["--model", model, "--images", good, "--out", adapted,
                                   "--method", "bn_stats", *bad], capsys)
    assert code == 2 and says in err and "Traceback" not in err
  code, out, err = run(adapt_cmd, ["--model", model, "--images", good, "--out", adapted,
                                   "--method", "bn_stats", "--threshold", "transfer",
                                   "--anomaly_share", "0"], capsys)
  assert code == 0, err
  assert "threshold transferred from" in out
  base, m = json.load(open(model / "model.json")), json.load(open(adapted / "model.json"))
  assert "transferred without labels" in m["threshold"]["rule"]
  # The adapted model's scores of the same images, mapped by the library's rule, give the
  # stored threshold and normalisation.
  assert run(predict, ["--model", adapted, "--images", good, "--out", tmp_path / "p",
                       "--maps", "none"], capsys)[0] == 0
  scores = np.array([float(r["score"]) for r in read_csv(tmp_path / "p" / "predictions.csv")])
  want = calibration.transfer_threshold(np.array(base["fit"]["calibration_scores"]), scores,
                                        base["threshold"]["value"], 0.0, "affine")
  assert m["threshold"]["value"] == pytest.approx(want["value"], rel=1e-5)
  assert m["normalisation"]["threshold"] == m["threshold"]["value"]
  assert m["normalisation"]["median"] == pytest.approx(
      want["a"] + want["b"] * base["normalisation"]["median"], rel=1e-5)
  # Fewer than MIN_TRANSFER images: the fitted threshold is kept, with a warning.
  few = tmp_path / "few"
  few.mkdir()
  for f in sorted(os.listdir(good))[:adapt_cmd.MIN_TRANSFER - 1]:
    shutil.copy(os.path.join(good, f), few / f)
  code, _, err = run(adapt_cmd, ["--model", model, "--images", few, "--out", tmp_path / "f",
                                 "--method", "bn_stats", "--threshold", "transfer"], capsys)
  assert code == 0 and "too few to transfer" in err
  assert json.load(open(tmp_path / "f" / "model.json"))["threshold"] == base["threshold"]


def test_the_adapt_line_says_which_statistics_routing_chose():
  # Poly under gaussian noise (docs/results.md: stem ratio 2.23 at seed 0) routes to geometric.
  noisy = {"bn_stats_used": "geometric", "stem_log_var_ratio": 2.2346, "noise_ratio": 1.2}
  assert adapt_cmd.statistics_note(noisy) == (
      "geometric BatchNorm statistics (routed: stem log variance ratio 2.23 > 1.2: added noise)")
  # A mode that does not route has no ratio to report.
  assert adapt_cmd.statistics_note({"bn_stats_used": "source"}) == "source BatchNorm statistics"
