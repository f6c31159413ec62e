"""UDA for one-class anomaly detection (Mejri et al.): Deep SVDD on source normals,
jointly aligned with the dominant cluster of the unlabelled target set.

Model f (Eq. 5's feature map): a pretrained EfficientNet-Lite or ResNet split in two.
  trunk  stem .. the block (ResNet: layer) before `start`: frozen, run once per
         image (`trunk_features`) and cached by the caller;
  tail   the remaining blocks (EfficientNet: + the 1x1 head conv + BatchNorm),
         global average pooling, then a bias-free linear projection head
         -> f(x) [B, out_dim].
BatchNorm uses its running statistics (no batch dependence, so no
statistics-based shortcut to a constant output).

Training (Adam, `make_step`; the loop is `experiments.uda_train.train`): L = lambda1 * L_AD + lambda2 * L_UDA with
  L_AD  = mean_s ||f(x_s) - mu||^2, mu = mean of f over the source at init (Eq. 5);
  L_UDA = one of
    contrastive  Eqs. 8-9 (`losses.contrastive_alignment`): source vs target
                 samples of the dominant set D against negatives (the target
                 outside D as written, or its far tail: `cluster.far_from`,
                 chosen by the caller), denominator as written or InfoNCE;
    mmd          multi-bandwidth Gaussian MMD between source and D;
    adversarial  a small domain discriminator on f through a gradient
                 reversal layer (DANN), source vs D.
Hypersphere collapse (Ruff et al. 2018) is guarded against by: a bias-free
head; mu fixed from the initial features; BatchNorm in inference mode; by
default only BN affine parameters of the tail and the head train
(`trainable="bn_head"`; "all" trains every tail parameter); the feature
variance is tracked (`var_ratio` = var of f at the end / at init) and reported.

Score: ||f(x) - mu||^2 (higher = more anomalous).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from rodajax import adapt, losses
from rodajax.backbones.efficientnet import EfficientNetLite, block_specs
from rodajax.backbones.resnet import ResNet

ALIGNMENTS = ("contrastive", "mmd", "adversarial")
TRAINABLE = ("bn_head", "all")
BN_BIAS = ("frozen", "trained")
SPACES = ("euclidean", "sphere")   # where Deep SVDD scores: f(x), or f(x) / ||f(x)|| (`Model.normalise`)


Backbone = EfficientNetLite | ResNet


def stage_start(module: Backbone, stage: int) -> int:
  """Where f's trainable tail starts: EfficientNet-Lite: the index of the first block of
  `stage` (1-based, as the `stageN` taps); ResNet: `stage` itself (layer1..layer4)."""
  if isinstance(module, ResNet):
    if not 1 <= stage <= len(module.layers):
      raise ValueError(f"ResNet stage {stage} does not exist: 1..{len(module.layers)} "
                       "(layer1..layer4)")
    return stage
  for i, spec in enumerate(block_specs(module.width, module.depth)):
    if spec[5] == stage:
      return i
  raise ValueError(f"stage {stage} does not exist")


def tail_module(backbone: Backbone, start: int) -> Backbone:
  """The part of `backbone` from `start` (`stage_start`) on; input = the trunk's output."""
  if isinstance(backbone, ResNet):
    return backbone.clone(start_layer=start, taps=None, parent=None)
  return backbone.clone(start_block=start, taps=None, parent=None)


def trunk_tap(backbone: Backbone, start: int) -> str:
  """The output name of the frozen trunk that feeds `tail_module(backbone, start)`."""
  if isinstance(backbone, ResNet):
    return "stem" if start == 1 else f"layer{start - 1}"
  return f"block{start - 1}"


class Model(nn.Module):
  """Tail of the backbone + bias-free projection head: `h -> f(x) [B, out_dim]`."""
  backbone: nn.Module       # `tail_module(backbone, start)`; its parameters live under "backbone"
  out_dim: int = 128
  normalise: bool = False   # f(x) / ||f(x)||: Deep SVDD on the unit sphere (uda.space="sphere")

  @nn.compact
  def __call__(self, h):
    pooled = self.backbone(h, train=False)["pooled"]
    z = nn.Dense(self.out_dim, use_bias=False, name="head")(pooled)
    if self.normalise:
      z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-8)
    return z


