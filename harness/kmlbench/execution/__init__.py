"""Where cells run: in this process, on a local Dask pool, or on a Dask cluster."""
