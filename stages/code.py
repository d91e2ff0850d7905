"""Stage `code`: what code each other stage runs, docstrings and comments aside.

Reads    hsa_pipeline/ and stages/ (the source)
Writes   outputs/code/<stage>.sha256 for every other stage: the fingerprint of its import
         closure with docstrings and comments dropped (closure.code_fingerprint). Each stage
         lists its file as its code dependency in dvc.yaml, so fixing a docstring reruns
         only this stage (a second), and a code change reruns exactly the stages that run it.
"""


from hsa_pipeline.pipeline.atomic import atomic_dir
from hsa_pipeline.pipeline.closure import code_fingerprint
from hsa_pipeline.pipeline.paths import CODE
from stages import NAMES, main

PARAMS: list[str] = []
OUT = CODE


def run(p) -> dict[str, str]:
    prints = {name: code_fingerprint(f"stages.{name}") for name in NAMES if name != "code"}
    with atomic_dir(OUT) as tmp:
        for name, digest in prints.items():
            (tmp / f"{name}.sha256").write_text(digest + "\n")
    print(f"code: fingerprints of {len(prints)} stages -> {OUT}")
    return prints


if __name__ == "__main__":
    main("code")
