"""`numerics: portable` (pipeline/numerics.py): the settings reach the math libraries, in a
fresh process as the stages start one, and the tiny pipeline's bytes equal the ones
committed here whatever x86-64 CPU with AVX2 computes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from hsa_pipeline.pipeline import numerics

# The tiny demo's sha256 under `numerics: portable` (tests/same_bytes.py). Made on an AMD EPYC
# (family 25 model 17, Zen 4: AVX2, AVX512, AVX512-BF16), 2 cores, 2026-12-07, torch 2.14.1+cu130,
# numpy 2.4.6, the code of 59ac334 (a change to what the tiny pipeline computes changes them:
# regenerate with `python tests/same_bytes.py` and say so). The same on Intel CPUs with AVX2
# is what this test is there to show; a CPU on which it fails computes other bytes: say
# which (lscpu), with the hashes it printed.
SAME_BYTES = {
    "geometry": "879ab6a8749712860d25c56d5c9439e633e3e7ab20c314e528a10662c2502287",
    "features": "09a2df5ddfeb1d858b1547a5f48337e440261b365b7e0b225fca0fdad59fe633",
    "weights": "c6e942bb30075467c32525d62df83815f7ad8fdd3874be49d229a1049c198258",
}
AVX2 = "avx2" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
needs_avx2 = pytest.mark.skipif(not AVX2, reason="portable numerics need an x86-64 CPU with AVX2")


def python(code: str, env: dict | None = None) -> str:
    """Run `code` in a fresh interpreter from the repository root; its stdout."""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def without_numerics() -> dict:
    return {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV and k != numerics.MARK}


def test_portable_adds_the_settings_and_native_takes_back_only_its_own():
    portable = numerics.environment("portable", {"PATH": "/bin"})
    assert portable == {"PATH": "/bin", **numerics.PORTABLE_ENV, numerics.MARK: "portable"}
    # a native child of a portable process runs the libraries' defaults ...
    assert numerics.environment("native", portable) == {"PATH": "/bin", numerics.MARK: "native"}
    # ... but a setting the user made themselves is theirs
    assert numerics.environment("native", {"MKL_CBWR": "AVX2"})["MKL_CBWR"] == "AVX2"
    with pytest.raises(ValueError, match="portable, native"):
        numerics.environment("fast", {})


PROBE = """
import os, sys, torch
a = torch.randn(64, 64); (a @ a).sum()  # one MKL call, which MKL_VERBOSE reports with its CNR branch
print('RESULT', torch.backends.cpu.get_cpu_capability(), torch.backends.mkldnn.enabled, os.environ.get('MKL_CBWR'),
      os.environ['HSA_NUMERICS'], flush=True)
"""


@needs_avx2
def test_entered_before_torch_loads_the_libraries_run_portable_kernels():
    out = python("from hsa_pipeline.pipeline import numerics; numerics.enter('portable')\n" + PROBE,
                 {**without_numerics(), "MKL_VERBOSE": "1"})
    assert "RESULT AVX2 False COMPATIBLE portable" in out
    assert "CNR:COMPATIBLE" in out  # MKL's own report of the branch it ran


@needs_avx2
def test_a_process_that_loaded_torch_first_is_started_again_under_the_settings():
    code = ("import sys, torch\nprint('START', flush=True)\n"
            "from hsa_pipeline.pipeline import numerics; numerics.enter('portable')\n" + PROBE)
    out = python(code, without_numerics())
    assert out.count("START") == 2  # the exec: the same program, once more, now with the settings
    assert "RESULT AVX2 False COMPATIBLE portable" in out


def test_native_leaves_the_libraries_their_own_choices():
    out = python("from hsa_pipeline.pipeline import numerics; numerics.enter('native')\n" + PROBE,
                 numerics.environment("portable"))  # a native stage started by a portable one
    result = out.split("RESULT ")[1].split()
    assert result[1:] == ["True", "None", "native"]
    assert result[0] == python("import torch; print(torch.backends.cpu.get_cpu_capability())", without_numerics()).strip()


def test_resumable_work_is_keyed_on_the_numerics(monkeypatch, work_dir):
    """A feature store made under one mode is never continued under another (checkpoints
    key on numerics.state() the same way)."""
    from conftest import PREPARE, tiny_pipeline_params
    from hsa_pipeline.data.manifest import Manifest
    from hsa_pipeline.features.extract import fingerprint

    p, manifest = tiny_pipeline_params(), Manifest.load(PREPARE)
    prints = []
    for mode in numerics.MODES:
        for key, value in numerics.PORTABLE_ENV.items():
            monkeypatch.setenv(key, value) if mode == "portable" else monkeypatch.delenv(key, raising=False)
        prints.append(fingerprint(p.features, manifest))
    assert prints[0] != prints[1]


@needs_avx2
def test_the_tiny_pipeline_computes_the_committed_bytes():
    """The evidence: geometry, features and six training steps through the real stages,
    hashed; equal to the figures made on another machine (SAME_BYTES above)."""
    out = subprocess.run([sys.executable, "tests/same_bytes.py"], cwd=REPO, env=without_numerics(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got.pop("numerics") == "portable"
    assert got == SAME_BYTES, f"this CPU computes other bytes under numerics: portable: {got}"
