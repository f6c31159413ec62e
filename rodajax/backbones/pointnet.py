"""PointNet encoder (Qi et al., CVPR 2017; no T-Nets) as a Flax module, and its weights.

Five per-point layers `Dense (= Conv1d, kernel 1) -> BatchNorm -> ReLU`
(3 -> 64 -> 64 -> 64 -> 128 -> 1024), then a max over the points. This is the
layer order of learning3d's `PointNet(emb_dims=1024, use_bn=True)`, whose
ModelNet40 weights users bring (`best_ptnet_model.t7` / `best_model.t7`,
`feature_model.*` keys); `from_torch` converts such a state dict, read without
torch by `rodajax.backbones.checkpoint.load_state_dict`.

Input: points `[B, N, 3]`, each cloud centred and scaled to the unit sphere,
y up (the training data's convention). BatchNorm normalises over the batch and
point axes, as PyTorch's BatchNorm1d on `[B, C, N]`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from rodajax.backbones.checkpoint import CheckpointError

WIDTHS = (64, 64, 64, 128, 1024)
TORCH_PREFIXES = ("feature_model.", "encoder.", "")


class PointNet(nn.Module):
  """`points [B, N, 3] -> {"layer1".."layer5": [B, N, C_i], "global": [B, 1024]}`.

  `taps`: stop after the last layer named there (a cheaper forward pass).
  """
  widths: Sequence[int] = WIDTHS
  taps: Sequence[str] | None = None
  bn_momentum = 0.9   # Flax convention (PyTorch momentum 0.1)

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = {}
    last = len(self.widths)
    if self.taps is not None and "global" not in self.taps:
      last = max(int(t[len("layer"):]) for t in self.taps)
    h = x.astype(jnp.float32)
    for i, w in enumerate(self.widths[:last], 1):
      h = nn.Dense(w, name=f"conv{i}")(h)
      h = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                       name=f"bn{i}")(h)
      h = nn.relu(h)
      out[f"layer{i}"] = h
    if last == len(self.widths):
      out["global"] = jnp.max(h, axis=-2)
    return out


def from_torch(state_dict: Mapping[str, np.ndarray], source: str = "checkpoint",
               widths: Sequence[int] = WIDTHS) -> dict:
  """Flax variables of `PointNet` from a learning3d-style PyTorch state dict.

  Accepts the encoder's keys bare (`conv1.weight`) or under `feature_model.`
  (the classifier file); head keys are ignored. Conv weights `[out, in, 1]`
  become Dense kernels `[in, out]`.

  Raises:
    CheckpointError: a key is missing or has the wrong shape (named, with the
      file `source`).
  """
  prefix = next((p for p in TORCH_PREFIXES if f"{p}conv1.weight" in state_dict), None)
  if prefix is None:
    raise CheckpointError(
        f"{source}: no PointNet encoder in it (no 'conv1.weight' or 'feature_model.conv1.weight' "
        "key); expected learning3d's PointNet(emb_dims=1024, use_bn=True) state dict")
  params, stats = {}, {}
  c_in = 3
  for i, w in enumerate(widths, 1):
    def get(name, shape):
      key = f"{prefix}{name}"
      if key not in state_dict:
        raise CheckpointError(f"{source}: missing key {key!r} of the PointNet encoder")
      v = np.asarray(state_dict[key], np.float32)
      if v.shape != shape:
        raise CheckpointError(f"{source}: {key!r} has shape {v.shape}, expected {shape} "
                              f"(PointNet widths {tuple(widths)})")
      return v
    kernel = get(f"conv{i}.weight", (w, c_in, 1))[:, :, 0].T
    params[f"conv{i}"] = {"kernel": kernel, "bias": get(f"conv{i}.bias", (w,))}
    params[f"bn{i}"] = {"scale": get(f"bn{i}.weight", (w,)), "bias": get(f"bn{i}.bias", (w,))}
    stats[f"bn{i}"] = {"mean": get(f"bn{i}.running_mean", (w,)),
                       "var": get(f"bn{i}.running_var", (w,))}
    c_in = w
  return {"params": params, "batch_stats": stats}
