"""A fault-injection harness for real trio-election nodes: ``python -m tools.chaos``."""
