"""EfficientNet-Lite0/1/2 in Flax (NHWC), key-compatible with lukemelas-style weights.

Architecture as in Tan & Le, "EfficientNet" (ICML 2019), Lite variant
(tensorflow/tpu `efficientnet_lite_builder.py`): ReLU6 instead of swish, no
squeeze-excitation, stem (32) and head (1280) channels not scaled, the first
and last stage not repeated. Convolutions use TF "SAME" padding (extra pixel at
the bottom/right for stride 2), as the reference PyTorch port does at its
native resolution. BatchNorm: eps 1e-3, momentum 0.99.

Outputs of `__call__`: `stem` [B, H/2, W/2, 32], `block{i}` for each MBConv
block, `stage{s}` (s = 1..7, the last block of each stage; stage3 is the stride-8
40-channel map, stage5 the stride-16 112-channel map of Lite0), `head`
[B, H/32, W/32, 1280], `pooled` [B, 1280] and `logits` [B, 1000].
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# (repeats, kernel, stride, expand, in, out) per stage, EfficientNet-Lite0.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# name: (width, depth, native resolution, dropout)
LITE_PARAMS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}


def round_filters(filters: int, width: float) -> int:
  """Channel rounding of the reference (multiple of 8, never 10% below)."""
  if not width:
    return filters
  divisor = 8
  f = filters * width
  new = max(divisor, int(f + divisor / 2) // divisor * divisor)
  if new < 0.9 * f:
    new += divisor
  return int(new)


def block_specs(width: float, depth: float):
  """Per-block (kernel, stride, expand, in, out, stage) for a Lite model."""
  specs = []
  last = len(_STAGES) - 1
  for s, (r, k, st, e, i, o) in enumerate(_STAGES):
    i, o = round_filters(i, width), round_filters(o, width)
    if s == 0:
      i = 32  # stem is fixed
    repeats = r if s in (0, last) else int(math.ceil(depth * r))
    for b in range(repeats):
      specs.append((k, st if b == 0 else 1, e, i if b == 0 else o, o, s + 1))
  return specs


def same_pads(size: int, k: int, s: int) -> tuple[int, int]:
  """TF 'SAME' padding (low, high) of one spatial axis."""
  out = -(-size // s)
  total = max((out - 1) * s + k - size, 0)
  return total // 2, total - total // 2


def _shifted_sum(xp, kernel, stride, out_hw):
  """sum_{i,j} xp[:, i + y*s, j + x*s, :] * kernel[i, j]: a 'VALID' depthwise correlation."""
  k = kernel.shape[0]
  b, _, _, c = xp.shape
  oh, ow = out_hw
  acc = None
  for i in range(k):
    for j in range(k):
      tap = lax.slice(xp, (0, i, j, 0), (b, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c),
                      (1, stride, stride, 1)) * kernel[i, j]
      acc = tap if acc is None else acc + tap
  return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv_same(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Depthwise conv with TF 'SAME' padding: x [B,H,W,C], kernel [k,k,C] -> [B,H/s,W/s,C]."""
  return _depthwise_fwd(x, kernel, stride)[0]


