"""Measuring edits the way SAKE does: judging outputs, scoring probes, aggregating metrics."""
