"""ResNet-18/50 and Wide-ResNet-50-2 in Flax (NHWC), torchvision architecture and keys.

He et al., "Deep Residual Learning" (CVPR 2016), torchvision's v1.5 variant
(stride on the 3x3 conv of a bottleneck); Zagoruyko & Komodakis wide variant
(bottleneck width x2). BatchNorm eps 1e-5, momentum 0.1 (PyTorch convention).

Outputs: `stem` (after max-pool, stride 4), `layer1`..`layer4` (strides 4, 8, 16,
32), `pooled` [B, C] and `logits` [B, 1000]. With `start_layer = k > 0` the input is a
cached trunk output (the stem's for k = 1, `layer{k-1}`'s otherwise) and only layers k.. run:
the tail a UDA model trains (`rodajax.uda`).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

RESNET_SPECS = {
    # name: (block type, blocks per layer, bottleneck width factor)
    "resnet18": ("basic", (2, 2, 2, 2), 1),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 2),
}


def _bn(name, train):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _conv(features, k, stride, name):
  p = k // 2
  return nn.Conv(features, (k, k), strides=stride, padding=((p, p), (p, p)),
                 use_bias=False, name=name)


class BasicBlock(nn.Module):
  planes: int
  stride: int
  downsample: bool

  @nn.compact
  def __call__(self, x, train=False):
    idt = x
    y = nn.relu(_bn("bn1", train)(_conv(self.planes, 3, self.stride, "conv1")(x)))
    y = _bn("bn2", train)(_conv(self.planes, 3, 1, "conv2")(y))
    if self.downsample:
      idt = _bn("downsample_1", train)(_conv(self.planes, 1, self.stride, "downsample_0")(x))
    return nn.relu(y + idt)


class Bottleneck(nn.Module):
  planes: int
  stride: int
  downsample: bool
  width_factor: int = 1

  @nn.compact
  def __call__(self, x, train=False):
    idt = x
    width = self.planes * self.width_factor
    y = nn.relu(_bn("bn1", train)(_conv(width, 1, 1, "conv1")(x)))
    y = nn.relu(_bn("bn2", train)(_conv(width, 3, self.stride, "conv2")(y)))
    y = _bn("bn3", train)(_conv(self.planes * 4, 1, 1, "conv3")(y))
    if self.downsample:
      idt = _bn("downsample_1", train)(_conv(self.planes * 4, 1, self.stride, "downsample_0")(x))
    return nn.relu(y + idt)


class ResNet(nn.Module):
  """torchvision ResNet; images [B, H, W, 3] ImageNet-normalised -> dict of maps."""
  block: str = "bottleneck"
  layers: Sequence[int] = (3, 4, 6, 3)
  width_factor: int = 1
  num_classes: int = 1000
  taps: Sequence[str] | None = None
  start_layer: int = 0  # > 0: `x` is the output of layer start_layer - 1 (the stem for 1)
  bn_momentum = 0.9  # running-average momentum of every BatchNorm (Flax convention)

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = {}
    if not 0 <= self.start_layer <= len(self.layers):
      raise ValueError(f"start_layer {self.start_layer} must be in 0..{len(self.layers)}")
    if self.start_layer == 0:
      x = nn.relu(_bn("bn1", train)(_conv(64, 7, 2, "conv1")(x)))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
      out["stem"] = x
    expansion = 1 if self.block == "basic" else 4
    cin = 64
    for li, n in enumerate(self.layers):
      planes = 64 * 2 ** li
      if li + 1 < self.start_layer:
        cin = planes * expansion
        continue
      for b in range(n):
        stride = 2 if (b == 0 and li > 0) else 1
        down = b == 0 and (stride != 1 or cin != planes * expansion)
        name = f"layer{li + 1}_{b}"
        if self.block == "basic":
          x = BasicBlock(planes, stride, down, name=name)(x, train)
        else:
          x = Bottleneck(planes, stride, down, self.width_factor, name=name)(x, train)
        cin = planes * expansion
      out[f"layer{li + 1}"] = x
      if self.taps is not None and all(t in out for t in self.taps):
        return out
    out["pooled"] = jnp.mean(x, axis=(1, 2))
    out["logits"] = nn.Dense(self.num_classes, name="fc")(out["pooled"])
    return out
