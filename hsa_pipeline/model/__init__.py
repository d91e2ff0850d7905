"""The policy: ACT on cached token grids, the HSA loss and its projection heads (the touch
map), and the exported policy that runs on raw images.

May import: features, data, pipeline, config, errors."""
