"""UDA for one-class anomaly detection (Mejri et al.): Deep SVDD on source normals,
jointly aligned with the dominant cluster of the unlabelled target set.

Model f (Eq. 5's feature map): a pretrained EfficientNet-Lite split in two.
  trunk  stem .. the block before `start_block`: frozen, run once per image
         (`trunk_features`) and cached by the caller;
  tail   the remaining blocks, the 1x1 head conv + BatchNorm, global average
         pooling, then a bias-free linear projection head -> f(x) [B, out_dim].
BatchNorm uses its running statistics (no batch dependence, so no
statistics-based shortcut to a constant output).

Training (Adam, `train`): L = lambda1 * L_AD + lambda2 * L_UDA with
  L_AD  = mean_s ||f(x_s) - mu||^2, mu = mean of f over the source at init (Eq. 5);
  L_UDA = one of
    contrastive  Eqs. 8-9 (`losses.contrastive_alignment`): source vs target
                 samples of the dominant set D, negatives = target outside D;
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

ALIGNMENTS = ("contrastive", "mmd", "adversarial")
TRAINABLE = ("bn_head", "all")


def stage_start(module: EfficientNetLite, stage: int) -> int:
  """Index of the first block of `stage` (1-based, as the `stageN` taps)."""
  for i, spec in enumerate(block_specs(module.width, module.depth)):
    if spec[5] == stage:
      return i
  raise ValueError(f"stage {stage} does not exist")


class Model(nn.Module):
  """Tail of an EfficientNet-Lite + bias-free projection head: `h -> f(x) [B, out_dim]`."""
  width: float
  depth: float
  start_block: int
  out_dim: int = 128

  @nn.compact
  def __call__(self, h):
    tail = EfficientNetLite(width=self.width, depth=self.depth, start_block=self.start_block,
                            name="backbone")
    pooled = tail(h, train=False)["pooled"]
    return nn.Dense(self.out_dim, use_bias=False, name="head")(pooled)


class Discriminator(nn.Module):
  """Domain classifier on features (logit: source = 1)."""
  hidden: int = 64

  @nn.compact
  def __call__(self, z):
    z = nn.relu(nn.Dense(self.hidden)(z))
    return nn.Dense(1)(z)[:, 0]


def init_model(backbone: EfficientNetLite, backbone_vars: dict, start_block: int,
               out_dim: int, key: jax.Array, h_example: jax.Array):
  """`(model, variables)` with the tail's pretrained weights and a random head."""
  model = Model(backbone.width, backbone.depth, start_block, out_dim)
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


def trunk_features(backbone: EfficientNetLite, backbone_vars: dict, start_block: int) -> Callable:
  """Jit-able `images (ImageNet-normalised) [B, H, W, 3] -> trunk output` (frozen)."""
  m = backbone.clone(taps=(f"block{start_block - 1}",))
  return lambda x: m.apply(backbone_vars, x, train=False)[f"block{start_block - 1}"]


def param_labels(params, trainable: str = "bn_head"):
  """'train' / 'frozen' per leaf: BN affine (`adapt.bn_labels`) + the head, or everything."""
  if trainable not in TRAINABLE:
    raise ValueError(f"unknown uda.trainable {trainable!r}; known: {', '.join(TRAINABLE)}")
  flat = traverse_util.flatten_dict(adapt.bn_labels(params))
  return traverse_util.unflatten_dict(
      {k: "train" if trainable == "all" or k[0] == "head" or v == "bn" else "frozen"
       for k, v in flat.items()})


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


_CACHE: dict = {}


def _model_key(model: Model):
  return (model.width, model.depth, model.start_block, model.out_dim)


def cached_step(model: Model, s: Settings, params_template):
  """`make_step` memoised on (model shape, settings): one compilation per configuration."""
  key = ("step", _model_key(model), s)
  if key not in _CACHE:
    _CACHE[key] = make_step(model, s, params_template)
  return _CACHE[key]


