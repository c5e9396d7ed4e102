"""drope_jax: pretraining whose positional embedding is a switch (RoPE, NoPE, DroPE)."""

import os

# XLA:CPU sends dots through YNNPACK fusions by default in jaxlib 0.10.2; without them
# our train step ran 1.13x (tiny config) and 1.29x (4x wider) faster on 2 cores
# (benchmarks/train_throughput). Only where the user has not set XLA_FLAGS, read when
# JAX starts its backends (after this import); TPU and GPU compilers ignore the flag.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
