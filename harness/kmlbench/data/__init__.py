"""Recorded data: fio output, the results database, statistics, KML traces."""
