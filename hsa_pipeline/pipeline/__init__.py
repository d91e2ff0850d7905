"""What keeps the pipeline's reruns honest, whatever a stage computes: outputs written
atomically, content hashes, the code fingerprints that dvc.yaml and resumable work key on,
the files params name as DVC deps, and the threads and device a stage runs on.

May import: config, errors."""
