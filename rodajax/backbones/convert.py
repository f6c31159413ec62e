"""Map a PyTorch state dict onto the variables of a Flax module.

The Flax modules in this package name their submodules after the PyTorch
attribute path, with list indices joined by `_`: PyTorch `_blocks.3._bn1.weight`
is Flax `params/_blocks_3/_bn1/scale`, `layer2.0.downsample.1.running_var` is
`batch_stats/layer2_0/downsample_1/var`. Layouts change as follows:

  conv weight   [O, I/g, kh, kw] -> kernel [kh, kw, I/g, O]
  linear weight [O, I]           -> kernel [I, O]
  BN weight / bias               -> params scale / bias
  BN running_mean / running_var  -> batch_stats mean / var
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from rodajax.backbones.checkpoint import CheckpointError

_IGNORED_SUFFIXES = ("num_batches_tracked",)


def _flax_path(torch_key: str) -> tuple[tuple[str, ...], str]:
  parts = torch_key.split(".")
  leaf, mods = parts[-1], []
  for p in parts[:-1]:
    if p.isdigit() and mods:
      mods[-1] = f"{mods[-1]}_{p}"
    else:
      mods.append(p)
  return tuple(mods), leaf


def torch_to_flax(state_dict: Mapping[str, np.ndarray], template: Mapping[str, Any],
                  source: str = "checkpoint") -> dict[str, Any]:
  """Fills `template` (the module's initialised variables) from `state_dict`.

  Args:
    state_dict: `{torch_key: array}` as read by `load_state_dict`.
    template: `{"params": ..., "batch_stats": ...}` from `module.init`.
    source: a name for error messages (the file path).

  Returns:
    Variables with the same tree structure as `template`, all float32.

  Raises:
    CheckpointError: naming the first key that is unexpected, missing, or whose
      shape does not fit the architecture.
  """
  flat = {col: traverse_util.flatten_dict(dict(tree)) for col, tree in template.items()}
  out = {col: {} for col in flat}
  for key, value in state_dict.items():
    if key.endswith(_IGNORED_SUFFIXES):
      continue
    mods, leaf = _flax_path(key)
    value = np.asarray(value)
    if leaf == "weight" and value.ndim == 4:
      col, name, value = "params", "kernel", value.transpose(2, 3, 1, 0)
    elif leaf == "weight" and value.ndim == 2:
      col, name, value = "params", "kernel", value.T
    elif leaf == "weight" and value.ndim == 1:
      col, name = "params", "scale"
    elif leaf == "bias":
      col, name = "params", "bias"
    elif leaf == "running_mean":
      col, name = "batch_stats", "mean"
    elif leaf == "running_var":
      col, name = "batch_stats", "var"
    else:
      raise CheckpointError(f"{source}: unexpected key '{key}' (shape {value.shape}) "
                            "does not belong to this architecture")
    path = mods + (name,)
    if col not in flat or path not in flat[col]:
      raise CheckpointError(f"{source}: unexpected key '{key}' (shape {value.shape}) "
                            "does not belong to this architecture; is it the right backbone?")
    want = flat[col][path].shape
    if tuple(value.shape) != tuple(want):
      raise CheckpointError(f"{source}: key '{key}' has shape {tuple(value.shape)} after "
                            f"conversion, the architecture needs {tuple(want)}")
    out[col][path] = np.asarray(value, np.float32)
  for col, leaves in flat.items():
    for path in leaves:
      if path not in out[col]:
        raise CheckpointError(f"{source}: missing weights for '{col}/{'/'.join(path)}' "
                              "(the checkpoint does not match this architecture)")
  return {col: traverse_util.unflatten_dict(leaves) for col, leaves in out.items()}


def flax_to_torch(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Inverse of `torch_to_flax` (used to build golden-test state dicts)."""
  out = {}
  for col, tree in variables.items():
    for path, value in traverse_util.flatten_dict(dict(tree)).items():
      value = np.asarray(value)
      mods = ".".join(_unjoin(m) for m in path[:-1])
      name = path[-1]
      if name == "kernel":
        out[f"{mods}.weight"] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      elif name == "scale":
        out[f"{mods}.weight"] = value
      elif name == "bias":
        out[f"{mods}.bias"] = value
      elif name == "mean":
        out[f"{mods}.running_mean"] = value
      elif name == "var":
        out[f"{mods}.running_var"] = value
  return out


def _unjoin(module_name: str) -> str:
  head, _, tail = module_name.rpartition("_")
  return f"{head}.{tail}" if tail.isdigit() and head else module_name
