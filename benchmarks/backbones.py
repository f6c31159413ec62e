"""Feature-tap throughput of each backbone at 224x224 on this machine's CPU.

    python -m benchmarks.backbones [--batch 8] [--repeats 5]

Prints a markdown table: images/s of the forward pass up to the PatchCore taps
(EfficientNet: stage3 + stage5; ResNets: layer2 + layer3), and the achieved
GFLOP/s (XLA's FLOP count / median time) against a 2048^3 float32 matmul
measured in the same run.
"""
import argparse
import platform

import jax
import jax.numpy as jnp

from benchmarks.common import flops_of, matmul_gflops, median_time, table
from rodajax import backbones


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--names", default="efficientnet_lite0,resnet18,resnet50,wide_resnet50_2")
  args = ap.parse_args()
  ref = matmul_gflops(repeats=args.repeats)
  x = jax.random.normal(jax.random.key(0), (args.batch, 224, 224, 3))
  rows = []
  for name in args.names.split(","):
    taps = backbones.DEFAULT_TAPS[name]
    module, variables = backbones.create(name, taps=taps)
    f = jax.jit(lambda v, x: {t: module.apply(v, x)[t] for t in taps})
    flops = flops_of(f, variables, x)
    t = median_time(f, variables, x, repeats=args.repeats)
    gf = flops / t / 1e9
    rows.append((name, "+".join(taps), f"{args.batch / t:.1f}", f"{flops / args.batch / 1e9:.2f}",
                 f"{gf:.1f}", f"{100 * gf / ref:.0f}%"))
  print(f"JAX {jax.__version__} on {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s); batch {args.batch}, "
        f"median of {args.repeats}; matmul 2048^3 f32: {ref:.1f} GFLOP/s")
  print(table(rows, ["backbone", "taps", "img/s", "GFLOP/img", "GFLOP/s", "of matmul"]))


if __name__ == "__main__":
  main()
