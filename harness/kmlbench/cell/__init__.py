"""One matrix cell inside a booted guest: device, KML model and workload."""
