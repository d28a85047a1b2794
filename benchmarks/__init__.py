"""Benchmarks of capgen against the tutorial's Keras code, measured in the same run."""
