"""Measuring: the timing method, FLOPs, what the benchmark chapter measures, the training step's check and profiles."""
