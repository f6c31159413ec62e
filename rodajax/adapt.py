"""Test-time adaptation of the backbone's BatchNorm (RoDA, Alg. 1), as pure pieces.

Only BatchNorm scale and bias are trained (an `optax.multi_transform` whose
"frozen" branch is `set_to_zero`); every other parameter stays bit-identical.
One step (`make_step`): a minibatch of target images, its views
(`augment.views`), the patch features of every view with the current
parameters, then the method's loss against the fixed source memory bank.
The loop over minibatches (one pass of the adaptation images by default, as
Algorithm 1), the safeguard and logging live in `experiments/tta.py`.

Methods (`Settings.method`):
  none           PatchCore, no adaptation
  bn_stats       BatchNorm statistics re-estimated on the target adaptation
                 images, no gradient step (Schneider et al. 2020 with N = 0)
  moment         TTT++ moment matching against the source feature mean/cov
  kl             TTAC-style KL between Gaussians fitted to target and source
  hungarian      one-to-one assignment (scipy) of `hungarian_patches` target
                 patches to as many randomly drawn bank entries
  sinkhorn       continuous OT: sum gamma * C
  discrete       discretised plan (Eq. 6), one view per image
  discrete_copy  discretised plan, `views` identical copies per image
  roda           discretised plan, `views` rotated / flipped views (RoDA)

BatchNorm statistics (`BN_MODES`), the same while adapting and at test time:
"source" keeps the source running statistics; "target_stats" replaces them by
the statistics of the adaptation images; "target_mean" takes the means from the
adaptation images and keeps the source variances (beyond the paper; a shift of
the activations is re-centred, added variance such as sensor noise is not
normalised away); "geometric" takes the target means and, per channel, the
geometric mean sqrt(var_s var_t) of the two variances (beyond the paper: half
way between target_stats and target_mean on the log-variance scale, in every
layer: half of a loss of scale such as contrast is undone, half of added
variance such as sensor noise is divided into the signal); "routed" (the
default) takes "geometric" where the stem BatchNorm's log variance ratio
(`stem_log_var_ratio`) exceeds a threshold (added noise: it inflates the first
layer's variance) and "target_stats" elsewhere (beyond the paper;
docs/results.md); "prior" mixes source and target statistics with an N-sample
source prior (Schneider et al., NeurIPS 2020, Eq. 3):
mu = N / (N + n) mu_s + n / (N + n) mu_t, likewise for the variance.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from rodajax import augment, losses, scoring, transport

# method -> (loss, number of views (None = Settings.views), augmentation mode)
METHODS = {
    "none": (None, 1, "copy"),
    "bn_stats": (None, 1, "copy"),
    "moment": ("moment", 1, "copy"),
    "kl": ("kl", 1, "copy"),
    "hungarian": ("hungarian", 1, "copy"),
    "sinkhorn": ("continuous", 1, "copy"),
    "discrete": ("discrete", 1, "copy"),
    "discrete_copy": ("discrete", None, "copy"),
    "roda": ("discrete", None, "dihedral"),
}

BN_MODES = ("source", "target_stats", "target_mean", "geometric", "routed", "prior")
# "routed": the stem log variance ratio above which the statistics are "geometric" (the middle
# of the dev sets' gap: 1.62-2.35 under gaussian noise, at most 0.75 otherwise; docs/results.md)
NOISE_RATIO = 1.2
# The keys of `holdout_criterion`: the last two only with synthetic defects (z_pseudo).
HOLDOUT_CRITERIA = ("transport", "nn", "synthetic", "synthetic_gain")


def check_method(name: str) -> None:
  if name not in METHODS:
    raise ValueError(f"unknown adaptation method {name!r}; known: {', '.join(METHODS)}")


def is_gradient_method(name: str) -> bool:
  check_method(name)
  return METHODS[name][0] is not None


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one adaptation step computes (hashable: a static argument under jit).

  Attributes:
    method: a key of `METHODS`.
    views: views per image for `roda` / `discrete_copy`.
    target_patches: target patches per transport problem (0 = every patch of
      every view of the minibatch, Alg. 1 as written).
    bank_patches: bank entries per transport problem (0 = the whole bank).
      Equal to `target_patches` keeps the problem balanced (see
      `transport.balanced_subsets`).
    epsilon: Sinkhorn regularisation, relative to the mean cost.
    sinkhorn_threshold, sinkhorn_max_iterations: Sinkhorn stopping rule.
    online_above: problems with more than this many cost entries use the
      online (chunked) geometry; smaller ones hold the cost matrix.
    chunk: rows per chunk for online costs and argmaxes.
    kl_reg: covariance ridge of the KL baseline.
    hungarian_patches: patches per side of the Hungarian baseline.
    trim: discrete methods: share of each problem's target patches, the
      farthest from the bank, left out of the loss (0 = Eq. 6 as written;
      `transport.discrete_loss`).
  """
  method: str = "roda"
  views: int = 4
  target_patches: int = 4096
  bank_patches: int = 4096
  epsilon: float = 0.02
  sinkhorn_threshold: float = 1e-3
  sinkhorn_max_iterations: int = 200
  online_above: int = 64 * 2 ** 20
  chunk: int = 2048
  kl_reg: float = 1e-3
  hungarian_patches: int = 512
  trim: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.trim < 1.0:
      raise ValueError(f"adapt.trim must be in [0, 1) (a share of target patches), got {self.trim}")

  @property
  def n_views(self) -> int:
    n = METHODS[self.method][1]
    return self.views if n is None else n