def make_step(model: Model, s: Settings, params_template):
  """Jitted `step(params, opt_state, stats, hs, ht, dom, mu) -> (params, opt_state, aux)`.

  `params` = {"model": ..., "disc": ...}; `hs [B, ...]` source trunk features,
  `ht [B, ...]` target trunk features with `dom [B]` bool (in D).
  """
  if s.alignment not in ALIGNMENTS + ("none",):
    raise ValueError(f"unknown uda.alignment {s.alignment!r}; known: none, {', '.join(ALIGNMENTS)}")
  labels = {"model": param_labels(params_template["model"], s.trainable),
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
      l_uda = losses.contrastive_alignment(zs, zt, dom, s.tau)
    elif s.alignment == "mmd":
      l_uda = losses.mmd(zs, zt, y_weights=dom.astype(jnp.float32))
    else:
      z = losses.gradient_reversal(jnp.concatenate([zs, zt]), s.grl_scale)
      logits = disc.apply({"params": params["disc"]}, z)
      y = jnp.concatenate([jnp.ones(zs.shape[0]), jnp.zeros(zt.shape[0])])
      w = jnp.concatenate([jnp.ones(zs.shape[0]), dom.astype(jnp.float32)])
      l_uda = jnp.sum(w * optax.sigmoid_binary_cross_entropy(logits, y)) / jnp.sum(w)
    return s.lambda_ad * l_ad + s.lambda_uda * l_uda, {"l_ad": l_ad, "l_uda": l_uda}

  @jax.jit
  def step(params, opt_state, stats, hs, ht, dom, mu):
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, hs, ht, dom, mu)
    upd, opt_state = opt.update(g, opt_state, params)
    return optax.apply_updates(params, upd), opt_state, {**aux, "loss": loss}

  return step, opt


def embed(model: Model, variables, h: np.ndarray, batch: int = 64) -> np.ndarray:
  """f(x) `[N, out_dim]` of trunk features `h [N, ...]`, in batches."""
  key = ("embed", _model_key(model))
  if key not in _CACHE:
    _CACHE[key] = jax.jit(lambda v, x: model.apply(v, x))
  fn = _CACHE[key]
  out = [np.asarray(fn(variables, jnp.asarray(h[i:i + batch]))) for i in range(0, len(h), batch)]
  return np.concatenate(out) if out else np.zeros((0, model.out_dim), np.float32)


def scores(model: Model, variables, h: np.ndarray, mu: np.ndarray) -> np.ndarray:
  """Anomaly scores ||f(x) - mu||^2 `[N]`."""
  z = embed(model, variables, h)
  return np.sum((z - mu) ** 2, axis=1)


def train(model: Model, variables, hs: np.ndarray, ht: np.ndarray, dominant: np.ndarray,
          s: Settings, key: jax.Array, progress: Callable | None = None):
  """Trains f; returns `(variables, mu, info)`.

  Args:
    hs: source trunk features `[N_s, ...]`; ht: target train trunk features
      `[N_t, ...]`; dominant: `[N_t]` bool, the set D aligned with the source
      (dominant cluster, few-shot labels, oracle normals, or all).
  """
  chex.assert_equal(len(ht), len(dominant))
  z0 = embed(model, variables, hs)
  mu = jnp.asarray(z0.mean(0))
  var0 = float(z0.var(0).sum())
  k_disc, k_loop = jax.random.split(key)
  params = {"model": variables["params"],
            "disc": Discriminator().init(k_disc, jnp.zeros((1, model.out_dim)))["params"]}
  step, opt = cached_step(model, s, params)
  opt_state = opt.init(params)
  rng = np.random.default_rng(int(jax.random.randint(k_loop, (), 0, 2 ** 31 - 1)))
  dom_idx, rest_idx = np.flatnonzero(dominant), np.flatnonzero(~dominant)
  hist = []
  it = range(s.steps) if progress is None else progress(range(s.steps), desc="uda", leave=False)
  for _ in it:
    i_s = rng.choice(len(hs), min(s.batch, len(hs)), replace=len(hs) < s.batch)
    if s.alignment == "contrastive" and len(rest_idx) and len(dom_idx):
      # half the target batch from D, half from outside it (the negatives)
      nb = s.batch // 2
      i_t = np.r_[rng.choice(dom_idx, nb, replace=len(dom_idx) < nb),
                  rng.choice(rest_idx, s.batch - nb, replace=len(rest_idx) < s.batch - nb)]
    else:
      i_t = rng.choice(len(ht), min(s.batch, len(ht)), replace=len(ht) < s.batch)
    params, opt_state, aux = step(params, opt_state, variables["batch_stats"],
                                  jnp.asarray(hs[i_s]), jnp.asarray(ht[i_t]),
                                  jnp.asarray(dominant[i_t]), mu)
    hist.append({k: float(v) for k, v in aux.items()})
    if not np.isfinite(hist[-1]["loss"]):
      raise FloatingPointError(f"non-finite UDA loss at step {len(hist) - 1}; lower uda.lr")
  out = {"params": params["model"], "batch_stats": variables["batch_stats"]}
  z1 = embed(model, out, hs)
  info = {"loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"],
          "l_ad_first": hist[0]["l_ad"], "l_ad_last": hist[-1]["l_ad"],
          "var_ratio": float(z1.var(0).sum()) / max(var0, 1e-12)}
  if info["var_ratio"] < 1e-2:
    info["warning"] = (f"feature variance fell to {info['var_ratio']:.1e} of its initial value: "
                       "hypersphere collapse; lower uda.lr or uda.steps")
  return out, np.asarray(mu), info
