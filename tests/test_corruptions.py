"""Corruptions: golden outputs of ImageNet-C's own arithmetic (cv2, skimage, PIL), noise statistics."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES
from rodajax import corruptions

GOLD = np.load(os.path.join(FIXTURES, "corruptions.npz"))


@pytest.mark.parametrize("name", ["defocus_blur", "brightness", "contrast", "saturate",
                                  "gaussian_blur", "pixelate"])
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_matches_reference_libraries(name, severity):
  img = jnp.asarray(GOLD["image"][None])
  out = np.asarray(corruptions.corrupt(img, name, severity, jax.random.key(0)))[0]
  want = GOLD[name][severity - 1]
  atol = 1.0 if name == "pixelate" else 0.05  # PIL rounds each pass to uint8
  np.testing.assert_allclose(out, want, atol=atol)


def test_gaussian_noise_statistics():
  x = jnp.full((4, 64, 64, 3), 128, jnp.uint8)
  for s, c in enumerate(corruptions.PARAMS["gaussian_noise"][:3], 1):  # little clipping at 0.5
    y = np.asarray(corruptions.corrupt(x, "gaussian_noise", s, jax.random.key(s)))
    r = (y - 128) / 255
    assert abs(r.mean()) < 0.01 and r.std() == pytest.approx(c, rel=0.05)


def test_shot_impulse_speckle_statistics():
  x = jnp.full((4, 64, 64, 3), 102, jnp.uint8)  # 0.4 in [0, 1]
  y = np.asarray(corruptions.corrupt(x, "shot_noise", 3, jax.random.key(0))) / 255
  assert y.mean() == pytest.approx(0.4, abs=0.01) and y.var() == pytest.approx(0.4 / 12, rel=0.1)
  y = np.asarray(corruptions.corrupt(x, "impulse_noise", 4, jax.random.key(0))) / 255
  assert (y == 0).mean() == pytest.approx(0.085, abs=0.01) and (y == 1).mean() == pytest.approx(0.085, abs=0.01)
  y = np.asarray(corruptions.corrupt(x, "speckle_noise", 2, jax.random.key(0))) / 255
  assert (y - 0.4).std() == pytest.approx(0.4 * 0.2, rel=0.05)


def test_noise_is_keyed_and_deterministic():
  x = jnp.full((1, 16, 16, 3), 100, jnp.uint8)
  a = corruptions.corrupt(x, "gaussian_noise", 5, jax.random.key(1))
  b = corruptions.corrupt(x, "gaussian_noise", 5, jax.random.key(1))
  c = corruptions.corrupt(x, "gaussian_noise", 5, jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_hsv_roundtrip():
  x = jax.random.uniform(jax.random.key(0), (500, 3))
  np.testing.assert_allclose(corruptions.hsv_to_rgb(corruptions.rgb_to_hsv(x)), x, atol=1e-5)


def test_bad_names_and_severities():
  with pytest.raises(ValueError, match="unknown corruption 'fog'.*known: brightness"):
    corruptions.check("fog", 3)
  for s in (0, 6, 2.5):
    with pytest.raises(ValueError, match="severity must be an integer from 1 to 5"):
      corruptions.check("contrast", s)
