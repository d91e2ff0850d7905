"""`hsa serve`: the exported policy behind openpi's websocket protocol, and the client
side that drives a rollout through it.

May import: model, features, data, pipeline, config, errors."""
