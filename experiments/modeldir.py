"""A saved model on disk: what `fit` writes, `adapt` derives, `predict` reads.

  MODEL/model.json       manifest (format, kind, backbone and weights digest, config,
                         threshold and its rule, score normalisation, content digest)
  MODEL/checkpoint/      orbax: {"memory": bank tree, "variables": {params, batch_stats}}

An adapted model keeps only what adaptation changed and points at its base:

  ADAPTED/model.json     kind "adapted", base (absolute path), base content digest,
                         what was adapted and the safeguard's decision
  ADAPTED/checkpoint/    orbax: {"bn_params": {path: array}, "batch_stats": tree}

A model directory is written whole or not at all (built beside its final
place, then renamed). `load` checks the format, recomputes the content digest
of the arrays it restores and compares it with the manifest's, so a damaged,
swapped or truncated checkpoint is named instead of silently used.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from experiments import cli
from rodajax import adapt, patchcore, report

FORMAT = "rodajax-model/1"


@dataclasses.dataclass
class Model:
  dir: str
  manifest: dict
  config: ml_collections.ConfigDict
  variables: dict            # {"params", "batch_stats"} ready for the extractor
  bank: patchcore.MemoryBank

  @property
  def threshold(self) -> float:
    return float(self.manifest["threshold"]["value"])

  @property
  def median(self) -> float:
    return float(self.manifest["normalisation"]["median"])

  @property
  def content(self) -> str:
    return self.manifest["content_sha256"]


def tree_digest(tree) -> str:
  """sha256 of every leaf's path, dtype, shape and bytes (order-independent of dict order)."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def file_digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def is_model(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "model.json"))


def _write(final: str, manifest: dict, tree: dict) -> None:
  """Writes manifest + checkpoint beside `final`, then renames it into place."""
  parent = os.path.dirname(os.path.abspath(final)) or "."
  cli.writable_folder(parent, "the folder", "choose another output folder")
  tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(final))}.partial-{os.getpid()}")
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  try:
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(os.path.abspath(tmp), "checkpoint"), tree)
    ckpt.wait_until_finished()
    report.atomic_write(os.path.join(tmp, "model.json"), json.dumps(manifest, indent=1))
    if os.path.exists(final):
      report.set_aside(final, "previous")   # callers decide before this whether it may go
    os.replace(tmp, final)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def save_source(final: str, manifest: dict, bank: patchcore.MemoryBank, variables: dict) -> dict:
  """Writes a fitted model; fills in format, kind and content digest of `manifest`."""
  tree = {"memory": bank.to_tree(), "variables": jax.tree.map(np.asarray, variables)}
  manifest = {"format": FORMAT, "kind": "source", "created": now(), **manifest,
              "content_sha256": tree_digest(tree)}
  _write(final, manifest, tree)
  return manifest


def _flat_bn(params) -> dict:
  return {"/".join(k): np.asarray(v) for k, v in adapt.split_bn(params)[0].items()}


def save_adapted(final: str, base: Model, variables: dict, adapted: dict,
                 config: dict | None = None, threshold: dict | None = None) -> dict:
  """Writes an adapted model: BatchNorm affine parameters and statistics, and a link to `base`.

  `config`: the config it was adapted with (default: the base's). `threshold`:
  a recalibrated threshold (with its "median"), default the base's.
  """
  tree = {"bn_params": _flat_bn(variables["params"]),
          "batch_stats": jax.tree.map(np.asarray, variables["batch_stats"])}
  keep = ("backbone", "weights", "weights_sha256", "config", "threshold", "normalisation",
          "bank", "category", "dataset")
  manifest = {"format": FORMAT, "kind": "adapted", "created": now(),
              "base": os.path.abspath(base.dir), "base_content_sha256": base.content,
              **{k: base.manifest[k] for k in keep if k in base.manifest},
              "adapted": adapted, "content_sha256": tree_digest(tree)}
  if config is not None:
    manifest["config"] = config
  if threshold is not None:
    manifest["threshold"] = {k: v for k, v in threshold.items() if k != "median"}
    manifest["normalisation"] = {**manifest["normalisation"], "median": threshold["median"],
                                 "threshold": threshold["value"]}
  _write(final, manifest, tree)
  return manifest


def read_manifest(path: str) -> dict:
  if not os.path.isdir(path):
    raise cli.UserError(f"model directory {path!r} does not exist; create one with "
                        "python -m experiments.fit --config CONFIG --model DIR")
  f = os.path.join(path, "model.json")
  if not os.path.isfile(f):
    raise cli.UserError(f"{path!r} is not a model directory (no model.json); pass the folder "
                        "that experiments.fit or experiments.adapt wrote")
  try:
    with open(f, "rb") as fh:
      manifest = json.loads(fh.read().decode("utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise cli.UserError(f"{f} is damaged ({e}); fit or adapt the model again") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise cli.UserError(f"{f} is not a {FORMAT} manifest (format "
                        f"{manifest.get('format') if isinstance(manifest, dict) else None!r}); "
                        "fit the model again with this version of rodajax")
  return manifest


def _restore(path: str, manifest: dict) -> dict:
  ckpt_dir = os.path.join(os.path.abspath(path), "checkpoint")
  try:
    tree = ocp.StandardCheckpointer().restore(ckpt_dir)
  except Exception as e:   # orbax raises many types for a damaged checkpoint
    raise cli.UserError(f"checkpoint {ckpt_dir} is damaged or missing ({type(e).__name__}); "
                        "fit or adapt the model again") from None
  if tree_digest(tree) != manifest.get("content_sha256"):
    raise cli.UserError(f"checkpoint {ckpt_dir} does not match its model.json (content digest "
                        "differs: damaged or replaced files); fit or adapt the model again")
  return tree


def load(path: str) -> Model:
  """The model of `path` (source or adapted), with its digests checked."""
  manifest = read_manifest(path)
  config = ml_collections.ConfigDict(manifest["config"])
  if manifest["kind"] == "source":
    tree = _restore(path, manifest)
    return Model(path, manifest, config, tree["variables"],
                 patchcore.MemoryBank.from_tree(tree["memory"]))
  base_dir = manifest["base"]
  if not is_model(base_dir):
    raise cli.UserError(f"adapted model {path!r} needs its base model {base_dir!r}, which is "
                        "gone; keep the fitted model next to its adaptations or adapt again")
  base = load(base_dir)
  if base.content != manifest["base_content_sha256"]:
    raise cli.UserError(f"the base model {base_dir!r} changed since {path!r} was adapted from "
                        "it (content digest differs); adapt again")
  tree = _restore(path, manifest)
  bn = {tuple(k.split("/")): v for k, v in tree["bn_params"].items()}
  variables = {"params": adapt.with_bn(base.variables["params"], bn),
               "batch_stats": tree["batch_stats"]}
  return Model(path, manifest, config, variables, base.bank)