class Discriminator(nn.Module):
  """Domain classifier on features (logit: source = 1)."""
  hidden: int = 64

  @nn.compact
  def __call__(self, z):
    z = nn.relu(nn.Dense(self.hidden)(z))
    return nn.Dense(1)(z)[:, 0]


def init_model(backbone: Backbone, backbone_vars: dict, start_block: int,
               out_dim: int, key: jax.Array, h_example: jax.Array, normalise: bool = False):
  """`(model, variables)` with the tail's pretrained weights and a random head."""
  model = Model(tail_module(backbone, start_block), out_dim, normalise)
  v = model.init(key, h_example[:1])
  params = traverse_util.flatten_dict(jax.tree.map(np.asarray, v["params"]))
  src = traverse_util.flatten_dict(backbone_vars["params"])
  for k in params:
    if k[0] == "backbone":
      params[k] = np.asarray(src[k[1:]])
  stats = traverse_util.flatten_dict(v["batch_stats"])
  src_s = traverse_util.flatten_dict(backbone_vars["batch_stats"])
  stats = {k: np.asarray(src_s[k[1:]]) for k in stats}
  return model, {"params": traverse_util.unflatten_dict(params),
                 "batch_stats": traverse_util.unflatten_dict(stats)}


def trunk_features(backbone: Backbone, start_block: int) -> Callable:
  """Jit-able `(backbone_vars, images (ImageNet-normalised) [B, H, W, 3]) -> trunk output`.

  The frozen trunk (inference-mode BatchNorm). The weights are an argument, not
  constants closed over: one compiled program serves every domain and batch of
  the same shape, and the program carries no copy of the weights.
  """
  tap = trunk_tap(backbone, start_block)
  m = backbone.clone(taps=(tap,))
  return lambda backbone_vars, x: m.apply(backbone_vars, x, train=False)[tap]


def param_labels(params, trainable: str = "bn_head", bn_bias: str = "frozen"):
  """'train' / 'frozen' per leaf: BN affine (`adapt.bn_labels`) + the head, or everything.

  `bn_bias="frozen"` keeps every BatchNorm shift (beta) at its pretrained value: Deep SVDD's
  no-bias rule (Ruff et al. 2018, Prop. 2): with a trainable additive term the network can
  map every input to a constant and reach zero loss (hypersphere collapse).
  """
  if trainable not in TRAINABLE:
    raise ValueError(f"unknown uda.trainable {trainable!r}; known: {', '.join(TRAINABLE)}")
  if bn_bias not in BN_BIAS:
    raise ValueError(f"unknown uda.bn_bias {bn_bias!r}; known: {', '.join(BN_BIAS)}")
  flat = traverse_util.flatten_dict(adapt.bn_labels(params))
  def label(k, v):
    if bn_bias == "frozen" and v == "bn" and k[-1] == "bias":
      return "frozen"
    return "train" if trainable == "all" or k[0] == "head" or v == "bn" else "frozen"
  return traverse_util.unflatten_dict({k: label(k, v) for k, v in flat.items()})


@dataclasses.dataclass(frozen=True)
class Settings:
  """Training settings of one run (static: part of the jit cache key)."""
  alignment: str = "contrastive"
  lambda_ad: float = 1.0
  lambda_uda: float = 1.0
  tau: float = 0.1
  lr: float = 1e-3
  steps: int = 100
  batch: int = 32
  trainable: str = "bn_head"
  grl_scale: float = 1.0
  contrastive: str = "negatives"   # denominator of Eqs. 8-9: negatives (paper) | infonce
  bn_bias: str = "frozen"          # BatchNorm beta: frozen (no-bias rule) | trained