def _depthwise_fwd(x, kernel, stride):
  k = kernel.shape[0]
  h, w = x.shape[1:3]
  ph, pw = same_pads(h, k, stride), same_pads(w, k, stride)
  xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
  out = _shifted_sum(xp, kernel, stride, (-(-h // stride), -(-w // stride)))
  return out, (xp, kernel)


def _depthwise_bwd(stride, res, g):
  xp, kernel = res
  k = kernel.shape[0]
  b, hp, wp, c = xp.shape
  oh, ow = g.shape[1:3]
  # d xp: correlate the zero-dilated, padded output gradient with the flipped kernel.
  lh, lw = (oh - 1) * stride + 1, (ow - 1) * stride + 1
  gd = lax.pad(g, jnp.zeros((), g.dtype),
               ((0, 0, 0), (k - 1, hp - lh, stride - 1), (k - 1, wp - lw, stride - 1), (0, 0, 0)))
  dxp = _shifted_sum(gd, kernel[::-1, ::-1], 1, (hp, wp))
  # d kernel: k^2 fused multiply-reductions.
  dk = jnp.stack([jnp.stack([
      jnp.sum(lax.slice(xp, (0, i, j, 0), (b, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c),
                        (1, stride, stride, 1)) * g, axis=(0, 1, 2))
      for j in range(k)]) for i in range(k)])
  return dxp, dk


def _depthwise_fwd_vjp(x, kernel, stride):
  out, (xp, kernel) = _depthwise_fwd(x, kernel, stride)
  return out, (xp, kernel, x.shape)


def _depthwise_bwd_vjp(stride, res, g):
  xp, kernel, shape = res
  k = kernel.shape[0]
  dxp, dk = _depthwise_bwd(stride, (xp, kernel), g)
  ph, pw = same_pads(shape[1], k, stride), same_pads(shape[2], k, stride)
  return dxp[:, ph[0]:ph[0] + shape[1], pw[0]:pw[0] + shape[2]], dk


depthwise_conv_same.defvjp(_depthwise_fwd_vjp, _depthwise_bwd_vjp)


DEPTHWISE = ("auto", "shifted", "conv")


def depthwise_conv_grouped(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """`depthwise_conv_same` as one `lax.conv_general_dilated` with `feature_group_count=C`.

  The form accelerators have kernels for (cuDNN, TPU convolutions).
  """
  k, c = kernel.shape[0], x.shape[-1]
  pads = (same_pads(x.shape[1], k, stride), same_pads(x.shape[2], k, stride))
  return lax.conv_general_dilated(x, kernel[:, :, None, :], (stride, stride), pads,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=c)


def depthwise_impl(choice: str = "auto") -> str:
  """"shifted" or "conv" for `choice`; "auto" = shifted sums on CPU, `lax.conv` elsewhere."""
  if choice not in DEPTHWISE:
    raise ValueError(f"unknown depthwise implementation {choice!r}; known: {', '.join(DEPTHWISE)}")
  if choice == "auto":
    return "shifted" if jax.default_backend() == "cpu" else "conv"
  return choice


class DepthwiseConv(nn.Module):
  """Depthwise k x k convolution, 'SAME' padding, no bias: [B, H, W, C] -> [B, H/s, W/s, C].

  `impl` (`DEPTHWISE`): "shifted" is a sum of k^2 strided, shifted
  multiply-adds, which XLA fuses into one loop, with a custom VJP of the same
  form; on CPU it runs 5-30x faster than `feature_group_count=C` forward and
  backward (benchmarks/README.md). "conv" is the grouped `lax.conv`, the form
  GPUs and TPUs have kernels for. "auto" picks by `jax.default_backend()` at
  trace time. Both give the same numbers (tests/test_backbones.py).
  Parameter: `kernel` [k, k, 1, C], the layout of a grouped `nn.Conv`, so
  checkpoints convert the same way.
  """
  kernel_size: int
  stride: int = 1
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, x.shape[-1]), jnp.float32)
    fn = depthwise_conv_same if depthwise_impl(self.impl) == "shifted" else depthwise_conv_grouped
    return fn(x, kernel[:, :, 0, :], self.stride)


def _bn(name, train):
  return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, name=name)


class MBConv(nn.Module):
  """Mobile inverted bottleneck without SE; [B, H, W, Cin] -> [B, H/s, W/s, Cout]."""
  kernel: int
  stride: int
  expand: int
  cin: int
  cout: int
  depthwise: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    inputs = x
    mid = self.cin * self.expand
    if self.expand != 1:
      x = nn.Conv(mid, (1, 1), use_bias=False, name="_expand_conv")(x)
      x = nn.relu6(_bn("_bn0", train)(x))
    x = DepthwiseConv(self.kernel, self.stride, self.depthwise, name="_depthwise_conv")(x)
    x = nn.relu6(_bn("_bn1", train)(x))
    x = nn.Conv(self.cout, (1, 1), use_bias=False, name="_project_conv")(x)
    x = _bn("_bn2", train)(x)
    if self.stride == 1 and self.cin == self.cout:
      x = x + inputs
    return x


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite; images [B, H, W, 3] ImageNet-normalised -> dict of maps."""
  width: float = 1.0
  depth: float = 1.0
  num_classes: int = 1000
  taps: Sequence[str] | None = None  # stop early once these outputs exist
  start_block: int = 0  # > 0: `x` is the output of block start_block - 1 (a cached trunk)
  depthwise: str = "auto"  # DEPTHWISE: shifted sums (CPU) | lax.conv (accelerators) | by backend
  bn_momentum = 0.99  # running-average momentum of every BatchNorm (Flax convention)

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = {}
    done = lambda: self.taps is not None and all(t in out for t in self.taps)
    if self.start_block == 0:
      x = nn.Conv(32, (3, 3), strides=2, padding="SAME", use_bias=False, name="_conv_stem")(x)
      x = nn.relu6(_bn("_bn0", train)(x))
      out["stem"] = x
    specs = block_specs(self.width, self.depth)
    for idx, (k, s, e, i, o, stage) in enumerate(specs):
      if idx < self.start_block:
        continue
      x = MBConv(k, s, e, i, o, self.depthwise, name=f"_blocks_{idx}")(x, train)
      out[f"block{idx}"] = x
      if idx + 1 == len(specs) or specs[idx + 1][5] != stage:
        out[f"stage{stage}"] = x
      if done():
        return out
    x = nn.Conv(1280, (1, 1), use_bias=False, name="_conv_head")(x)
    x = nn.relu6(_bn("_bn1", train)(x))
    out["head"] = x
    out["pooled"] = jnp.mean(x, axis=(1, 2))
    out["logits"] = nn.Dense(self.num_classes, name="_fc")(out["pooled"])
    return out
