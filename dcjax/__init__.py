"""DeepCluster in JAX/Flax."""
