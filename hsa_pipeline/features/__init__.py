"""The frozen image encoder (open_clip) and the features stage that caches its patch-token
grids to Zarr. Inference uses the same encoder code, so online features equal the cache.

May import: data, pipeline, config, errors."""
