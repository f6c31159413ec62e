"""Results on disk: results.json (a list of records), results.md, figures.

Writes are atomic (a temporary file in the same folder, then `os.replace`), so
an interrupted run never leaves a half-written file, and a rerun can resume
from the records already there.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Sequence

import numpy as np

RECORD_KEYS = ("dataset", "category", "shift", "severity", "seed", "method", "image_auroc",
               "pixel_auroc", "aupro", "n_train", "n_test", "seconds")
IDENTITY = ("dataset", "category", "shift", "severity", "method", "variant", "adapt_fraction",
            "seed")


def file_mode() -> int:
  """The mode a new file gets from `open()`: 0o666 less the process umask (0644 by default)."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


def atomic_write(path: str, text: str | bytes) -> None:
  """Writes `path` whole or not at all (temporary file, then `os.replace`), mode per umask."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(text.encode() if isinstance(text, str) else text)
    os.chmod(tmp, file_mode())   # mkstemp creates 0600
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def _clean(x):
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return None if not math.isfinite(float(x)) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


def record_id(rec: dict) -> tuple:
  return tuple(rec.get(k) for k in IDENTITY)


class CorruptResults(ValueError):
  """results.json exists but is not a JSON list of records."""


def load_records(workdir: str) -> list[dict]:
  """The records of `workdir/results.json` ([] when absent); CorruptResults when unreadable."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return []
  try:
    with open(path, "rb") as f:
      records = json.loads(f.read().decode("utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise CorruptResults(f"{path} is not valid JSON ({e})") from e
  if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
    raise CorruptResults(f"{path} is JSON but not a list of records")
  return records


def set_aside(path: str, why: str = "corrupt") -> str:
  """Renames a file or folder to `<path>.<why>-<n>` (never overwriting); returns the new name."""
  n = 0
  while os.path.exists(f"{path}.{why}-{n}"):
    n += 1
  os.replace(path, f"{path}.{why}-{n}")
  return f"{path}.{why}-{n}"


def save_records(workdir: str, records: Sequence[dict], markdown=None) -> None:
  """results.json and results.md, both atomically.

  `markdown(records) -> str` renders results.md (default: the method x shift
  summaries and every record).
  """
  records = [_clean(r) for r in records]
  atomic_write(os.path.join(workdir, "results.json"), json.dumps(records, indent=1))
  md = (markdown(records) if markdown is not None else
        summary_markdown(records) + "\n## All records\n\n" + markdown_table(records))
  atomic_write(os.path.join(workdir, "results.md"), md)


def _fmt(v):
  if v is None:
    return "–"
  if isinstance(v, float):
    return f"{v:.2f}"
  return str(v)


def markdown_table(records: Sequence[dict], keys: Sequence[str] = RECORD_KEYS) -> str:
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  for r in records:
    lines.append("| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |")
  return "\n".join(lines) + "\n"


def pivot(records: Sequence[dict], row: str, col: str, value: str) -> str:
  """A markdown table with one row per `row` value and one column per `col` value.

  Records that share a cell (several seeds) are averaged: the cell reads
  "mean ± std (n=k)" (std over the records, ddof 0) where k > 1, the bare value
  where k = 1. The last column is the mean of the row's cell means.
  """
  rows = list(dict.fromkeys(r[row] for r in records))
  cols = list(dict.fromkeys(r[col] for r in records))
  cell: dict = {}
  for r in records:
    if r.get(value) is not None:
      cell.setdefault((r[row], r[col]), []).append(float(r[value]))

  def fmt(vals):
    if not vals:
      return "–"
    if len(vals) == 1:
      return _fmt(vals[0])
    return f"{np.mean(vals):.2f} ± {np.std(vals):.2f} (n={len(vals)})"

  lines = [f"| {row} \\ {col} | " + " | ".join(map(str, cols)) + " | mean |",
           "|" + "---|" * (len(cols) + 2)]
  for rv in rows:
    vals = [cell.get((rv, c), []) for c in cols]
    means = [float(np.mean(v)) for v in vals if v]
    mean = sum(means) / len(means) if means else None
    lines.append(f"| {rv} | " + " | ".join(fmt(v) for v in vals) + f" | {_fmt(mean)} |")
  return "\n".join(lines) + "\n"


def summary_markdown(records: Sequence[dict]) -> str:
  """Method x shift pivots of each metric, one block per (dataset, category, severity, fraction)."""
  groups: dict = {}
  for r in records:
    key = (r.get("dataset"), r.get("category"), r.get("severity"), r.get("adapt_fraction"))
    groups.setdefault(key, []).append(r)
  out = []
  for (ds, cat, sev, frac), recs in groups.items():
    for metric in ("image_auroc", "pixel_auroc", "aupro"):
      if all(r.get(metric) is None for r in recs):
        continue
      out.append(f"### {ds}/{cat}, severity {sev}, adaptation fraction {frac}: {metric}\n")
      out.append(pivot(recs, "method", "shift", metric))
  return "\n".join(out)


def severity_curves(records: Sequence[dict], metric: str = "image_auroc") -> dict:
  """Mean ± std over seeds of `metric` per severity: `{(category, shift): {method: [...]}}`.

  Each curve is a list of `(severity, mean, std, n)` sorted by severity (std with
  ddof 0 over the records of that point, n their number); a category's clean
  records enter every one of its shift curves at severity 0, so each panel
  starts at the unshifted score. Only the records of the first adaptation
  fraction are used; records without the metric are left out.
  """
  if records:
    frac = records[0].get("adapt_fraction")
    records = [r for r in records if r.get("adapt_fraction") == frac]
  records = [r for r in records if r.get(metric) is not None]
  panels = list(dict.fromkeys((r["category"], r["shift"]) for r in records if r["shift"] != "clean"))
  curves = {}
  for cat, shift in panels:
    by_method = {}
    for m in dict.fromkeys(r["method"] for r in records if r["category"] == cat):
      points = {}
      for r in records:
        if r["category"] == cat and r["method"] == m and r["shift"] in (shift, "clean"):
          sev = 0 if r["shift"] == "clean" else r["severity"]
          points.setdefault(sev, []).append(float(r[metric]))
      if any(s > 0 for s in points):
        by_method[m] = [(s, float(np.mean(v)), float(np.std(v)), len(v))
                        for s, v in sorted(points.items())]
    curves[(cat, shift)] = by_method
  return curves


def plot_severity(records: Sequence[dict], path: str, metric: str = "image_auroc") -> str | None:
  """Metric against severity (clean = 0), one line per method; PNG, a row of panels per category.

  Points are means over seeds with their std as error bars (`severity_curves`);
  the panel title gives the largest n per point.
  """
  curves = severity_curves(records, metric)
  sev = sorted({p[0] for c in curves.values() for pts in c.values() for p in pts})
  if len([s for s in sev if s > 0]) < 2:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cats = list(dict.fromkeys(c for c, _ in curves))
  shifts = list(dict.fromkeys(s for _, s in curves))
  fig, axes = plt.subplots(len(cats), len(shifts), figsize=(3.2 * len(shifts), 3.0 * len(cats)),
                           squeeze=False)
  for ax in axes.flat:
    ax.set_visible(False)
  for (cat, shift), by_method in curves.items():
    ax = axes[cats.index(cat), shifts.index(shift)]
    ax.set_visible(True)
    n = max((p[3] for pts in by_method.values() for p in pts), default=0)
    for m, pts in by_method.items():
      s, mean, std, _ = zip(*pts)
      ax.errorbar(s, mean, yerr=std, marker="o", capsize=2, label=m)
    ax.set_title(f"{cat}: {shift} (n <= {n})", fontsize=9)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_xticks(sev)
  for row in axes:
    row[0].set_ylabel(metric.replace("_", " ") + " (%)")
  axes[0, -1].legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _roc_axes(ax, labels: np.ndarray, curves: dict, title: str) -> None:
  """Image-level ROC curves on `ax`: `curves` maps a legend label (None: none) to scores `[N]`."""
  from sklearn.metrics import roc_curve
  for name, scores in curves.items():
    fpr, tpr, _ = roc_curve(labels, scores)
    ax.plot(fpr, tpr, label=name)
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.set_title(title, fontsize=9)


def save_figures(path_prefix: str, images: np.ndarray, maps: np.ndarray, labels: np.ndarray,
                 scores: np.ndarray, masks: np.ndarray | None = None, n: int = 6) -> list[str]:
  """ROC curve and anomaly-map overlays as PNGs; returns the files written."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  files = []
  os.makedirs(os.path.dirname(path_prefix) or ".", exist_ok=True)
  if len(np.unique(labels)) == 2:
    fig, ax = plt.subplots(figsize=(3.5, 3.5))
    _roc_axes(ax, labels, {None: scores}, "image-level ROC")
    fig.tight_layout()
    files.append(path_prefix + "_roc.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
  order = np.argsort(-scores)
  pick = list(order[: n // 2]) + list(order[::-1][: n - n // 2])
  fig, axes = plt.subplots(2, len(pick), figsize=(2 * len(pick), 4.2))
  vmax = float(np.percentile(maps, 99.5))
  for j, i in enumerate(pick):
    axes[0, j].imshow(images[i])
    if masks is not None and masks[i].any():
      axes[0, j].contour(masks[i], levels=[0.5], colors="lime", linewidths=0.8)
    axes[0, j].set_title(f"{'anom' if labels[i] else 'good'} s={scores[i]:.2f}", fontsize=8)
    axes[1, j].imshow(images[i])
    axes[1, j].imshow(maps[i], cmap="jet", alpha=0.5, vmin=float(maps.min()), vmax=vmax)
    for a in axes[:, j]:
      a.axis("off")
  fig.tight_layout()
  files.append(path_prefix + "_maps.png")
  fig.savefig(files[-1], dpi=80)
  plt.close(fig)
  return files


def figure_picks(labels: np.ndarray, masks: np.ndarray | None = None, n_anomalous: int = 4,
                 n_normal: int = 2) -> np.ndarray:
  """Which test images a method-comparison figure shows; the same for every method.

  `labels [N]` (1 = anomalous), `masks [N, H, W]` or None. The anomalous images
  with the largest defect area first (the first ones in order without masks),
  then the first normal ones; chosen without any score, so no method picks its
  own best cases. Returns indices `[<= n_anomalous + n_normal]` int.
  """
  labels = np.asarray(labels)
  anomalous = np.flatnonzero(labels == 1)
  if masks is not None and len(anomalous):
    area = np.asarray(masks, bool)[anomalous].reshape(len(anomalous), -1).sum(1)
    anomalous = anomalous[np.argsort(-area, kind="stable")]
  return np.concatenate([anomalous[:n_anomalous],
                         np.flatnonzero(labels == 0)[:n_normal]]).astype(np.int64)


def _stretch(image: np.ndarray) -> np.ndarray:
  """`[H, W, 3]` uint8 with its 1st-99th percentile spread over 0-255 (display only)."""
  x = np.asarray(image, np.float32)
  lo, hi = np.percentile(x, 1), np.percentile(x, 99)
  return (np.clip((x - lo) / max(hi - lo, 1.0), 0.0, 1.0) * 255).astype(np.uint8)


def save_method_figure(path_prefix: str, images: np.ndarray, labels: np.ndarray,
                       pick: np.ndarray, by_method: dict, masks: np.ndarray | None = None,
                       title: str = "") -> list[str]:
  """Anomaly maps of several methods on the same test images, and their ROC curves.

  `images [K, H, W, 3]` uint8 and `masks [K, H, W]` (or None): the picked test
  images (`figure_picks`) as the methods saw them (shifted). `labels [N]`: the
  whole evaluation split's; `pick [K]`: the picked images' indices in it.
  `by_method`: name -> `(scores [N], maps [K, H, W])`, the image scores of the
  whole split and the maps of the picked images.

  `<prefix>_methods.png`: a row of images (defects outlined in green; each
  image's 1st-99th percentile stretched to the full range for display, so that
  dark or flat shifts stay visible) and a row of map overlays per method, each
  titled with the image's rank by that method's score in the split (1 = the
  highest). Each method's colour scale runs from the median of its maps to the
  highest image score of its normal test images, so red marks patches more
  anomalous than the worst patch of any normal test image under that method
  (the maps are on different scales after adaptation).
  `<prefix>_methods_roc.png`: every method's image-level ROC curve with its AUROC.
  Returns the files written (atomically).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from sklearn.metrics import roc_auc_score

  labels = np.asarray(labels)
  names = list(by_method)
  if not names or not len(images):
    return []
  os.makedirs(os.path.dirname(path_prefix) or ".", exist_ok=True)
  files = []

  def save(fig, path, dpi):
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    files.append(path)

  k = len(images)
  shown = [_stretch(x) for x in np.asarray(images)]
  fig, axes = plt.subplots(len(names) + 1, k, figsize=(1.9 * k, 1.95 * (len(names) + 1)),
                           squeeze=False)
  pick = np.asarray(pick)
  for j in range(k):
    axes[0, j].imshow(shown[j])
    axes[0, j].set_title("defective" if labels[pick[j]] == 1 else "good", fontsize=8)
    if masks is not None and masks[j].any():
      axes[0, j].contour(masks[j], levels=[0.5], colors="lime", linewidths=0.8)
  axes[0, 0].set_ylabel("image\n(stretched)", fontsize=8)
  for r, name in enumerate(names, start=1):
    scores, maps = (np.asarray(a, np.float64) for a in by_method[name])
    normal = scores[labels == 0]
    vmin = float(np.median(maps))
    vmax = float(normal.max()) if len(normal) else float(np.percentile(maps, 99.5))
    vmax = max(vmax, vmin + 1e-6)
    rank = np.empty(len(scores), np.int64)
    rank[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    for j in range(k):
      axes[r, j].imshow(shown[j])
      axes[r, j].imshow(maps[j], cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
      axes[r, j].set_title(f"rank {rank[pick[j]]} of {len(scores)}", fontsize=7)
    axes[r, 0].set_ylabel(name, fontsize=9)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  save(fig, path_prefix + "_methods.png", 80)
  if len(np.unique(labels)) == 2:
    fig, ax = plt.subplots(figsize=(3.8, 3.6))
    finite = {n: np.asarray(by_method[n][0], np.float64) for n in names}
    finite = {n: v for n, v in finite.items() if np.all(np.isfinite(v))}
    _roc_axes(ax, labels, {f"{n} ({100 * roc_auc_score(labels, v):.1f})": v
                           for n, v in finite.items()}, title or "image-level ROC")
    ax.legend(fontsize=7, title="image AUROC", title_fontsize=7)
    fig.tight_layout()
    save(fig, path_prefix + "_methods_roc.png", 100)
  return files


def save_point_figure(path_prefix: str, clouds: np.ndarray, point_scores: np.ndarray,
                      labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None = None,
                      n: int = 3) -> list[str]:
  """Defective clouds coloured by per-point score (and their ground truth) as a PNG.

  `clouds [N, P, 3]`, `point_scores [N, P]`, `labels [N]`, `scores [N]`,
  `masks [N, P]`: the `n` highest-scoring anomalous clouds (top row: ground
  truth in red; bottom: scores on one colour scale for all). Returns the files.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  os.makedirs(os.path.dirname(path_prefix) or ".", exist_ok=True)
  anomalous = np.flatnonzero(np.asarray(labels) == 1)
  pick = anomalous[np.argsort(-np.asarray(scores)[anomalous])][:n] if len(anomalous) else (
      np.argsort(-np.asarray(scores))[:n])
  if not len(pick):
    return []
  vmin, vmax = float(np.min(point_scores)), float(np.percentile(point_scores, 99.5))
  fig = plt.figure(figsize=(3.2 * len(pick), 6.2))
  for j, i in enumerate(pick):
    x = clouds[i]
    for row, (colour, cmap, title) in enumerate((
        (None if masks is None else masks[i].astype(float), "coolwarm", "ground truth"),
        (point_scores[i], "jet", f"score {scores[i]:.2f}"))):
      ax = fig.add_subplot(2, len(pick), row * len(pick) + j + 1, projection="3d")
      c = np.zeros(len(x)) if colour is None else colour
      kw = {"vmin": 0, "vmax": 1} if row == 0 else {"vmin": vmin, "vmax": vmax}
      ax.scatter(x[:, 0], x[:, 2], x[:, 1], c=c, cmap=cmap, s=1.5, linewidths=0, **kw)
      ax.set_title(title, fontsize=8)
      ax.set_axis_off()
      ax.view_init(elev=25, azim=-60)
  fig.tight_layout()
  path = path_prefix + "_clouds.png"
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return [path]
