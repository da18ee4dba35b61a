"""Evaluation: pass@1 benchmarks with what the number means recorded beside it, and the method-comparison
tables and plots."""
