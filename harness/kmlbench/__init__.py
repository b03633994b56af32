"""kmlbench: build a KML-patched kernel, boot it in QEMU, run fio, report."""

__version__ = "0.1.0"
