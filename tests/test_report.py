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
