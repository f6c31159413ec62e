"""A memory bank sharded over 4 (CPU) devices gives the single-device numbers (issue 14).

XLA_FLAGS must be set before JAX starts, so the checks run in a subprocess
with --xla_force_host_platform_device_count=4. Each check compares against
the unsharded computation and, where it matters, reads the compiled HLO: the
nearest-neighbour minimum and the Sinkhorn log-sum-exp are reduced across
shards (all-reduce) and the bank is never gathered onto one device.
"""
import json
import os
import subprocess
import sys

from conftest import ROOT

SCRIPT = r'''
import json, os
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from experiments import placement
from rodajax import backbones, coreset, features, patchcore, scoring, transport

out = {"devices": len(jax.devices())}
mesh = placement.bank_mesh()
rng = np.random.default_rng(0)
row = NamedSharding(mesh, P("bank", None))

# Nearest neighbours: 1,002 rows -> padded to 1,004 over 4 shards, padding masked.
bank = rng.normal(size=(1002, 32)).astype(np.float32)
q = rng.normal(size=(300, 32)).astype(np.float32)
q[:5] *= 1e-3        # near the zero padding rows: they must not win
ref = scoring.nearest_distances(jnp.asarray(q), jnp.asarray(bank), 128)
bs, vs = placement.shard_bank(bank, mesh)
out["bank_spec"] = str(bs.sharding.spec)
out["bank_shard_rows"] = sorted({s.data.shape[0] for s in bs.addressable_shards})
args = (placement.replicate(q, mesh), bs, 128, vs)
out["nn_diff"] = float(np.abs(np.asarray(scoring.nearest_distances(*args)) - np.asarray(ref)).max())
hlo = scoring.nearest_distances.lower(*args).compile().as_text()
out["nn_all_reduce"] = hlo.count("all-reduce")
out["nn_all_gather"] = hlo.count("all-gather")

# Coreset on a sharded pool (4,096 rows, 1,024 per device): the same selections.
z = rng.normal(size=(4096, 16)).astype(np.float32)
zs = jax.device_put(z, row)
want, _ = coreset.greedy_kcenter_dense(jnp.asarray(z), 60, 3)
out["coreset_dense_equal"] = bool(np.array_equal(want, coreset.greedy_kcenter_dense(zs, 60, 3)[0]))
out["coreset_lazy_equal"] = bool(np.array_equal(want, coreset.greedy_kcenter(zs, 60, 3)[0]))

# Sinkhorn potentials against a sharded bank (held cost matrix and online costs).
x = rng.normal(size=(256, 32)).astype(np.float32)
y = rng.normal(size=(512, 32)).astype(np.float32)
ys, xr = jax.device_put(y, row), placement.replicate(x, mesh)
for name, chunk in (("dense", None), ("online", 64)):
  fn = jax.jit(lambda a, b: transport.sinkhorn_potentials(a, b, 0.05, chunk=chunk))
  p1, p2 = fn(jnp.asarray(x), jnp.asarray(y)), fn(xr, ys)
  out[f"ot_{name}_f_diff"] = float(np.abs(np.asarray(p1.f) - np.asarray(p2.f)).max())
  out[f"ot_{name}_g_diff"] = float(np.abs(np.asarray(p1.g) - np.asarray(p2.g)).max())
  out[f"ot_{name}_g_spec"] = str(p2.g.sharding.spec)
  hlo = fn.lower(xr, ys).compile().as_text()
  out[f"ot_{name}_all_reduce"] = hlo.count("all-reduce")
  out[f"ot_{name}_all_gather"] = hlo.count("all-gather")

# PatchCore scoring end to end with a sharded, padded bank.
module, variables = backbones.create("efficientnet_lite0", None, taps=("stage3", "stage5"))
extract = features.make_extractor(module, ("stage3", "stage5"), 64)
train = rng.integers(0, 255, (3, 64, 64, 3)).astype(np.uint8)
imgs = rng.integers(0, 255, (4, 64, 64, 3)).astype(np.uint8)
feats = np.asarray(jax.jit(extract)(variables, jnp.asarray(train)))
pbank = feats.reshape(-1, feats.shape[-1])[:-5]          # 187 rows: padded to 188
predict = patchcore.make_predict(extract, 64)
s1, m1 = predict(variables, jnp.asarray(pbank), jnp.asarray(imgs))
sb, sv = placement.shard_bank(pbank, mesh)
s2, m2 = predict(variables, sb, jnp.asarray(imgs), sv)
out["score_scale"] = float(np.abs(np.asarray(s1)).max())
out["score_diff"] = float(np.abs(np.asarray(s1) - np.asarray(s2)).max()) / out["score_scale"]
out["map_diff"] = float(np.abs(np.asarray(m1) - np.asarray(m2)).max()) / out["score_scale"]
print("RESULT", json.dumps(out))
'''


def test_sharded_bank_equals_single_device():
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
         "JAX_PLATFORMS": "cpu"}
  p = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  out = json.loads(p.stdout.split("RESULT", 1)[1])
  assert out["devices"] == 4
  assert out["bank_spec"] in ("P('bank', None)", "PartitionSpec('bank', None)") and out["bank_shard_rows"] == [251]
  assert out["nn_diff"] < 1e-5
  assert out["nn_all_reduce"] >= 1 and out["nn_all_gather"] == 0, out
  assert out["coreset_dense_equal"] and out["coreset_lazy_equal"]
  for name in ("dense", "online"):
    assert out[f"ot_{name}_f_diff"] < 1e-4 and out[f"ot_{name}_g_diff"] < 1e-4, out
    assert out[f"ot_{name}_g_spec"] in ("P('bank',)", "PartitionSpec('bank',)"), out
    assert out[f"ot_{name}_all_reduce"] >= 1 and out[f"ot_{name}_all_gather"] == 0, out
  assert out["score_diff"] < 1e-5 and out["map_diff"] < 1e-4, out   # relative to the largest score
