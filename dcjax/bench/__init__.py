"""Benchmarks: scripts that print a table."""
