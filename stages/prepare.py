"""Stage `prepare`: validate every episode, split by episode, normalisation stats and
per-frame contact (score and flag) of every tactile stream, read from its images.

Reads    params data, act.chunk_size; the episodes in data.episodes_dir (never modified)
Writes   outputs/prepare/ episodes.json, training.json, stats.json, contact.json
"""


from hsa_pipeline.pipeline.paths import PREPARE
from stages import main

PARAMS = ["data", "act.chunk_size", "numerics"]
OUT = PREPARE


def run(p) -> dict:
    from hsa_pipeline.data.prepare import run_prepare  # here: main() sets numerics first
    m = run_prepare(p.data, p.act.chunk_size, OUT)
    print(f"prepare: {len(m['episodes'])} episodes ({m['n_val']} val), {len(m['skipped'])} skipped -> {OUT}")
    return m


if __name__ == "__main__":
    main("prepare")
