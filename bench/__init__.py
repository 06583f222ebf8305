"""Benchmarks, run by hand or by make targets; never part of the tests."""
