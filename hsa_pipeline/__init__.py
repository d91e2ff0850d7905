"""hsa-pipeline: ACT policies with a tactile-visual (HSA) alignment loss, trained from
cached geometry and CLIP feature grids, as DVC stages."""

__version__ = "0.1.0"
