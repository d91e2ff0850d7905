"""Episode reading (both layouts) and the `prepare` stage, on files the tests write
themselves with h5py, independently of the project's own writer."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import make_params
from hsa_pipeline.config import ContactConfig, DataConfig
from hsa_pipeline.data.contact import start_look, trace
from hsa_pipeline.data.episodes import Episode, EpisodeError, write_episode
from hsa_pipeline.data.manifest import Manifest
from hsa_pipeline.data.prepare import STD_MIN, run_prepare, split_episodes

CAMS = {"top": "third_person", "wrist": "wrist"}


def images(T: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, h // 8, w // 8, 3))  # blocky: survives JPEG almost exactly
    frames = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2).repeat(T, axis=0)
    return (frames + np.arange(T)[:, None, None, None] * 3 % 255).clip(0, 255).astype(np.uint8)


def jpeg(img: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="JPEG", quality=95)
    return out.getvalue()


def write_act(path: Path, T: int = 12, D: int = 7, tactile_key: str = "observations/images/tactile", seed: int = 0,
              qpos: np.ndarray | None = None) -> dict:
    rng = np.random.default_rng(seed)
    data = {"qpos": rng.normal(size=(T, D)) if qpos is None else qpos, "action": rng.normal(size=(T, D)),
            "top": images(T, seed=seed), "wrist": images(T, seed=seed + 1), "tactile": images(T, 16, 16, seed=seed + 2)}
    with h5py.File(path, "w") as f:
        f.attrs["sim"] = True
        f["observations/qpos"] = data["qpos"]
        f["action"] = data["action"]
        f.create_dataset("observations/images/top", data=data["top"], chunks=(1, 24, 32, 3))
        f.create_dataset("observations/images/wrist", data=data["wrist"], chunks=(1, 24, 32, 3))
        f.create_dataset(tactile_key, data=data["tactile"], chunks=(1, 16, 16, 3))
    return data


def write_xtrainer(path: Path, T: int = 12, D: int = 14, seed: int = 0) -> dict:
    """The X-Trainer layout as its collection script writes it: JPEG rows padded with zeros
    to the longest frame, real lengths in /compress_len, tactile under /observations/<name>."""
    rng = np.random.default_rng(seed)
    data = {"qpos": rng.normal(size=(T, D)), "action": rng.normal(size=(T, D)),
            "top": images(T, seed=seed), "wrist": images(T, seed=seed + 1), "tactile": images(T, 16, 16, seed=seed + 2)}
    names = ["top", "wrist", "tactile"]
    enc = {n: [jpeg(data[n][t]) for t in range(T)] for n in names}
    with h5py.File(path, "w") as f:
        f.attrs["sim"] = False
        f.attrs["compress"] = True
        f.attrs["camera_names"] = names
        f["observations/qpos"] = data["qpos"]
        f["action"] = data["action"]
        for n in names:
            pad = max(len(b) for b in enc[n]) + 17  # extra zero padding, as in real files
            rows = np.zeros((T, pad), np.uint8)
            for t, b in enumerate(enc[n]):
                rows[t, : len(b)] = np.frombuffer(b, np.uint8)
            key = f"observations/images/{n}" if n != "tactile" else "observations/tactile"
            f.create_dataset(key, data=rows, chunks=(1, pad))
        f["compress_len"] = np.array([[len(b) for b in enc[n]] for n in names])
    data["jpeg"] = enc
    return data


def data_cfg(directory: Path, **kw) -> DataConfig:
    return DataConfig(episodes_dir=str(directory), cameras=dict(CAMS), tactile=["tactile"], min_length=5, **kw)


# --------------------------------------------------------------------------- reading
def test_act_layout_reads_back_exactly(tmp_path):
    d = write_act(tmp_path / "episode_0.hdf5", tactile_key="observations/tactile")
    with Episode(tmp_path / "episode_0.hdf5") as ep:
        assert ep.layout == "act"
        np.testing.assert_allclose(ep.qpos, d["qpos"])
        np.testing.assert_allclose(ep.action, d["action"])
        for t in (0, 5, 11):
            np.testing.assert_array_equal(ep.frame("top", t), d["top"][t])
            np.testing.assert_array_equal(ep.frame("tactile", t), d["tactile"][t])  # under /observations/<name>


def test_xtrainer_layout_decodes_padded_jpeg_with_14_dim_qpos(tmp_path):
    d = write_xtrainer(tmp_path / "episode_0.hdf5")
    with Episode(tmp_path / "episode_0.hdf5") as ep:
        assert ep.layout == "xtrainer" and ep.qpos.shape == (12, 14)
        for name in ("top", "wrist", "tactile"):
            s = ep.stream(name)
            assert s.compressed and s.length_row == ["top", "wrist", "tactile"].index(name)
            for t in (0, 11):
                expected = np.asarray(Image.open(io.BytesIO(d["jpeg"][name][t])).convert("RGB"))
                np.testing.assert_array_equal(ep.frame(name, t), expected)
                assert np.abs(ep.frame(name, t).astype(int) - d[name][t]).mean() < 12


def test_project_writer_round_trips_through_the_reader(tmp_path):
    T = 6
    q = np.random.default_rng(0).normal(size=(T, 7))
    ims = {"top": images(T), "wrist": images(T, seed=3)}
    tac = {"tactile": images(T, 16, 16)}
    for layout in ("act", "xtrainer"):
        path = tmp_path / f"{layout}.hdf5"
        write_episode(path, q, q, ims, tac, layout=layout, jpeg_quality=95)
        with Episode(path) as ep:
            assert ep.layout == layout
            np.testing.assert_allclose(ep.qpos, q, atol=1e-6)
            diff = np.abs(ep.frame("wrist", 3).astype(int) - ims["wrist"][3]).mean()
            assert diff < (0.001 if layout == "act" else 12.0)
    assert not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------- bad input
def corrupt(kind: str, path: Path) -> str:
    """Make one kind of bad episode; return a fragment the error must contain."""
    if kind == "truncated":
        write_act(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        return "cannot open as HDF5 (unreadable or truncated)"
    if kind == "not_hdf5":
        path.write_text("hello")
        return "cannot open as HDF5"
    if kind == "missing_action":
        write_act(path)
        with h5py.File(path, "a") as f:
            del f["action"]
        return "missing key /action"
    if kind == "length_mismatch":
        write_act(path)
        with h5py.File(path, "a") as f:
            a = f["action"][:-2]
            del f["action"]
            f["action"] = a
        return "/action has 10 frames but /observations/qpos has 12"
    if kind == "nan":
        q = np.zeros((12, 7))
        q[4, 2] = np.nan
        write_act(path, qpos=q)
        return "/observations/qpos frame 4 column 2 is nan"
    if kind == "inf_action":
        write_act(path)
        with h5py.File(path, "a") as f:
            f["action"][7, 1] = np.inf
        return "/action frame 7 column 1 is inf"
    if kind == "missing_camera":
        write_act(path)
        with h5py.File(path, "a") as f:
            del f["observations/images/wrist"]
        return "camera 'wrist' not found"
    if kind == "bad_jpeg":
        write_xtrainer(path)
        with h5py.File(path, "a") as f:
            row = f["observations/images/wrist"][5]
            n = int(f["compress_len"][1, 5])
            row[n // 2:] = 0  # the second half of the JPEG lost (an interrupted write)
            f["observations/images/wrist"][5] = row
        return "/observations/images/wrist frame 5: JPEG does not decode"
    if kind == "too_short":
        write_act(path, T=4)
        return "4 frames, shorter than the 5 needed"
    if kind == "image_frames":
        write_act(path)
        with h5py.File(path, "a") as f:
            t = f["observations/images/top"][:-1]
            del f["observations/images/top"]
            f["observations/images/top"] = t
        return "/observations/images/top has 11 frames, qpos has 12"
    raise AssertionError(kind)


BAD = ["truncated", "not_hdf5", "missing_action", "length_mismatch", "nan", "inf_action", "missing_camera",
       "bad_jpeg", "too_short", "image_frames"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_episode_is_one_clear_error_naming_file_and_key(tmp_path, kind):
    src = tmp_path / "eps"
    src.mkdir()
    write_act(src / "episode_0.hdf5")
    write_act(src / "episode_1.hdf5", seed=1)
    fragment = corrupt(kind, src / "episode_2.hdf5")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    out = tmp_path / "out"
    with pytest.raises(EpisodeError) as err:
        run_prepare(data_cfg(src), chunk_size=5, out_dir=out)
    msg = str(err.value)
    assert str(src / "episode_2.hdf5") in msg and fragment in msg, msg
    assert not out.exists() and not list(tmp_path.glob("out*"))  # nothing that looks complete
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()}
    assert before == after  # input never modified


def test_skip_mode_lists_bad_episodes_with_reasons(tmp_path):
    src = tmp_path / "eps"
    src.mkdir()
    for i in range(3):
        write_act(src / f"episode_{i}.hdf5", seed=i)
    corrupt("nan", src / "episode_3.hdf5")
    corrupt("missing_camera", src / "episode_4.hdf5")
    m = run_prepare(data_cfg(src, on_bad_episode="skip"), 5, tmp_path / "out")
    assert [e["id"] for e in m["episodes"]] == ["episode_0", "episode_1", "episode_2"]
    reasons = {s["file"]: s["reason"] for s in m["skipped"]}
    assert "is nan" in reasons["episode_3.hdf5"] and "camera 'wrist' not found" in reasons["episode_4.hdf5"]
    read = Manifest.load(tmp_path / "out")  # what later stages see: the reasons, through the reader
    assert [s["file"] for s in read.info.skipped] == ["episode_3.hdf5", "episode_4.hdf5"]
    assert [e.id for e in read.episodes] == ["episode_0", "episode_1", "episode_2"]


def test_missing_or_empty_directory(tmp_path):
    with pytest.raises(EpisodeError, match="episode directory not found"):
        run_prepare(data_cfg(tmp_path / "nope"), 5, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EpisodeError, match="no episode files"):
        run_prepare(data_cfg(tmp_path / "empty"), 5, tmp_path / "out")


def test_camera_named_in_params_but_absent_from_files(tmp_path):
    write_act(tmp_path / "episode_0.hdf5")
    cfg = data_cfg(tmp_path)
    cfg.cameras["side"] = "third_person"
    with pytest.raises(EpisodeError, match="camera 'side' not found.*streams present: tactile, top, wrist"):
        run_prepare(cfg, 5, tmp_path / "out")


# --------------------------------------------------------------------------- split, stats, contact
def test_split_is_by_episode_seeded_and_keeps_a_validation_episode():
    ids = [f"e{i}" for i in range(10)]
    s = split_episodes(ids, 0.8, seed=3)
    assert sorted(s) == sorted(ids) and list(s.values()).count("val") == 2
    assert s == split_episodes(ids, 0.8, seed=3)
    assert s != split_episodes(ids, 0.8, seed=4)
    assert list(split_episodes(ids, 0.98, 0).values()).count("val") == 1  # X-Trainer's 0.98 on few episodes
    assert set(split_episodes(ids, 1.0, 0).values()) == {"train"}


def test_stats_match_numpy_over_training_frames_only(tmp_path):
    data = [write_act(tmp_path / f"episode_{i}.hdf5", T=10 + i, seed=i) for i in range(5)]
    with h5py.File(tmp_path / "episode_4.hdf5", "a") as f:  # a joint that never moves
        f["observations/qpos"][:, 3] = 0.5
    data[4]["qpos"][:, 3] = 0.5
    m = run_prepare(data_cfg(tmp_path, train_ratio=0.6), 5, tmp_path / "out")
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    train = [int(e["id"].split("_")[1]) for e in m["episodes"] if m["split"][e["id"]] == "train"]
    assert len(train) == 3
    for key in ("qpos", "action"):
        x = np.concatenate([data[i][key] for i in train])
        np.testing.assert_allclose(stats[key]["mean"], x.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[key]["std"], np.maximum(x.std(0), STD_MIN), rtol=1e-5, atol=1e-6)
    assert stats["frames"] == sum(10 + i for i in train)


def test_stats_clip_a_still_joint(tmp_path):
    q = np.zeros((12, 7))
    write_act(tmp_path / "episode_0.hdf5", qpos=q)
    write_act(tmp_path / "episode_1.hdf5", qpos=q, seed=1)
    run_prepare(data_cfg(tmp_path, train_ratio=1.0), 5, tmp_path / "out")
    assert json.loads((tmp_path / "out/stats.json").read_text())["qpos"]["std"] == [STD_MIN] * 7


def test_contact_score_is_distance_from_the_episode_start():
    rng = np.random.default_rng(0)
    rest = np.full((20, 32, 32, 3), 100.0) + rng.normal(0, 1, (20, 32, 32, 3))
    rest[5:15, 8:24, 8:24] += 80  # frames 5..14 pressed (half the episode): a blob differs from the gel
    cfg = ContactConfig()
    ref = start_look(rest, cfg)  # the median of the first 3 frames: the gel and its noise
    np.testing.assert_allclose(ref, np.median(rest[:3], axis=0))
    np.testing.assert_allclose(ref, 100.0, atol=4.0)
    got = trace(rest, ref, cfg)
    np.testing.assert_allclose(got.score, np.abs(rest - ref).mean(axis=(1, 2, 3)) / 255)
    assert got.contact.tolist() == [5 <= t < 15 for t in range(20)]


def test_prepare_on_the_demo_marks_contact_frames(demo_dir, tmp_path):
    from hsa_pipeline.world import TouchWorld
    from hsa_pipeline.world.synth import record_episode, scene_seed

    p = make_params()
    cfg = p.data
    cfg.episodes_dir = str(demo_dir)
    m = run_prepare(cfg, p.act.chunk_size, tmp_path / "out")
    assert len(m["episodes"]) == 4 and m["cameras"]["top"]["shape"] == [192, 256]
    contact = json.loads((tmp_path / "out/contact.json").read_text())["tactile"]
    env = TouchWorld(p.world, p.robot, p.sensors, p.cameras, max_steps=10**6)
    truth = record_episode(env, scene_seed("train", 0, 0))["felt_class"]["tactile"] >= 0  # what the world says is felt
    np.testing.assert_array_equal(np.array(contact["episode_0"]["contact"], bool), truth)


def test_one_usable_episode_is_said_and_hashes_name_the_content(tmp_path, capsys):
    """With validation asked for (train_ratio < 1) and none left, prepare stops (not
    evaluate, two stages later); train_ratio 1.0 trains without it, said once."""
    write_act(tmp_path / "episode_0.hdf5", seed=0)
    with pytest.raises(EpisodeError, match="no validation episode is left: 1 usable episode.*data.train_ratio: 1.0"):
        run_prepare(data_cfg(tmp_path), 5, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    cfg = data_cfg(tmp_path)
    cfg.train_ratio = 1.0
    m = run_prepare(cfg, 5, tmp_path / "out")
    assert m["n_val"] == 0
    assert "no validation episodes (data.train_ratio is 1.0" in capsys.readouterr().err
    digest = hashlib.sha256((tmp_path / "episode_0.hdf5").read_bytes()).hexdigest()
    assert json.loads((tmp_path / "out/episodes.json").read_text())["episodes"][0]["sha256"] == digest
