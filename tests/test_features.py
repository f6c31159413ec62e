"""Locally aware patch features against hand-written numpy."""
import jax.numpy as jnp
import numpy as np

from rodajax import features


def test_local_average_counts_zero_padding_like_avgpool2d():
  x = np.random.default_rng(0).random((1, 5, 6, 2)).astype(np.float32)
  p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = sum(p[:, i:i + 5, j:j + 6] for i in range(3) for j in range(3)) / 9
  np.testing.assert_allclose(features.local_average(jnp.asarray(x), 3), want, atol=1e-6)


def _bilinear_half_pixel(x, out):
  """Numpy reference of F.interpolate(mode='bilinear', align_corners=False), [h, w]."""
  h, w = x.shape
  def coords(n_in, n_out):
    c = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(c).astype(int)
    return lo, np.minimum(lo + 1, n_in - 1), c - lo
  y0, y1, wy = coords(h, out[0])
  x0, x1, wx = coords(w, out[1])
  top = x[y0][:, x0] * (1 - wx) + x[y0][:, x1] * wx
  bot = x[y1][:, x0] * (1 - wx) + x[y1][:, x1] * wx
  return top * (1 - wy[:, None]) + bot * wy[:, None]


def test_patch_features_upsample_deeper_map_and_concatenate():
  rng = np.random.default_rng(1)
  a = rng.random((2, 8, 8, 3)).astype(np.float32)
  b = rng.random((2, 4, 4, 5)).astype(np.float32)
  out = np.asarray(features.patch_features({"s3": jnp.asarray(a), "s5": jnp.asarray(b)}, ("s3", "s5"), pool=1))
  assert out.shape == (2, 8, 8, 8)
  np.testing.assert_allclose(out[..., :3], a, atol=1e-6)
  np.testing.assert_allclose(out[1, :, :, 4], _bilinear_half_pixel(b[1, :, :, 1], (8, 8)), atol=1e-5)


def test_adaptive_channel_pool_matches_adaptive_avg_pool1d():
  x = np.arange(10, dtype=np.float32)[None]
  # adaptive_avg_pool1d(10 -> 4): bins [0,3), [2,5), [5,8), [7,10)
  want = [x[0, 0:3].mean(), x[0, 2:5].mean(), x[0, 5:8].mean(), x[0, 7:10].mean()]
  np.testing.assert_allclose(features.adaptive_channel_pool(jnp.asarray(x), 4)[0], want, atol=1e-6)


def test_crop_and_normalise():
  img = np.full((1, 10, 10, 3), 255, np.uint8)
  out = np.asarray(features.crop_and_normalise(jnp.asarray(img), 6))
  assert out.shape == (1, 6, 6, 3)
  np.testing.assert_allclose(out[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-5)
