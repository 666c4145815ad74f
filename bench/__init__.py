"""Benchmarks of the balancer against pvesim (quality, scale); see docs/benchmarks.md."""
