"""Seeded, torch-free state dicts for golden parity tests (numpy only).

Both the fixture script (run once with torch in a scratch environment) and the
tests (no torch) call `make_state_dict` with the same key -> shape map, so the
same weights exist on both sides without committing them.
"""
import zlib

import numpy as np


def make_state_dict(shapes, seed=0):
  """{key: shape} -> {key: float32 array}; each key drawn from its own stream."""
  out = {}
  for key in sorted(shapes):
    shape = tuple(shapes[key])
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
      continue
    if leaf == "weight" and len(shape) >= 2:
      fan_in = int(np.prod(shape[1:]))
      gain = np.sqrt(2.0 / fan_in) if len(shape) == 4 else 1.0 / np.sqrt(fan_in)
      v = rng.normal(0.0, gain, shape)
    elif leaf == "weight":
      v = rng.uniform(0.5, 1.0, shape)
    elif leaf == "running_var":
      v = rng.uniform(0.5, 1.5, shape)
    else:  # bias, running_mean
      v = rng.normal(0.0, 0.1, shape)
    out[key] = v.astype(np.float32)
  return out


def make_images(n, size, seed=0):
  """Smooth-ish normalised test images [n, size, size, 3] float32 (NHWC)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(0, 1, (n, size // 8, size // 8, 3))
  x = np.repeat(np.repeat(x, 8, axis=1), 8, axis=2)
  x = x + 0.3 * rng.normal(0, 1, (n, size, size, 3))
  return x.astype(np.float32)


WIDTHS = (64, 64, 64, 128, 1024)   # PointNet encoder widths (learning3d)


def pointnet_state_dict(seed: int = 0) -> dict:
  """Seeded weights in learning3d's PointNet key names (conv{i}.*, bn{i}.*)."""
  rng = np.random.default_rng(seed)
  sd, c = {}, 3
  for i, w in enumerate(WIDTHS, 1):
    sd[f"conv{i}.weight"] = (rng.normal(size=(w, c, 1)) / np.sqrt(c)).astype(np.float32)
    sd[f"conv{i}.bias"] = rng.normal(scale=0.1, size=w).astype(np.float32)
    sd[f"bn{i}.weight"] = rng.uniform(0.5, 1.5, w).astype(np.float32)
    sd[f"bn{i}.bias"] = rng.normal(scale=0.1, size=w).astype(np.float32)
    sd[f"bn{i}.running_mean"] = rng.normal(scale=0.2, size=w).astype(np.float32)
    sd[f"bn{i}.running_var"] = rng.uniform(0.5, 2.0, w).astype(np.float32)
    c = w
  return sd
