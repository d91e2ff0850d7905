"""The recorded data and its stores: episodes (HDF5 layouts, LeRobot), the prepare stage
(checks, split, stats, contact from touch), the readers of every store, the image ->
token grid mapping, and the caches opened together as training samples (the Batch
contract between data and model).

May import: pipeline, config, errors."""
