"""Benchmarks: each module prints its figures against the goal from the issue; they are not tests."""
