"""LeRobot v3 datasets: frames at the right episode and frame index (within codec
tolerance), qpos/action exact, every bad case named in one line, the dataset never
written to, and the pipeline end to end on one."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from lerobot_data import from_hdf5, write_lerobot

from conftest import REPO
from hsa_pipeline.config import DataConfig, LeRobotConfig
from hsa_pipeline.data.episodes import Episode, episode_files, open_episode
from hsa_pipeline.data.lerobot import stream_mapping
from hsa_pipeline.data.prepare import run_prepare
from hsa_pipeline.errors import EpisodeError

STREAMS = ["top", "wrist", "tactile"]


def cfg(root, **kw) -> DataConfig:
    return DataConfig(episodes_dir=str(root), layout="auto", min_length=5, **kw)


@pytest.fixture(scope="module")
def dataset(demo_dir, tmp_path_factory):
    """The tiny demo (4 episodes) as a LeRobot v3 dataset: one parquet, one mp4 per stream."""
    return from_hdf5(demo_dir, tmp_path_factory.mktemp("lerobot") / "ds", STREAMS)


def digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_frames_and_arrays_equal_the_source(dataset, demo_dir):
    paths = episode_files(dataset)
    assert [p.name for p in paths] == [f"episode_00000{i}" for i in range(4)]
    mapping = stream_mapping(cfg(dataset))
    for e, t in [(0, 0), (1, 7), (2, 24), (3, 13), (1, 3)]:  # episodes back to back in one file; a jump back
        with open_episode(paths[e], "lerobot", mapping) as lr, Episode(demo_dir / f"episode_{e}.hdf5") as h5:
            np.testing.assert_array_equal(lr.qpos, h5.qpos.astype(np.float32))
            np.testing.assert_array_equal(lr.action, h5.action.astype(np.float32))
            for s in STREAMS:
                got, want = lr.frame(s, t).astype(float), h5.frame(s, t).astype(float)
                err = np.abs(got - want).mean()
                assert err < 3.0, (e, t, s, err)  # h264, yuv420p: small codec error
                if s != "tactile" and 0 < t < len(h5.qpos) - 1:  # and it is THIS frame, not a neighbour
                    assert err < np.abs(got - h5.frame(s, t + 1)).mean() or err < 1.0


def test_prepare_reads_it_like_hdf5_and_records_content_hashes(dataset, demo_dir, tmp_path):
    before = digest(dataset)
    m = run_prepare(cfg(dataset), 5, tmp_path / "prepare")
    assert [e["layout"] for e in m["episodes"]] == ["lerobot"] * 4 and m["lerobot"]["images"]["wrist"] == \
        "observation.images.wrist"
    assert len({e["sha256"] for e in m["episodes"]}) == 4
    assert m["cameras"]["top"]["shape"] == [192, 256] and m["tactile"]["tactile"]["shape"] == [96, 96]
    contact = json.loads((tmp_path / "prepare" / "contact.json").read_text())["tactile"]
    run_prepare(cfg(demo_dir), 5, tmp_path / "prepare_h5")
    contact_h5 = json.loads((tmp_path / "prepare_h5" / "contact.json").read_text())["tactile"]
    for e in range(4):  # the same frames in contact as the HDF5 original (tactile video decodes right)
        lr, h5 = contact[f"episode_00000{e}"], contact_h5[f"episode_{e}"]
        assert lr["contact"] == h5["contact"] and any(h5["contact"])
    assert digest(dataset) == before  # never written to


def bad_copy(dataset, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(dataset, dst)
    return dst


def test_an_episodes_content_hash_covers_info_json(dataset, tmp_path):
    """fps lives in meta/info.json and places every frame in its video: changing it must
    change the episode's hash (so nothing downstream is reused)."""
    keys = stream_mapping(cfg(dataset))
    a, b = bad_copy(dataset, tmp_path, "a"), bad_copy(dataset, tmp_path, "b")
    info = json.loads((b / "meta" / "info.json").read_text())
    info["fps"] = info["fps"] * 2
    (b / "meta" / "info.json").write_text(json.dumps(info))
    with open_episode(a / "episode_000001", "lerobot", keys) as ea, open_episode(b / "episode_000001", "lerobot", keys) as eb:
        assert ea.sha256() != eb.sha256()
    with open_episode(dataset / "episode_000001", "lerobot", keys) as e:
        assert e.sha256() == ea.sha256()  # the same content elsewhere: the same hash


def rewrite_parquet(path, fn):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    pq.write_table(pa.Table.from_pylist(fn(rows)), path)


