"""Turning recorded data into reports, comparisons and figures."""
