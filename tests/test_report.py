"""rodajax.report: the results.md pivots average the seeds they hold."""
from rodajax import report


def _rec(method, shift, seed, auc):
  return {"method": method, "shift": shift, "seed": seed, "image_auroc": auc}


def test_pivot_averages_the_records_of_a_cell():
  # none/noise: seeds 60 and 70 -> 65 ± 5 (population std); none/contrast: one seed, 40.
  # roda/noise: 80, 90, 100 -> 90 ± 8.16; roda/contrast missing its metric -> "–".
  recs = [_rec("none", "noise", 0, 60.0), _rec("none", "noise", 1, 70.0),
          _rec("none", "contrast", 0, 40.0),
          _rec("roda", "noise", 0, 80.0), _rec("roda", "noise", 1, 90.0),
          _rec("roda", "noise", 2, 100.0), _rec("roda", "contrast", 0, None)]
  lines = report.pivot(recs, "method", "shift", "image_auroc").splitlines()
  assert lines[0] == "| method \\ shift | noise | contrast | mean |"
  # The row mean is the mean of the cell means ((65 + 40) / 2), not of the records.
  assert lines[2] == "| none | 65.00 ± 5.00 (n=2) | 40.00 | 52.50 |"
  assert lines[3] == "| roda | 90.00 ± 8.16 (n=3) | – | 90.00 |"


def test_summary_markdown_is_not_the_last_seed():
  recs = [dict(_rec("none", "noise", s, v), dataset="d", category="c", severity=5,
               adapt_fraction=0.2) for s, v in ((0, 50.0), (1, 54.0))]
  md = report.summary_markdown(recs)
  assert "| none | 52.00 ± 2.00 (n=2) | 52.00 |" in md


def test_severity_curves_average_seeds_and_start_at_clean():
  # bottle: clean 100 / 98 (seeds 0, 1) -> severity 0 of every shift curve; noise severity 1:
  # 90 and 80 -> 85 ± 5 (n=2); severity 3: 70 (n=1). The wrong fraction is left out.
  recs = [dict(_rec("none", "clean", 0, 100.0), category="bottle", severity=0, adapt_fraction=0.2),
          dict(_rec("none", "clean", 1, 98.0), category="bottle", severity=0, adapt_fraction=0.2),
          dict(_rec("none", "noise", 0, 90.0), category="bottle", severity=1, adapt_fraction=0.2),
          dict(_rec("none", "noise", 1, 80.0), category="bottle", severity=1, adapt_fraction=0.2),
          dict(_rec("none", "noise", 0, 70.0), category="bottle", severity=3, adapt_fraction=0.2),
          dict(_rec("none", "noise", 0, 10.0), category="bottle", severity=3, adapt_fraction=0.5),
          dict(_rec("roda", "blur", 0, 60.0), category="bottle", severity=2, adapt_fraction=0.2)]
  curves = report.severity_curves(recs)
  assert list(curves) == [("bottle", "noise"), ("bottle", "blur")]
  assert curves[("bottle", "noise")] == {
      "none": [(0, 99.0, 1.0, 2), (1, 85.0, 5.0, 2), (3, 70.0, 0.0, 1)]}
  # roda has no clean record; its blur curve is its one point. none has no blur point: no curve.
  assert curves[("bottle", "blur")] == {"roda": [(2, 60.0, 0.0, 1)]}


def test_plot_severity_writes_a_png(tmp_path):
  recs = [dict(_rec(m, "noise", s, 50.0 + s + sev), category="c", severity=sev, adapt_fraction=0.2)
          for m in ("none", "roda") for s in (0, 1) for sev in (1, 2)]
  out = report.plot_severity(recs, str(tmp_path / "f" / "severity.png"))
  assert out and (tmp_path / "f" / "severity.png").read_bytes()[:4] == b"\x89PNG"
  # A single severity is no curve: nothing is written.
  assert report.plot_severity([r for r in recs if r["severity"] == 1], str(tmp_path / "g.png")) is None


def test_figure_picks_largest_defects_first_then_normals_without_scores():
  import numpy as np
  labels = np.array([0, 1, 1, 0, 1, 0, 1])
  masks = np.zeros((7, 4, 4), bool)
  masks[1, :1, :1] = True        # area 1
  masks[2, :2, :2] = True        # area 4
  masks[4, :3, :3] = True        # area 9
  masks[6, :2, :1] = True        # area 2
  # by area 4 (9), 2 (4), 6 (2), then normals 0, 3 in order
  assert report.figure_picks(labels, masks, n_anomalous=3, n_normal=2).tolist() == [4, 2, 6, 0, 3]
  # Without masks: the first anomalous ones; fewer images than asked for is no error.
  assert report.figure_picks(labels, None, n_anomalous=2, n_normal=5).tolist() == [1, 2, 0, 3, 5]
  assert report.figure_picks(np.zeros(2, int), None).tolist() == [0, 1]


def test_save_method_figure_writes_one_row_per_method_and_the_roc(tmp_path):
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(0)
  labels = np.array([1, 1, 0, 0, 0])
  images = rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
  masks = np.zeros((3, 32, 32), bool)
  masks[0, 8:16, 8:16] = True
  by = {m: (rng.normal(size=5), rng.random((3, 32, 32))) for m in ("none", "bn_stats", "roda")}
  pick = np.array([0, 1, 3])
  files = report.save_method_figure(str(tmp_path / "f" / "x"), images, labels, pick, by, masks,
                                    "t")
  assert [f.rsplit("/", 1)[1] for f in files] == ["x_methods.png", "x_methods_roc.png"]
  two = report.save_method_figure(str(tmp_path / "g"), images, labels, pick,
                                  {m: by[m] for m in ("none", "roda")}, None)
  h3, h2 = (Image.open(f).size[1] for f in (files[0], two[0]))
  # an image row plus a row per method: 4 rows against 3
  assert abs(h3 / h2 - 4 / 3) < 0.05
  assert not list((tmp_path / "f").glob("*.tmp.png"))
  # One class only: maps, no ROC.
  assert len(report.save_method_figure(str(tmp_path / "h"), images, np.zeros(5, int), pick,
                                       by)) == 1