def make_step(model: Model, s: Settings, params_template):
  """`(step, optimizer)`: the pure update of Eq. 5 + the alignment loss; jit it once.

  `step(params, opt_state, stats, hs, ht, dom, mu) -> (params, opt_state, aux)`.
  `params` = {"model": ..., "disc": ...}; `hs [B, ...]` source trunk features,
  `ht [B, ...]` target trunk features with `dom [B]` bool (in D). The loop
  (batch order, logging) is `experiments.uda_train.train`.
  """
  if s.alignment not in ALIGNMENTS + ("none",):
    raise ValueError(f"unknown uda.alignment {s.alignment!r}; known: none, {', '.join(ALIGNMENTS)}")
  labels = {"model": param_labels(params_template["model"], s.trainable, s.bn_bias),
            "disc": jax.tree.map(lambda _: "train", params_template["disc"])}
  opt = optax.multi_transform({"train": optax.adam(s.lr), "frozen": optax.set_to_zero()}, labels)
  disc = Discriminator()

  def loss_fn(params, stats, hs, ht, dom, mu):
    f = lambda h: model.apply({"params": params["model"], "batch_stats": stats}, h)
    zs = f(hs)
    l_ad = losses.svdd_loss(zs, mu)
    if s.alignment == "none":
      return l_ad, {"l_ad": l_ad, "l_uda": jnp.zeros(())}
    zt = f(ht)
    if s.alignment == "contrastive":
      l_uda = losses.contrastive_alignment(zs, zt, dom, s.tau, s.contrastive)
    elif s.alignment == "mmd":
      l_uda = losses.mmd(zs, zt, y_weights=dom.astype(jnp.float32))
    else:
      z = losses.gradient_reversal(jnp.concatenate([zs, zt]), s.grl_scale)
      logits = disc.apply({"params": params["disc"]}, z)
      y = jnp.concatenate([jnp.ones(zs.shape[0]), jnp.zeros(zt.shape[0])])
      w = jnp.concatenate([jnp.ones(zs.shape[0]), dom.astype(jnp.float32)])
      l_uda = jnp.sum(w * optax.sigmoid_binary_cross_entropy(logits, y)) / jnp.sum(w)
    return s.lambda_ad * l_ad + s.lambda_uda * l_uda, {"l_ad": l_ad, "l_uda": l_uda}

  def step(params, opt_state, stats, hs, ht, dom, mu):
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, hs, ht, dom, mu)
    upd, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, upd), opt_state, {**aux, "loss": loss}

  return step, opt


def make_embed(model: Model) -> Callable:
  """Jit-able `embed(variables, h [B, ...]) -> f(x) [B, out_dim]`."""
  return lambda variables, h: model.apply(variables, h)


def init_params(model: Model, variables: dict, key: jax.Array) -> dict:
  """The trained tree of `make_step`: `{"model": f's params, "disc": a fresh discriminator}`."""
  disc = Discriminator().init(key, jnp.zeros((1, model.out_dim)))["params"]
  return {"model": variables["params"], "disc": disc}


def batch_indices(key: jax.Array, n_source: int, dominant: np.ndarray, batch: int,
                  alignment: str) -> tuple[jax.Array, jax.Array]:
  """One step's `(source_idx [b_s], target_idx [b_t])`, drawn with `key`.

  Without replacement when there are enough samples. For the contrastive loss
  half of the target batch comes from D and half from outside it (the
  negatives of Eq. 8; the caller passes only D and its negatives), when both
  exist. `dominant` is a host `[N_t]` bool.
  """
  k_s, k_d, k_r = jax.random.split(key, 3)
  i_s = jax.random.choice(k_s, n_source, (min(batch, n_source),), replace=n_source < batch)
  dom_idx, rest_idx = np.flatnonzero(dominant), np.flatnonzero(~dominant)
  n_t = len(dominant)
  if alignment == "contrastive" and len(rest_idx) and len(dom_idx):
    nb = batch // 2
    i_t = jnp.concatenate([
        jax.random.choice(k_d, dom_idx, (nb,), replace=len(dom_idx) < nb),
        jax.random.choice(k_r, rest_idx, (batch - nb,), replace=len(rest_idx) < batch - nb)])
  else:
    i_t = jax.random.choice(k_d, n_t, (min(batch, n_t),), replace=n_t < batch)
  return i_s, i_t


def training_info(hist: dict, var0: float, var1: float) -> dict:
  """Summary of a run from its stacked step metrics `hist` (host arrays) and feature variances."""
  info = {"loss_first": float(hist["loss"][0]), "loss_last": float(hist["loss"][-1]),
          "l_ad_first": float(hist["l_ad"][0]), "l_ad_last": float(hist["l_ad"][-1]),
          "var_ratio": var1 / max(var0, 1e-12)}
  if info["var_ratio"] < 1e-2:
    info["warning"] = (f"feature variance fell to {info['var_ratio']:.1e} of its initial value: "
                       "hypersphere collapse; lower uda.lr or uda.steps")
  return info
