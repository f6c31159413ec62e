"""ImageNet-C corruptions in JAX (Hendrycks & Dietterich, ICLR 2019), batched and keyed.

Every corruption maps float or uint8 images `[B, H, W, 3]` in [0, 255] to float32
`[B, H, W, 3]` in [0, 255] (clipped), with ImageNet-C's parameters for severity
1-5, and mirrors the reference arithmetic:
  * defocus_blur: the anti-aliased disk kernel (a disk smoothed by OpenCV's
    3x3 / 5x5 GaussianBlur), applied per channel like `cv2.filter2D` with its
    default border (BORDER_REFLECT_101);
  * brightness / saturate: through HSV exactly like scikit-image's
    `rgb2hsv` / `hsv2rgb`;
  * gaussian_blur: `skimage.filters.gaussian` (scipy 'nearest' border, truncate 4);
  * pixelate: PIL's BOX down- and up-sampling (two separable passes, each
    rounded to uint8 as PIL does);
  * the noises draw from `key`; contrast uses each image's per-channel mean.
The pipeline applies them to the resized uint8 image, before crop and
normalisation, and stores the result as uint8 by truncation (`np.uint8`, as
ImageNet-C saved its images).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

PARAMS = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),
    "gaussian_blur": (1, 2, 3, 4, 6),
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "saturate": ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2)),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
}
PAPER_SHIFTS = ("gaussian_noise", "defocus_blur", "brightness", "contrast")


def names() -> list[str]:
  return sorted(PARAMS)


def check(name: str, severity: int) -> None:
  """Raises ValueError naming the known corruptions / the valid severities."""
  if name not in PARAMS:
    raise ValueError(f"unknown corruption {name!r}; known: {', '.join(names())}")
  if int(severity) != severity or not 1 <= int(severity) <= 5:
    raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")


# --- colour space, as scikit-image -------------------------------------------

def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  """skimage.color.rgb2hsv on `[..., 3]` in [0, 1]."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = jnp.max(rgb, axis=-1)
  delta = v - jnp.min(rgb, axis=-1)
  safe_v = jnp.where(v == 0, 1.0, v)
  s = jnp.where(v == 0, 0.0, delta / safe_v)
  safe_d = jnp.where(delta == 0, 1.0, delta)
  h = jnp.where(r == v, (g - b) / safe_d, 0.0)
  h = jnp.where(g == v, 2.0 + (b - r) / safe_d, h)
  h = jnp.where(b == v, 4.0 + (r - g) / safe_d, h)
  h = jnp.mod(h / 6.0, 1.0)
  h = jnp.where(delta == 0, 0.0, h)
  return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """skimage.color.hsv2rgb on `[..., 3]`."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  hi = jnp.floor(h * 6.0)
  f = h * 6.0 - hi
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  hi = jnp.mod(hi, 6).astype(jnp.int32)
  table = jnp.stack([jnp.stack(c, -1) for c in
                     ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0)
  return jnp.take_along_axis(table, hi[None, ..., None], axis=0)[0]


# --- kernels -------------------------------------------------------------------

def _cv2_gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
  x = np.arange(ksize) - (ksize - 1) / 2
  k = np.exp(-x ** 2 / (2 * sigma ** 2))
  return k / k.sum()


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
  """ImageNet-C's anti-aliased disk: a normalised disk, then cv2.GaussianBlur (reflect-101)."""
  if radius <= 8:
    grid, ksize = np.arange(-8, 9), 3
  else:
    grid, ksize = np.arange(-radius, radius + 1), 5
  xx, yy = np.meshgrid(grid, grid)
  disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
  disk /= disk.sum()
  g = _cv2_gaussian_kernel(ksize, alias_blur)
  r = ksize // 2
  for axis in (0, 1):
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r, r)
    p = np.pad(disk, pad, mode="reflect")
    disk = sum(g[i] * np.take(p, np.arange(i, i + disk.shape[axis]), axis=axis) for i in range(ksize))
  return disk.astype(np.float32)


def filter2d_reflect101(x: jax.Array, kernel: np.ndarray) -> jax.Array:
  """cv2.filter2D(x, -1, kernel) per channel (correlation, BORDER_REFLECT_101): `[B,H,W,C]`."""
  kh, kw = kernel.shape
  xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="reflect")
  c = x.shape[-1]
  w = jnp.tile(jnp.asarray(kernel)[:, :, None, None], (1, 1, 1, c))
  return lax.conv_general_dilated(xp, w, (1, 1), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=c, precision=lax.Precision.HIGHEST)


