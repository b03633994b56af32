"""One matrix cell's life in a guest: boot, device, KML model, workload, collect, reset.

``lifecycle`` runs the steps; ``device``, ``model`` and ``workload`` are the
steps' parts; ``context`` is what every step is given (the guest Protocol);
``guest_paths`` names every path inside the guest; ``render`` fills in the
guest shell scripts of ``scripts/``.
"""
