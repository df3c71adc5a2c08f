"""Plain sequential fine-tuning: cross-entropy on the task being trained (the two-cities post's baseline)."""

from cl_bench.methods.base import Method


class Baseline(Method):
    """Fine-tuning with no countermeasure; `lowlr` is this method at a lower learning rate."""
