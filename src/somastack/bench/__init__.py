"""Benchmarks run by `soma bench …`; each prints JSON figures measured on this machine."""
