"""DVC stage `features` (see dvc.yaml): load params.yaml, run the library, write outputs."""

from hsa_pipeline.cli import run_stage

if __name__ == "__main__":
    run_stage("features")