def test_bad_datasets_are_named_in_one_line(dataset, demo_dir, tmp_path):
    data = "data/chunk-000/file-000.parquet"
    cases = []

    d = bad_copy(dataset, tmp_path, "nan")
    rewrite_parquet(d / data, lambda rows: [dict(r, action=[float("nan")] + r["action"][1:])
                                            if r["episode_index"] == 2 and r["frame_index"] == 4 else r for r in rows])
    cases.append((d, {}, r"file-000.parquet: episode 2: feature 'action' frame 4 column 0 is nan"))

    d = bad_copy(dataset, tmp_path, "timestamps")
    rewrite_parquet(d / data, lambda rows: [dict(r, timestamp=r["timestamp"] * 1.5) if r["episode_index"] == 1 else r
                                            for r in rows])
    cases.append((d, {}, r"episode 1: timestamp of frame 1 is 0\.15000 s, expected 0\.10000 s at 10 fps"))

    d = bad_copy(dataset, tmp_path, "missing_video")
    (d / "videos/observation.images.wrist/chunk-000/file-000.mp4").unlink()
    cases.append((d, {}, r"observation.images.wrist/chunk-000/file-000.mp4: video file missing"))

    d = bad_copy(dataset, tmp_path, "garbage_video")
    (d / "videos/observation.images.top/chunk-000/file-000.mp4").write_bytes(b"\x00" * 1000)
    cases.append((d, {}, r"observation.images.top/chunk-000/file-000.mp4: not a readable video"))

    d = bad_copy(dataset, tmp_path, "missing_feature")
    cases.append((d, {"lerobot": LeRobotConfig(qpos="observation.joints")},
                  r"episode 0: feature 'observation.joints' missing; features: observation.state, action"))

    d = bad_copy(dataset, tmp_path, "no_camera")
    cases.append((d, {"cameras": {"top": "third_person", "side": "wrist"}},
                  r"meta/info.json: camera 'side' needs the video feature 'observation.images.side', which is not there"))

    short = tmp_path / "short"  # the tactile video ends 3 frames before the last episode does
    from_hdf5(demo_dir, short, STREAMS, drop_frames={"observation.images.tactile": 3})
    cases.append((short, {}, r"episode_000003: 'observation.images.tactile' frame 22: .*ends before .*: the video is "
                             r"shorter than its episode"))

    for root, kw, pattern in cases:
        with pytest.raises(EpisodeError, match=pattern) as err:
            run_prepare(cfg(root, **kw), 5, tmp_path / "out")
        assert "\n" not in str(err.value)
    # skip mode: the bad episode is listed, the others are used
    m = run_prepare(cfg(short, on_bad_episode="skip"), 5, tmp_path / "out")
    assert [s["file"] for s in m["skipped"]] == ["episode_000003"] and len(m["episodes"]) == 3


def test_width_mismatch_between_episodes_is_named(demo_dir, tmp_path):
    eps = []
    for i in range(2):
        with Episode(demo_dir / f"episode_{i}.hdf5") as h5:
            T = len(h5.qpos)
            q = h5.qpos if i == 0 else np.hstack([h5.qpos, np.zeros((T, 1))])
            eps.append({"qpos": q, "action": h5.action, "images": {s: np.stack([h5.frame(s, t) for t in range(T)])
                                                                   for s in STREAMS}})
    root = write_lerobot(tmp_path / "widths", eps)
    with pytest.raises(EpisodeError, match=r"widths/episode_000001: /qpos has width 8, other episodes have 7"):
        run_prepare(cfg(root), 5, tmp_path / "out")


def test_a_hub_repo_id_says_to_download_it_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EpisodeError, match=r"'lerobot/aloha_sim' looks like a Hugging Face hub repo id: this pipeline "
                                           r"reads local datasets only, download it first"):
        run_prepare(cfg("lerobot/aloha_sim"), 5, tmp_path / "out")


@pytest.mark.slow
def test_dvc_repro_through_evaluate_on_a_lerobot_dataset(dataset, tmp_path):
    """The whole pipeline, real dvc, on the LeRobot copy of the demo (the same rig, so the
    closed-loop evaluation runs too)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from conftest import REPO, TINY, TINY_TRAIN
    from hsa_pipeline.config import apply_overrides

    repo = tmp_path / "repo"
    repo.mkdir()
    for item in ("hsa_pipeline", "stages", "dvc.yaml", "params.yaml", ".dvc", ".dvcignore", ".gitignore"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, repo / item)
    raw = apply_overrides(yaml.safe_load((REPO / "params.yaml").read_text()),
                          TINY + TINY_TRAIN + ["train.steps=4", "train.val_every=4", "synth.enabled=false",
                                               f"data.episodes_dir={dataset}", "eval.rollouts=2", "eval.max_steps=5"])
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    before = digest(dataset)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], [str(Path(sys.executable).with_name("dvc")), "repro"]):
        r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env, timeout=900)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = json.loads((repo / "outputs/eval/metrics.json").read_text())
    assert m["val_frames"] > 0 and m["closed_loop"]["rollouts"] == 2
    episodes = json.loads((repo / "outputs/prepare/episodes.json").read_text())
    assert episodes["episodes"][0]["layout"] == "lerobot"
    assert digest(dataset) == before


def test_the_v2_layout_reads_the_same(demo_dir, tmp_path):
    from lerobot_data import write_lerobot_v2

    eps = []
    for i in range(2):
        with Episode(demo_dir / f"episode_{i}.hdf5") as h5:
            T = len(h5.qpos)
            eps.append({"qpos": h5.qpos, "action": h5.action,
                        "images": {s: np.stack([h5.frame(s, t) for t in range(T)]) for s in STREAMS}})
    root = write_lerobot_v2(tmp_path / "v2", eps)
    m = run_prepare(cfg(root), 5, tmp_path / "out")
    assert [e["id"] for e in m["episodes"]] == ["episode_000000", "episode_000001"]
    with open_episode(root / "episode_000001", "lerobot", stream_mapping(cfg(root))) as lr:
        np.testing.assert_array_equal(lr.qpos, eps[1]["qpos"].astype(np.float32))
        assert np.abs(lr.frame("top", 9).astype(float) - eps[1]["images"]["top"][9]).mean() < 3.0


def test_preview_takes_a_datasets_root_and_an_episode_index(dataset, tmp_path):
    """The defect this guards: `hsa preview <LeRobot root>` said "cannot open as HDF5 ... Is a
    directory"."""
    r = subprocess.run([sys.executable, "-m", "hsa_pipeline.cli", "preview", str(dataset), "--episode", "2", "--out",
                        str(tmp_path / "p"), "--frames", "2"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "p").glob("episode_000002_wrist_*.png"))) == 2
    r = subprocess.run([sys.executable, "-m", "hsa_pipeline.cli", "preview", str(dataset), "--episode", "9"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no episode 9 in this LeRobot dataset (it has 4: 0..3)" in r.stderr
    assert "Traceback" not in r.stderr