class Source(NamedTuple):
  """The source side of every loss: `bank [M, D]`, feature `mean [D]`, `cov [D, D]`.

  `valid [M]` (bool, optional) marks the real rows of a bank padded for
  `jax.vmap` across classes (`scoring.pad_banks`); None = every row.
  """
  bank: jax.Array
  mean: jax.Array
  cov: jax.Array
  valid: jax.Array | None = None


class AdaptState(NamedTuple):
  """Everything a step changes: params (BN affine trained), batch_stats, opt_state."""
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self) -> dict:
    return {"params": self.params, "batch_stats": self.batch_stats}


def bn_labels(params) -> Any:
  """'bn' for BatchNorm scale/bias (modules that own a `scale`), 'frozen' elsewhere."""
  flat = traverse_util.flatten_dict(params)
  bn_modules = {k[:-1] for k in flat if k[-1] == "scale"}
  return traverse_util.unflatten_dict(
      {k: ("bn" if k[:-1] in bn_modules else "frozen") for k in flat})


def split_bn(params):
  """Flat dicts (BatchNorm affine, everything else) of a params tree."""
  flat = traverse_util.flatten_dict(params)
  labels = traverse_util.flatten_dict(bn_labels(params))
  return ({k: v for k, v in flat.items() if labels[k] == "bn"},
          {k: v for k, v in flat.items() if labels[k] != "bn"})


def class_axes(params) -> Any:
  """`jax.vmap` axes for classes sharing one backbone: 0 on BatchNorm affine leaves, None elsewhere.

  Classes adapted together differ only in BatchNorm affine parameters and
  statistics; the frozen weights are held once, not stacked per class (less
  memory, and the convolutions stay the unbatched ones: the same numbers as
  one class at a time).
  """
  return jax.tree.map(lambda lab: 0 if lab == "bn" else None, bn_labels(params))


def class_map(fn: Callable, in_axes: tuple, batch_size: int = 0) -> Callable:
  """`fn` mapped over a leading class axis: `jax.vmap`, or groups of classes in sequence.

  `in_axes`: per argument 0 (mapped) or None (shared), or a tree prefix of
  the argument of such (`class_axes`). Every output gets the class axis.
  `batch_size` = 0 vmaps all classes in one batch (accelerators: one wide
  computation); k > 1 runs `lax.map` over groups of k classes, each group
  vmapped; k = 1 runs `lax.map` over the classes with no vmap inside (on a
  CPU: class after class inside one compiled program, no per-class
  dispatch, no batched-kernel overhead, and less to compile than a vmap of
  size 1 per group: benchmarks/README.md, "Session 37").
  Either way the result equals `fn` applied class by class.
  """
  if batch_size <= 0:
    return jax.vmap(fn, in_axes=in_axes)
  is_axis = lambda x: x is None or isinstance(x, int)

  def mapped(*args):
    sizes = {a.shape[0] for ax, sub in zip(in_axes, args) if ax is not None
             for a in jax.tree.leaves(jax.tree.map(lambda x, y: y if x is not None else None,
                                                   ax, sub, is_leaf=is_axis))}
    n = sizes.pop()

    def one(i):
      pick = lambda ax, sub: (sub if ax is None else jax.tree.map(lambda a: a[i], sub))
      return fn(*[jax.tree.map(pick, ax, sub, is_leaf=is_axis) for ax, sub in zip(in_axes, args)])
    return jax.lax.map(one, jnp.arange(n), batch_size=None if batch_size == 1 else batch_size)
  return mapped


