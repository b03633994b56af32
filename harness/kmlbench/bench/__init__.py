"""Micro-benchmarks: the KML library, the harness and the kernel build."""
