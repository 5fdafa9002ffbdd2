"""Evaluation harness (eval_*.py) and performance benchmarks (perf/)."""