def _pil_box_matrix(n_in: int, n_out: int) -> np.ndarray:
  """PIL's BOX resampling coefficients `[n_out, n_in]` (ImagingResample precompute_coeffs)."""
  scale = n_in / n_out
  filterscale = max(scale, 1.0)
  support = 0.5 * filterscale
  m = np.zeros((n_out, n_in))
  for xx in range(n_out):
    centre = (xx + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = max(int(centre - support + 0.5), 0)
    xmax = min(int(centre + support + 0.5), n_in)
    w = np.array([1.0 if -0.5 < (x - centre + 0.5) * ss <= 0.5 else 0.0
                  for x in range(xmin, xmax)])
    if w.sum() > 0:
      m[xx, xmin:xmax] = w / w.sum()
  return m


def _pil_resize_box(x: jax.Array, out_h: int, out_w: int) -> jax.Array:
  """PIL Image.resize(BOX) on uint8-valued `[B,H,W,C]`: horizontal pass, round, vertical, round."""
  h, w = x.shape[1:3]
  if out_w != w:
    x = jnp.clip(jnp.floor(jnp.einsum("ow,bhwc->bhoc", jnp.asarray(_pil_box_matrix(w, out_w), jnp.float32), x,
                                      precision=lax.Precision.HIGHEST) + 0.5), 0, 255)
  if out_h != h:
    x = jnp.clip(jnp.floor(jnp.einsum("oh,bhwc->bowc", jnp.asarray(_pil_box_matrix(h, out_h), jnp.float32), x,
                                      precision=lax.Precision.HIGHEST) + 0.5), 0, 255)
  return x


# --- corruptions ---------------------------------------------------------------

def _unit(x):
  return x.astype(jnp.float32) / 255.0


def _out(x):
  return jnp.clip(x, 0.0, 1.0) * 255.0


def gaussian_noise(x, severity, key):
  x = _unit(x)
  return _out(x + PARAMS["gaussian_noise"][severity - 1] * jax.random.normal(key, x.shape))


def shot_noise(x, severity, key):
  c = PARAMS["shot_noise"][severity - 1]
  return _out(jax.random.poisson(key, _unit(x) * c, x.shape).astype(jnp.float32) / c)


def impulse_noise(x, severity, key):
  """skimage random_noise(mode='s&p', amount=c): each value is salt or pepper with prob c."""
  c = PARAMS["impulse_noise"][severity - 1]
  k1, k2 = jax.random.split(key)
  hit = jax.random.uniform(k1, x.shape) < c
  salt = jax.random.uniform(k2, x.shape) < 0.5
  return _out(jnp.where(hit, salt.astype(jnp.float32), _unit(x)))


def speckle_noise(x, severity, key):
  x = _unit(x)
  return _out(x + x * PARAMS["speckle_noise"][severity - 1] * jax.random.normal(key, x.shape))


def gaussian_blur(x, severity, key=None):
  from rodajax.scoring import gaussian_blur as blur
  return _out(blur(_unit(x), float(PARAMS["gaussian_blur"][severity - 1]), mode="edge"))


def defocus_blur(x, severity, key=None):
  r, a = PARAMS["defocus_blur"][severity - 1]
  return _out(filter2d_reflect101(_unit(x), disk_kernel(r, a)))


def brightness(x, severity, key=None):
  hsv = rgb_to_hsv(_unit(x))
  hsv = hsv.at[..., 2].set(jnp.clip(hsv[..., 2] + PARAMS["brightness"][severity - 1], 0, 1))
  return _out(hsv_to_rgb(hsv))


def contrast(x, severity, key=None):
  x = _unit(x)
  means = jnp.mean(x, axis=(1, 2), keepdims=True)
  return _out((x - means) * PARAMS["contrast"][severity - 1] + means)


def saturate(x, severity, key=None):
  a, b = PARAMS["saturate"][severity - 1]
  hsv = rgb_to_hsv(_unit(x))
  hsv = hsv.at[..., 1].set(jnp.clip(hsv[..., 1] * a + b, 0, 1))
  return _out(hsv_to_rgb(hsv))


def pixelate(x, severity, key=None):
  c = PARAMS["pixelate"][severity - 1]
  h, w = x.shape[1:3]
  x = jnp.round(x.astype(jnp.float32))
  small = _pil_resize_box(x, int(h * c), int(w * c))
  return _pil_resize_box(small, h, w)


CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise, "gaussian_blur": gaussian_blur, "defocus_blur": defocus_blur,
    "brightness": brightness, "contrast": contrast, "saturate": saturate, "pixelate": pixelate,
}


@functools.partial(jax.jit, static_argnames=("name", "severity"))
def corrupt(images: jax.Array, name: str, severity: int, key: jax.Array) -> jax.Array:
  """Applies corruption `name` at `severity` (1-5): `[B,H,W,3]` [0,255] -> float32 [0,255]."""
  check(name, severity)
  return CORRUPTIONS[name](images, severity, key)