def stack_classes(variables: list[dict]) -> dict:
  """Per-class variables of one backbone -> one tree for `class_axes`-vmapped functions.

  BatchNorm affine leaves and `batch_stats` get a leading class axis; every
  other leaf is taken from the first class (they are the shared frozen weights).
  """
  stack = lambda *a: jnp.stack(a)
  bn = jax.tree.map(stack, *[split_bn(v["params"])[0] for v in variables])
  return {"params": with_bn(variables[0]["params"], bn),
          "batch_stats": jax.tree.map(stack, *[v["batch_stats"] for v in variables])}


def unstack_class(variables: dict, i: int) -> dict:
  """Class `i`'s variables from a `stack_classes` tree."""
  bn = {k: v[i] for k, v in split_bn(variables["params"])[0].items()}
  return {"params": with_bn(variables["params"], bn),
          "batch_stats": jax.tree.map(lambda a: a[i], variables["batch_stats"])}


def with_bn(params, bn_flat: dict) -> Any:
  """`params` with its BatchNorm affine leaves replaced by `bn_flat` (a `split_bn` dict)."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(params), **bn_flat})


def make_optimizer(params, learning_rate: float, name: str = "adam") -> optax.GradientTransformation:
  """Optax optimiser that updates BatchNorm affine parameters only."""
  if name not in ("adam", "sgd"):
    raise ValueError(f"unknown optimizer {name!r}; known: adam, sgd")
  opt = {"adam": optax.adam, "sgd": optax.sgd}[name](learning_rate)
  return optax.multi_transform({"bn": opt, "frozen": optax.set_to_zero()}, bn_labels(params))


def init_state(variables: dict, optimizer: optax.GradientTransformation) -> AdaptState:
  return AdaptState(variables["params"], variables["batch_stats"],
                    optimizer.init(variables["params"]))


def check_class_banks(settings: Settings, sizes) -> None:
  """Refuses class-stacked (padded) banks the step cannot draw from like the unpadded ones.

  `sizes`: the real rows of each class's bank. OT and Hungarian methods draw
  `bank_patches` (`hungarian_patches`) entries per problem; with banks of
  different sizes every bank needs at least that many rows.
  """
  sizes = [int(x) for x in sizes]
  kind = METHODS[settings.method][0]
  if len(set(sizes)) <= 1 or kind in (None, "moment", "kl"):
    return
  need = settings.hungarian_patches if kind == "hungarian" else settings.bank_patches
  if need <= 0 or min(sizes) < need:
    raise ValueError(
        f"classes stacked for vmap have memory banks of {min(sizes)}..{max(sizes)} rows; "
        f"{settings.method} draws {'the whole bank' if need <= 0 else need} per problem. Set "
        f"adapt.{'hungarian_patches' if kind == 'hungarian' else 'bank_patches'} to at most "
        f"{min(sizes)}, or adapt the classes one by one")


def transport_problem(z: jax.Array, bank: jax.Array, key: jax.Array, settings: Settings,
                      valid: jax.Array | None = None):
  """One step's transport problem: `(zs [n, D], bank_s [m, D], target_idx [n], potentials)`.

  `z [N, D]` are all target patches of all views. Subsets are drawn by
  `transport.balanced_subsets`; the potentials are not differentiated.
  """
  t_idx, b_idx = transport.balanced_subsets(key, z.shape[0], bank.shape[0],
                                            settings.target_patches, settings.bank_patches, valid)
  zs = z[t_idx]
  bs = bank if b_idx is None else bank[b_idx]
  online = zs.shape[0] * bs.shape[0] > settings.online_above
  pot = transport.sinkhorn_potentials(jax.lax.stop_gradient(zs), bs, settings.epsilon, True,
                                      settings.sinkhorn_threshold, settings.sinkhorn_max_iterations,
                                      settings.chunk if online else None)
  return zs, bs, t_idx, pot


def method_loss(z: jax.Array, source: Source, key: jax.Array,
                settings: Settings) -> tuple[jax.Array, dict]:
  """The alignment loss of `settings.method` on target patch features `z [N, D]`.

  Returns `(loss, metrics)`; OT methods add Sinkhorn's iterations,
  convergence and marginal error, discrete ones the plan diagnostics
  (`transport.plan_diagnostics`).
  """
  chex.assert_rank(z, 2)
  kind = METHODS[settings.method][0]
  if kind == "moment":
    return losses.moment_matching(z, source.mean, source.cov), {}
  if kind == "kl":
    return losses.gaussian_kl(z, source.mean, source.cov, settings.kl_reg), {}
  if kind == "hungarian":
    n = min(settings.hungarian_patches, z.shape[0], source.bank.shape[0])
    t_idx, b_idx = transport.balanced_subsets(key, z.shape[0], source.bank.shape[0], n, n,
                                              source.valid)
    bs = source.bank if b_idx is None else source.bank[b_idx]
    return transport.hungarian_loss(z[t_idx], bs), {}
  zs, bs, _, pot = transport_problem(z, source.bank, key, settings, source.valid)
  metrics = {"sinkhorn_iters": pot.n_iters, "sinkhorn_converged": pot.converged,
             "sinkhorn_error": pot.error, "n_target": zs.shape[0], "n_bank": bs.shape[0]}
  if kind == "continuous":
    return transport.continuous_loss(zs, bs, pot, settings.chunk), metrics
  zsg = jax.lax.stop_gradient(zs)
  row, col = transport.plan_argmaxes(zsg, bs, pot.f, pot.g, chunk=settings.chunk)
  metrics.update(transport.plan_diagnostics(zsg, bs, row, col))
  return transport.discrete_loss(zs, bs, row, col, settings.trim), metrics


def make_step(settings: Settings, extract: Callable, optimizer: optax.GradientTransformation,
              views: Callable = augment.views) -> Callable:
  """The pure BN-only update of `settings.method`; jit it once in the experiment.

  `step(state, source, images [B, R, R, 3] uint8, key) -> (state, metrics)`.
  `extract(variables, images) -> [B', h, w, D]` uses the running statistics in
  `state.batch_stats`. Point clouds: `images` are clouds `[B, N, 3]`,
  `extract` gives `[B', G, D]` and `views` is `augment.point_views`. A step whose loss is not finite returns the state it
  was given (metrics["finite"] is False), so a diverging run keeps its last
  good parameters.
  """
  check_method(settings.method)
  if not is_gradient_method(settings.method):
    raise ValueError(f"{settings.method!r} takes no gradient step")

  def loss_fn(bn_flat, frozen_flat, batch_stats, images, key, source):
    params = traverse_util.unflatten_dict({**bn_flat, **frozen_flat})
    k_view, k_loss = jax.random.split(key)
    x = views(images, k_view, settings.n_views, METHODS[settings.method][2])
    z = extract({"params": params, "batch_stats": batch_stats}, x)
    return method_loss(z.reshape(-1, z.shape[-1]), source, k_loss, settings)

  def step(state: AdaptState, source: Source, images: jax.Array, key: jax.Array):
    chex.assert_rank(images, {3, 4})
    # Differentiate w.r.t. the BatchNorm affine parameters only: XLA then drops
    # every convolution-kernel gradient (3-4x less work than a full backward).
    bn_flat, frozen_flat = split_bn(state.params)
    (loss, metrics), g_bn = jax.value_and_grad(loss_fn, has_aux=True)(
        bn_flat, frozen_flat, state.batch_stats, images, key, source)
    grads = traverse_util.unflatten_dict(
        {**g_bn, **jax.tree.map(jnp.zeros_like, frozen_flat)})
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_bn = split_bn(optax.apply_updates(state.params, updates))[0]
    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new_bn)]))
    # How far the step moved the BN parameters, and how large the gradient that asked for it
    # was (Adam's first steps move each parameter by about the learning rate whatever the
    # gradient's size; SGD's by the learning rate times it).
    metrics = {**metrics, "grad_norm": optax.global_norm(g_bn),
               "update_norm": optax.global_norm(split_bn(updates)[0])}
    keep = lambda a, b: jnp.where(finite, a, b)
    # Frozen leaves pass through untouched (bit-identical, and unbatched under a class vmap).
    new = AdaptState(with_bn(state.params, jax.tree.map(keep, new_bn, bn_flat)), state.batch_stats,
                     jax.tree.map(keep, opt_state, state.opt_state))
    return new, {"loss": loss, "finite": finite, **metrics}

  return step


def batch_moments(module, variables: dict, x: jax.Array) -> Any:
  """Per-layer BatchNorm batch statistics (mean, var) of the module's input `x`.

  `x`: normalised images `[B, H, W, 3]`, or what a point encoder sees
  (`points.encoder_input`).

  Read off Flax's running-average update: new = m * old + (1 - m) * batch.
  """
  m = module.bn_momentum
  _, upd = module.apply(variables, x, train=True, mutable=["batch_stats"])
  return jax.tree.map(lambda new, old: (new - m * old) / (1 - m),
                      upd["batch_stats"], variables["batch_stats"])


def mix_batch_stats(source_stats, target_stats, n_target, prior: float) -> Any:
  """Schneider et al. 2020, Eq. 3: (N mu_s + n mu_t) / (N + n) per statistic.

  `prior` = N (source prior strength, in images); `n_target` = n, a number or
  one per class `[C]` when the statistics carry a leading class axis. N = 0
  gives the target statistics; N -> inf the source ones.
  """
  n = jnp.asarray(n_target, jnp.float32)
  w = n / (n + prior)

  def mix(s, t):
    wb = w.reshape(w.shape + (1,) * (s.ndim - w.ndim))
    return (1.0 - wb) * s + wb * t
  return jax.tree.map(mix, source_stats, target_stats)


def stem_log_var_ratio(source_stats, target_stats, stem: str) -> jax.Array:
  """Mean over channels of log(var_target / var_source) at BatchNorm `stem`: `[]`, or `[K]`.

  `stem` names the first BatchNorm of the network in `batch_stats` (e.g. "_bn0",
  `backbones.stem_batchnorm`); with a leading class axis (`[K, C]` leaves) one
  ratio per class. Channels with a zero source variance are left out. Additive
  sensor noise raises it (1.62-2.35 on the dev sets at gaussian noise severity
  5); blur, brightness and contrast lower it or leave it (at most 0.75, clean
  splits included; docs/results.md).
  """
  for name, stats in (("source", source_stats), ("target", target_stats)):
    if stem not in stats or "var" not in stats[stem]:
      raise ValueError(f"{name} batch_stats have no BatchNorm {stem!r} with a 'var' "
                       f"(layers: {', '.join(sorted(stats)[:8])}, ...)")
  s, t = source_stats[stem]["var"], target_stats[stem]["var"]
  chex.assert_equal_shape([s, t])
  # Channels the source never activates (running variance 0: 4 of EfficientNet-Lite0's 32
  # stem channels) are left out; their target variance is float round-off.
  live = s > 0
  r = jnp.log(jnp.maximum(t, 1e-12)) - jnp.log(jnp.where(live, s, 1.0))
  return jnp.sum(jnp.where(live, r, 0.0), axis=-1) / jnp.maximum(jnp.sum(live, axis=-1), 1)


def bn_statistics(mode: str, source_stats, target_stats, n_target, prior: float, *,
                  stem: str | None = None, noise_ratio: float = NOISE_RATIO) -> Any:
  """The BatchNorm running statistics a `BN_MODES` mode tests and adapts with.

  `source_stats`, `target_stats`: Flax `batch_stats` trees (`{..: {"mean", "var"}}`,
  `[C]` per layer, or `[K, C]` with a leading class axis); `n_target`: the
  number of adaptation images behind `target_stats` (per class `[K]` with a
  class axis; only "prior" uses it, with `prior` = N images). "routed" needs
  `stem` (the first BatchNorm's name) and takes "geometric" where
  `stem_log_var_ratio > noise_ratio`, per class with a class axis.
  """
  if mode == "source":
    return source_stats
  if mode == "target_stats":
    return target_stats
  if mode in ("target_mean", "geometric"):
    def pick(path, s, t):
      name = getattr(path[-1], "key", None)
      if name not in ("mean", "var"):
        raise ValueError(f"batch_stats leaf {jax.tree_util.keystr(path)} is neither a mean "
                         "nor a var")
      if name == "mean":
        return t
      return s if mode == "target_mean" else jnp.sqrt(s * t)
    return jax.tree_util.tree_map_with_path(pick, source_stats, target_stats)
  if mode == "routed":
    if stem is None:
      raise ValueError("bn_mode 'routed' needs the stem BatchNorm's name (stem=...)")
    noisy = stem_log_var_ratio(source_stats, target_stats, stem) > noise_ratio
    geo = bn_statistics("geometric", source_stats, target_stats, n_target, prior)

    def route(g, t):
      return jnp.where(noisy.reshape(noisy.shape + (1,) * (t.ndim - noisy.ndim)), g, t)
    return jax.tree.map(route, geo, target_stats)
  if mode == "prior":
    return mix_batch_stats(source_stats, target_stats, n_target, prior)
  raise ValueError(f"unknown BatchNorm mode {mode!r}; use one of {', '.join(BN_MODES)}")


def transport_criterion(z: jax.Array, source: Source, key: jax.Array,
                        settings: Settings) -> jax.Array:
  """The discretised transport cost (Eq. 6) of target patches `z [N, D]` against the bank.

  The problem of one adaptation step (`transport_problem`: balanced subsets
  drawn with `key`), not differentiated: a scalar, in squared feature-distance
  units. The safeguard's `transport` criterion and the shift gate's statistic.
  """
  chex.assert_rank(z, 2)
  zs, bs, _, pot = transport_problem(z, source.bank, key, settings, source.valid)
  row, col = transport.plan_argmaxes(zs, bs, pot.f, pot.g, chunk=settings.chunk)
  return transport.discrete_loss(zs, bs, row, col)


def holdout_criterion(z: jax.Array, source: Source, key: jax.Array, settings: Settings,
                      z_pseudo: jax.Array | None = None) -> dict:
  """Label-free criteria of how well target patches `z [B, P, D]` fit the source bank.

  Used by the safeguard on held-out adaptation images (never on test labels):
    transport: the discretised transport cost of Eq. 6 (row and column pairs:
      it rises when target features collapse onto a few bank regions as well
      as when they drift away), on the same balanced subsets for a fixed key;
    nn: the mean nearest-neighbour distance to the whole bank (PatchCore's
      patch score, averaged).
  With `z_pseudo [B * copies, P, D]`, the features of the same images with a
  synthetic local defect each (`augment.pseudo_anomalies`, grouped per copy),
  also (lower is better, like the others):
    synthetic: 1 - AUROC of the image scores (max NN distance) of the
      defective copies against the held-out images themselves (Mann-Whitney,
      ties count half): does the model still rank a local change above the
      domain's normal variation;
    synthetic_gain: minus the mean rise of an image's score when the defect
      is added, in units of the held-out scores' standard deviation.
  """
  b, d = z.shape[0], z.shape[-1]
  z = z.reshape(b, -1, d)
  flat = z.reshape(-1, d)
  nn = scoring.nearest_distances(flat, source.bank, settings.chunk, source.valid)
  out = {"transport": transport_criterion(flat, source, key, settings), "nn": jnp.mean(nn)}
  if z_pseudo is None:
    return out
  chex.assert_equal(z_pseudo.shape[-1], d)
  s = jnp.max(nn.reshape(b, -1), axis=1)
  zp = z_pseudo.reshape(-1, d)
  sp = jnp.max(scoring.nearest_distances(zp, source.bank, settings.chunk, source.valid)
               .reshape(z_pseudo.shape[0], -1), axis=1)
  wins = jnp.mean((sp[:, None] > s[None, :]) + 0.5 * (sp[:, None] == s[None, :]))
  rise = jnp.mean(sp.reshape(-1, b) - s[None, :]) / (jnp.std(s) + 1e-6 * jnp.mean(s) + 1e-12)
  out.update({"synthetic": 1.0 - wins, "synthetic_gain": -rise})
  return out


GATE_STATISTICS = ("nn_median", "transport")


def gate_statistic(z: jax.Array, source: Source, key: jax.Array, settings: Settings,
                   name: str = "nn_median") -> jax.Array:
  """The shift gate's statistic of the source model's target patches `z [N, D]` (a scalar).

  nn_median: the median over patches of the nearest-neighbour distance to the
    bank (PatchCore's patch score). A corruption moves every patch, a defect a
    minority of them: the median follows the first and ignores the second.
  transport: `transport_criterion` (the mean discretised Eq. 6 cost; anomalous
    patches raise it, so clean test splits rich in defects read as shifted).
  """
  chex.assert_rank(z, 2)
  if name == "nn_median":
    return jnp.median(scoring.nearest_distances(z, source.bank, settings.chunk, source.valid))
  if name == "transport":
    return transport_criterion(z, source, key, settings)
  raise ValueError(f"unknown gate statistic {name!r}; use one of {', '.join(GATE_STATISTICS)}")


def shift_gate(value: jax.Array, reference: jax.Array, threshold: float) -> dict:
  """Is the target shifted? The source model's gate statistic against its clean reference.

  `value`: `gate_statistic` of the source model on the adaptation images;
  `reference`: the same statistic, same settings, on training normals held out
  of a bank fitted without them (what an unshifted target scores, including the
  out-of-sample rise a new normal image has). Beyond the paper: RoDA adapts
  only when `value >= threshold * reference`.
  Returns `{"ratio": value / reference, "shifted": bool}` (scalars).
  """
  value, reference = jnp.asarray(value), jnp.asarray(reference)
  chex.assert_rank([value, reference], 0)
  ratio = value / reference
  return {"ratio": ratio, "shifted": ratio >= threshold}


SELECTIONS = ("all", "lowest")


def selected_count(n: int, share: float) -> int:
  """How many of `n` adaptation images `select_lowest` keeps: floor(share x n), at least one."""
  if not 0.0 < share <= 1.0:
    raise ValueError(f"the share of adaptation images to keep must be in (0, 1], got {share}")
  return max(1, int(share * n + 1e-9))


def select_lowest(scores: jax.Array, share: float) -> jax.Array:
  """The adaptation images to adapt on: the lowest-scoring `share` of them (beyond the paper).

  `scores [n]`: each adaptation image's anomaly score (PatchCore's, the largest
  patch nearest-neighbour distance to the bank) under the model the steps will
  start from, i.e. the source weights with the BatchNorm statistics that
  `bn_statistics` takes from all the adaptation images. A drifted line's
  unlabelled images hold some defective ones; their patches are the far tail
  the discretised plan pulls towards the bank and their activations enter the
  target statistics. Scoring under the adapted statistics (not the source
  model's) keeps the ranking meaningful under a severe shift, where the source
  model can rank defects below normals (docs/results.md, "Which adaptation
  images"). Ties keep the lower index (a stable sort).

  Returns the kept indices `[selected_count(n, share)]` in ascending order (int32).
  """
  chex.assert_rank(scores, 1)
  k = selected_count(scores.shape[0], share)
  return jnp.sort(jnp.argsort(scores, stable=True)[:k]).astype(jnp.int32)


def assignment_analysis(z: jax.Array, labels: jax.Array, source: Source, key: jax.Array,
                        settings: Settings) -> dict:
  """Paper Fig. 5a for one minibatch: how much of the OT loss falls on anomalous patches.

  Args:
    z: target patch features of every view `[N, D]` (source parameters).
    labels: `[N]` bool, patch overlaps a ground-truth defect.
  Returns sums (add them over minibatches): patches, anomalous, anomalous
  patches some bank entry picks as its column argmax, and the loss weight of
  all / anomalous patches (continuous plan: the uniform row marginal, so the
  share equals the anomalous fraction; discrete: `transport.assignment_weights`).
  """
  kind = METHODS[settings.method][0]
  if kind not in ("continuous", "discrete"):
    raise ValueError(f"assignment analysis needs an OT method, not {settings.method!r}; use "
                     "sinkhorn, discrete, discrete_copy or roda")
  zs, bs, t_idx, pot = transport_problem(z, source.bank, key, settings, source.valid)
  lab = labels[t_idx]
  n = zs.shape[0]
  if kind == "continuous":
    w = jnp.full(n, 1.0 / n)
    picked = jnp.zeros(n, bool)
  else:
    row, col = transport.plan_argmaxes(zs, bs, pot.f, pot.g, chunk=settings.chunk)
    w = transport.assignment_weights(row, col)
    picked = jnp.zeros(n, bool).at[col].set(True)
  return {"patches": n, "anomalous": jnp.sum(lab), "anomalous_picked": jnp.sum(picked & lab),
          "weight": jnp.sum(w), "anomalous_weight": jnp.sum(jnp.where(lab, w, 0.0))}
