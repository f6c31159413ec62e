"""One error path for every command: a user mistake is one or two lines and exit 2;
nothing computed is lost (damaged files set aside, complete workdirs left as they are)."""
import json
import os
import pickle
import stat
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from helpers import write_mvtec
from experiments import adapt as adapt_cmd
from experiments import cli, fit, predict, roda, uda
from rodajax import backbones, report
from test_tool import MVTEC, flags, read_csv, run

COMMANDS = [roda, uda, fit, adapt_cmd, predict]


def assert_user_error(code, err, *needles):
  assert code == 2, err
  assert "Traceback" not in err
  lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1, err
  for n in needles:
    assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def widget(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  write_mvtec(root, n_train=6, n_good=3, n_bad=3, size=64)
  return str(root)


@pytest.fixture(scope="module")
def model(widget, tmp_path_factory):
  d = tmp_path_factory.mktemp("m") / "model"
  code = 0
  try:
    cli.run(fit.main, ["--config", MVTEC, *flags({"data.root": widget,
                                                  "data.categories": "widget"}),
                       "--model", str(d)])
  except SystemExit as e:
    code = e.code
  assert code == 0
  return d


@pytest.mark.parametrize("argv,needles", [
    (["--config.adapt.metods=roda"], ["--config.adapt.metods", "did you mean --config.adapt.methods"]),
    (["--config.lr=0.1"], ["did you mean --config.adapt.lr"]),
    (["--config.adapt.lr=fast"], ["--config.adapt.lr='fast'", "expects a number"]),
    (["--config.adapt.lr=nan"], ["finite"]),
    (["--config.adapt.epochs=1.5"], ["expects an integer"]),
    (["--config.adapt.safeguard=maybe"], ["true or false"]),
    (["--config.adapt=1"], ["is a block"]),
    (["--config", "configs/nope.py"], ["configs/nope.py", "not found"]),
    (["--wrkdir=x"], ["did you mean --workdir"]),
    (["stray"], ["unexpected argument 'stray'"]),
    (["--config.shift.corruptions=fog"], ["unknown corruption 'fog'"]),
    (["--config.adapt.methods=tent"], ["unknown adaptation method 'tent'"]),
])
def test_config_mistakes_are_one_line_and_exit_2(argv, needles, capsys):
  assert_user_error(*run(roda, argv, capsys)[::2], *needles)


def test_data_mistakes_are_one_line_and_exit_2(widget, tmp_path, capsys):
  base = ["--config", MVTEC, "--config.data.resize=64", "--config.data.crop=64",
          "--config.shift.corruptions=clean", "--config.adapt.methods=none",
          "--config.shift.adapt_fraction=0.0", f"--workdir={tmp_path / 'w'}"]
  code, _, err = run(roda, base + ["--config.data.root=/no/such/root"], capsys)
  assert_user_error(code, err, "'/no/such/root' does not exist", "--config.data.root")
  code, _, err = run(roda, base + [f"--config.data.root={widget}",
                                   "--config.data.categories=gadget"], capsys)
  assert_user_error(code, err, "'gadget' not found", "widget")
  # Wrong layout: images straight in the category folder, no train/good.
  (tmp_path / "flat" / "thing").mkdir(parents=True)
  code, _, err = run(roda, base + [f"--config.data.root={tmp_path / 'flat'}",
                                   "--config.data.categories=thing"], capsys)
  assert_user_error(code, err, "no thing/train/good")
  # An unreadable training image is named.
  bad = tmp_path / "bad"
  write_mvtec(bad, n_train=3, size=64)
  (bad / "widget" / "train" / "good" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  code, _, err = run(roda, base + [f"--config.data.root={bad}", "--config.data.categories=widget"],
                     capsys)
  assert_user_error(code, err, "001.png", "cannot read image")


def test_help_lists_config_keys_with_defaults_and_meanings_and_exits_0(capsys):
  code, out, _ = run(roda, ["--help"], capsys)
  assert code == 0
  assert "--workdir" in out
  assert "adapt.lr = 0.003  # Adam on BN scale/bias" in out
  # A comment continued on the next line is joined.
  assert ("adapt.bn_mode = 'routed'  # BN statistics while adapting and testing: source |"
          in out)
  assert "fit.quantile = 0.99" in out
  code, out, _ = run(adapt_cmd, ["-h"], capsys)
  assert code == 0 and "--normals" in out and "adapt.epsilon = 0.02" in out
  assert "data.root" not in out          # adapt takes only adapt.* overrides
  code, out, _ = run(predict, ["--help"], capsys)
  assert code == 0 and "--model" in out and "(required)" in out


def test_help_needs_no_jax_and_works_as_a_process():
  out = subprocess.run([sys.executable, "-m", "experiments.fit", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and "fit.calibration_fraction" in out.stdout
  code = ("import sys\nfrom experiments import cli, fit\ntry:\n  cli.run(fit.main, ['--help'])\n"
          "except SystemExit as e:\n  assert e.code == 0\nprint('jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]


def test_tool_mistakes_are_one_line_and_exit_2(model, widget, tmp_path, capsys):
  good = os.path.join(widget, "widget", "test", "good")
  cases = [
      (predict, ["--images", good, "--out", tmp_path / "o"], ["missing --model"]),
      (predict, ["--model", tmp_path / "nomodel", "--images", good, "--out", tmp_path / "o"],
       ["does not exist", "experiments.fit"]),
      (predict, ["--model", widget, "--images", good, "--out", tmp_path / "o"],
       ["not a model directory"]),
      (predict, ["--model", model, "--images", tmp_path / "nothing", "--out", tmp_path / "o"],
       ["no folder or file"]),
      (predict, ["--model", model, "--images", good, "--out", tmp_path / "o", "--batch", "0"],
       ["--batch"]),
      (adapt_cmd, ["--model", model, "--images", good, "--out", tmp_path / "a",
                   "--config.data.crop=32"], ["only --config.adapt.*"]),
      (adapt_cmd, ["--model", model, "--images", good, "--out", tmp_path / "a",
                   "--config.adapt.lr=x"], ["expects a number"]),
      (adapt_cmd, ["--model", model, "--images", good, "--out", tmp_path / "a",
                   "--method", "tent"], ["unknown adaptation method"]),
      (fit, ["--config", MVTEC, f"--config.data.root={widget}", "--config.data.categories=a,b",
             "--model", tmp_path / "m2"], ["one model per category"]),
  ]
  (tmp_path / "empty").mkdir()
  cases.append((predict, ["--model", model, "--images", tmp_path / "empty", "--out",
                          tmp_path / "o"], ["no images"]))
  for module, argv, needles in cases:
    assert_user_error(*run(module, argv, capsys)[::2], *needles)


def test_predict_reports_unreadable_images_and_scores_the_rest(model, widget, tmp_path, capsys):
  imgs = tmp_path / "imgs"
  imgs.mkdir()
  src = os.path.join(widget, "widget", "test", "good")
  for f in sorted(os.listdir(src)):
    os.symlink(os.path.join(src, f), imgs / f)
  (imgs / "zero.png").write_bytes(b"")
  (imgs / "junk.jpg").write_bytes(os.urandom(500))
  code, out, err = run(predict, ["--model", model, "--images", imgs, "--out", tmp_path / "o"],
                       capsys)
  assert code == 0, err
  assert "2 of 5 images could not be read" in err and "Traceback" not in err
  rows = read_csv(tmp_path / "o" / "predictions.csv")
  assert [os.path.basename(r["path"]) for r in rows] == sorted(os.listdir(src))
  errors = read_csv(tmp_path / "o" / "errors.csv")
  assert {os.path.basename(e["path"]) for e in errors} == {"zero.png", "junk.jpg"}
  # Nothing readable at all: exit 2.
  only = tmp_path / "only"
  only.mkdir()
  (only / "zero.png").write_bytes(b"")
  assert_user_error(*run(predict, ["--model", model, "--images", only, "--out",
                                   tmp_path / "o2"], capsys)[::2], "none of the 1 images")


def test_a_damaged_model_is_named(model, widget, tmp_path, capsys):
  import shutil
  good = os.path.join(widget, "widget", "test", "good")
  for damage, needle in (("manifest", "model.json is damaged"), ("arrays", "checkpoint")):
    d = tmp_path / damage
    shutil.copytree(model, d)
    if damage == "manifest":
      (d / "model.json").write_text("{ not json")
    else:   # flip bytes in the largest array file
      files = [os.path.join(r, f) for r, _, fs in os.walk(d / "checkpoint") for f in fs]
      big = max(files, key=os.path.getsize)
      b = bytearray(open(big, "rb").read())
      b[len(b) // 2: len(b) // 2 + 64] = bytes(64)
      open(big, "wb").write(bytes(b))
    code, _, err = run(predict, ["--model", d, "--images", good, "--out", tmp_path / f"o{damage}"],
                       capsys)
    assert_user_error(code, err, needle, "again")


def _malicious_pth(path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))
  with open(path, "wb") as f:
    pickle.dump({"conv.weight": Evil()}, f, protocol=2)


def test_untrusted_and_non_finite_weights_are_named(widget, tmp_path, capsys):
  evil = tmp_path / "evil.pth"
  _malicious_pth(evil)
  argv = ["--config", MVTEC, *flags({"data.root": widget, "data.categories": "widget"})]
  code, out, err = run(fit, argv + [f"--config.model.weights={evil}", "--model", tmp_path / "m"],
                       capsys)
  assert_user_error(code, err, str(evil), "refusing to unpickle")
  assert "pwned" not in out
  # Weights with a NaN: the features are NaN, and the error names the weights.
  _, variables = backbones.create("efficientnet_lite0", None)
  sd = backbones.flax_to_torch(variables)
  key = next(k for k in sd if k.endswith("bn0.weight") or k.endswith("_bn0.weight"))
  sd[key] = np.full_like(sd[key], np.nan)
  np.savez(tmp_path / "nan.npz", **sd)
  code, _, err = run(fit, argv + [f"--config.model.weights={tmp_path / 'nan.npz'}",
                                  "--model", tmp_path / "m2"], capsys)
  assert_user_error(code, err, "NaN/inf features", "nan.npz")


def _tiny_run(widget, work):
  return ["--config", MVTEC, *flags({"data.root": widget, "data.categories": "widget",
                                     "shift.corruptions": "clean", "adapt.methods": "none",
                                     "shift.adapt_fraction": 0.0}), f"--workdir={work}"]


def test_a_corrupt_results_json_is_set_aside_and_recomputed(widget, tmp_path, capsys):
  work = tmp_path / "w"
  work.mkdir()
  (work / "results.json").write_text('[{"dataset": "mvtec", "categ')
  code, out, err = run(roda, _tiny_run(widget, work), capsys)
  assert code == 0, err
  assert "not valid JSON" in err and "results.json.corrupt-0" in err
  assert (work / "results.json.corrupt-0").read_text() == '[{"dataset": "mvtec", "categ'
  assert len(json.load(open(work / "results.json"))) == 1
  last = out.strip().splitlines()[-1]
  assert last.startswith(f"results: {work / 'results.json'}") and "1 computed" in last
  assert "moved to" in last


def test_a_complete_workdir_is_reported_not_rewritten(widget, tmp_path, capsys, monkeypatch):
  work = tmp_path / "w"
  assert run(roda, _tiny_run(widget, work), capsys)[0] == 0
  mode = report.file_mode()
  for f in ("results.json", "results.md", "config.json"):
    assert stat.S_IMODE(os.stat(work / f).st_mode) == mode
  before = {f: (os.stat(work / f).st_mtime_ns, (work / f).read_bytes())
            for f in os.listdir(work) if os.path.isfile(work / f)}
  os.chmod(work, 0o555)   # read-only (root ignores it: the check below does not rely on it)
  try:
    code, out, err = run(roda, _tiny_run(widget, work), capsys)
  finally:
    os.chmod(work, 0o755)
  assert code == 0, err
  assert "all 1 records were already in" in out.strip().splitlines()[-1]
  after = {f: (os.stat(work / f).st_mtime_ns, (work / f).read_bytes())
           for f in os.listdir(work) if os.path.isfile(work / f)}
  assert after == before
  # More to compute in a read-only workdir: said before any work, exit 2.
  monkeypatch.setattr(os, "access", lambda p, m: m != os.W_OK)
  argv = _tiny_run(widget, work) + ["--config.shift.corruptions=clean,contrast",
                                    "--config.adapt.methods=none"]
  assert_user_error(*run(roda, argv, capsys)[::2], "read-only", "1 of 2 records")


def test_files_respect_the_umask(widget, tmp_path, capsys):
  old = os.umask(0o077)
  try:
    assert run(roda, _tiny_run(widget, tmp_path / "w"), capsys)[0] == 0
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(tmp_path / "w" / "results.json").st_mode) == 0o600


def test_a_damaged_memory_bank_is_set_aside_and_refitted(widget, tmp_path, capsys):
  work = tmp_path / "w"
  assert run(roda, _tiny_run(widget, work), capsys)[0] == 0
  (bank,) = os.listdir(work / "banks")
  for r, _, fs in os.walk(work / "banks" / bank):
    for f in fs:
      open(os.path.join(r, f), "wb").close()    # every file emptied
  os.remove(work / "results.json")
  code, out, err = run(roda, _tiny_run(widget, work), capsys)
  assert code == 0, err
  assert "is damaged" in err and f"{bank}.corrupt-0" in err
  assert "memory banks: 0 reused, 1 fitted" in out.strip().splitlines()[-1]
  assert sorted(os.listdir(work / "banks")) == [bank, f"{bank}.corrupt-0"]


def test_every_command_uses_the_one_error_path():
  for module in COMMANDS:
    src = open(module.__file__).read()
    assert "cli.run(main)" in src and "app.run" not in src, module.__name__


def test_fit_sets_a_damaged_model_aside_and_fits_again(model, widget, tmp_path, capsys):
  import shutil
  d = tmp_path / "model"
  shutil.copytree(model, d)
  (d / "model.json").write_text("{ truncated")
  argv = ["--config", MVTEC, *flags({"data.root": widget, "data.categories": "widget"}),
          "--model", d]
  code, out, err = run(fit, argv, capsys)
  assert code == 0, err
  assert "damaged" in err and "model.corrupt-0" in err
  assert (tmp_path / "model.corrupt-0" / "model.json").read_text() == "{ truncated"
  assert json.load(open(d / "model.json"))["content_sha256"] == \
      json.load(open(model / "model.json"))["content_sha256"]     # deterministic refit
  # Another config into the same directory: refused unless --overwrite, which keeps the old.
  code, _, err = run(fit, argv + ["--config.fit.quantile=0.9"], capsys)
  assert_user_error(code, err, "another config", "--overwrite=true")
  code, _, err = run(fit, argv + ["--config.fit.quantile=0.9", "--overwrite=true"], capsys)
  assert code == 0, err
  assert (tmp_path / "model.previous-0" / "model.json").exists()
  assert json.load(open(d / "model.json"))["threshold"]["quantile"] == 0.9


def test_config_changes_name_every_differing_key():
  from experiments import workdir
  old = '{"a": 1, "b": {"c": 2, "e": "x"}}'
  new = '{"a": 1, "b": {"c": 3, "e": "x"}, "d": [4]}'
  assert workdir.config_changes(old, new) == ["b.c: 2 -> 3", "d: '(absent)' -> [4]"]
  assert workdir.config_changes(new, new) == []


def test_predict_notes_overexposed_images(model, widget, tmp_path, capsys):
  from PIL import Image
  imgs = tmp_path / "imgs"
  imgs.mkdir()
  src = os.path.join(widget, "widget", "test", "good")
  first = sorted(os.listdir(src))[0]
  x = np.asarray(Image.open(os.path.join(src, first)).convert("RGB")).copy()
  Image.fromarray(x).save(imgs / "a_as_taken.png")
  x[: x.shape[0] // 2] = 255       # the top half clipped white: half of the centre crop
  Image.fromarray(x).save(imgs / "b_overexposed.png")
  code, out, err = run(predict, ["--model", model, "--images", imgs, "--out", tmp_path / "o",
                                 "--maps", "none"], capsys)
  assert code == 0, err
  notes = {os.path.basename(r["path"]): r["note"] for r in read_csv(tmp_path / "o" / "predictions.csv")}
  assert notes == {"a_as_taken.png": "", "b_overexposed.png": predict.OVEREXPOSED_NOTE}
  summary = json.load(open(tmp_path / "o" / "summary.json"))
  assert summary["n_overexposed"] == 1 and summary["conversions"] == {}
  assert "1 of 2 images are overexposed" in err
