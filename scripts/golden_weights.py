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
