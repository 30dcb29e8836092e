"""Benchmarks: side-by-side measurements on one machine, reported as medians and ratios."""
