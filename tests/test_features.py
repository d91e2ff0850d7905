"""The feature cache: real open_clip models (the small shipped config), real Zarr stores."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import make_params
from hsa_pipeline.config import ConfigError, FeaturesConfig
from hsa_pipeline.data.episodes import Episode, EpisodeError
from hsa_pipeline.data.grid import GridMapping, box_token_mask
from hsa_pipeline.data.manifest import Manifest
from hsa_pipeline.data.prepare import run_prepare
from hsa_pipeline.data.stores import FeatureStore
from hsa_pipeline.features import extract as features_mod
from hsa_pipeline.features.encoder import Encoder, preprocess
from hsa_pipeline.features.extract import run_features

CFG = FeaturesConfig(batch_size=16, workers=0)


@pytest.fixture(scope="module")
def prepared(demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("feat")
    p = make_params([f"data.episodes_dir={demo_dir}", "synth.enabled=false"])
    run_prepare(p.data, p.act.chunk_size, tmp / "prepare")
    return tmp / "prepare"


@pytest.fixture(scope="module")
def store(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "features.zarr"
    torch.manual_seed(0)
    run_features(FeaturesConfig(batch_size=16, workers=2), prepared, out)
    return out


def test_cached_grid_equals_a_fresh_encoder_call_on_the_raw_frame(store, prepared):
    fs = FeatureStore(store)
    m = Manifest.load(prepared)
    torch.manual_seed(0)  # random weights of the demo model: the same seed gives the same model
    enc = Encoder(CFG, quiet=True)
    for stream in ("top", "wrist", "tactile"):
        for e, t in ((0, 3), (2, 11)):
            with Episode(m.path(m.episodes[e])) as ep:
                frame = ep.frame(stream, t)
            fresh = enc.encode_frames([frame])[0].numpy()
            cached = fs.grid(stream, int(m.offsets[e]) + t).astype(np.float32)
            assert cached.shape == (8, 8, 128)
            np.testing.assert_allclose(cached, fresh, atol=2e-2, rtol=1e-2)  # float16 storage


def test_store_attributes_round_trip_and_stay_small(store, prepared):
    fs = FeatureStore(store)
    m = Manifest.load(prepared)
    assert fs.attrs["grid"] == 8 and fs.attrs["patch"] == 16 and fs.attrs["width"] == 128
    assert fs.streams == {"top": "third_person", "wrist": "wrist", "tactile": "tactile"}
    assert fs.attrs["offsets"] == m.offsets.tolist()
    mp = GridMapping(**fs.attrs["mapping"]["top"])
    assert mp == GridMapping.create("stretch", 256, 192, 128, 16)
    assert fs.root["top"].dtype == np.float16 and fs.root["top"].shape == (m.n_frames, 8, 8, 128)
    assert len([f for f in store.rglob("*") if f.is_file()]) < 40
    assert not Path(str(store) + ".partial").exists()


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_box_token_mask_agrees_with_the_preprocessing(mode):
    """Paint the box white on a 640x480 image, preprocess it exactly as the cache does, and
    read the pixel at every patch centre: white exactly where the mask says."""
    m = GridMapping.create(mode, 640, 480, 224, 16)
    for box in ([100.0, 50.0, 400.0, 300.0], [13.0, 201.0, 77.0, 470.0], [500.0, 0.0, 640.0, 60.0]):
        img = np.zeros((480, 640, 3), np.uint8)
        x0, y0, x1, y1 = map(int, box)
        img[y0:y1, x0:x1] = 255
        pre = preprocess(img, m)
        centres = ((np.arange(m.grid) + 0.5) * m.patch).astype(int)
        bright = pre[centres][:, centres, 0] > 127
        np.testing.assert_array_equal(bright, box_token_mask(np.array(box), m))


def test_resume_after_an_interruption_finishes_the_same_store(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(features_mod, "SHARD_BYTES", 40 * 8 * 8 * 128 * 2)  # 40 frames a shard
    out = tmp_path / "features.zarr"
    torch.manual_seed(0)
    run_features(CFG, prepared, out, max_shards=2)
    partial = tmp_path / "features.zarr.partial"
    assert not out.exists() and partial.exists()
    done = sorted(p.name for p in (partial / "done").iterdir())
    assert done == ["top.0", "top.1"]
    first = (partial / "top" / "c" / "0" / "0" / "0" / "0").stat().st_mtime_ns
    calls = []
    real = Encoder.encode
    monkeypatch.setattr(Encoder, "encode", lambda self, x: calls.append(len(x)) or real(self, x))
    torch.manual_seed(0)
    run_features(CFG, prepared, out)
    fs = FeatureStore(out)
    n = fs.root["top"].shape[0]
    assert n == 100 and sum(calls) == 3 * n - 80  # only the frames not done before
    assert (out / "top" / "c" / "0" / "0" / "0" / "0").stat().st_mtime_ns == first  # finished shard untouched
    torch.manual_seed(0)
    ref = tmp_path / "ref.zarr"
    run_features(CFG, prepared, ref)
    np.testing.assert_array_equal(FeatureStore(ref).load("wrist"), fs.load("wrist"))


def test_a_partial_store_from_other_inputs_is_discarded_aloud(prepared, tmp_path, monkeypatch, capsys):
    """The defect this guards: the shards of an interrupted run vanished without a word."""
    import dataclasses

    monkeypatch.setattr(features_mod, "SHARD_BYTES", 40 * 8 * 8 * 128 * 2)
    out = tmp_path / "features.zarr"
    run_features(CFG, prepared, out, max_shards=1)
    capsys.readouterr()
    run_features(dataclasses.replace(CFG, resize="letterbox"), prepared, out, max_shards=1)
    err = capsys.readouterr().err
    assert "discarding the partial store" in err and "(1 shard(s) done)" in err and "built from other inputs" in err


def test_a_changed_shipped_model_config_is_other_inputs(prepared, tmp_path, monkeypatch):
    """The resume key covers the shipped model config's JSON: a partial store made with one
    width of hsa-tiny-vit is not finished with another (the defect: only the name was keyed)."""
    import json
    import shutil

    manifest = Manifest.load(prepared)
    before = features_mod.fingerprint(CFG, manifest)
    configs = tmp_path / "model_configs"
    shutil.copytree(features_mod.SHIPPED_CONFIGS, configs)
    monkeypatch.setattr(features_mod, "SHIPPED_CONFIGS", configs)
    assert features_mod.fingerprint(CFG, manifest) == before  # same bytes, same key
    path = configs / f"{CFG.model}.json"
    cfg = json.loads(path.read_text())
    cfg["embed_dim"] = cfg["embed_dim"] * 2
    path.write_text(json.dumps(cfg))
    assert features_mod.fingerprint(CFG, manifest) != before


def test_shards_smaller_than_a_batch_give_the_same_store(store, prepared, tmp_path, monkeypatch):
    """Batches that span shard and stream boundaries (7-frame shards, 16-frame batches, two
    workers) land every frame in its own row: the store equals the one-shard-per-stream one."""
    monkeypatch.setattr(features_mod, "SHARD_BYTES", 7 * 8 * 8 * 128 * 2)
    out = tmp_path / "features.zarr"
    torch.manual_seed(0)
    run_features(FeaturesConfig(batch_size=16, workers=2), prepared, out)
    small, ref = FeatureStore(out), FeatureStore(store)
    assert small.attrs["shard_frames"] == 7 and ref.attrs["shard_frames"] == ref.root["top"].shape[0]
    for stream in ref.streams:
        np.testing.assert_array_equal(small.load(stream), ref.load(stream))


def test_shard_files_read_what_zarr_reads(store, prepared, tmp_path, monkeypatch):
    """FeatureStore reads the features stage's shards straight from their files (zarr is
    the independent truth): whole streams, single frames across shard boundaries and in the
    partial last shard; a damaged shard index is an error; any other layout goes to zarr."""
    import zarr

    from hsa_pipeline.data.shards import ShardFiles
    from hsa_pipeline.errors import StoreError

    monkeypatch.setattr(features_mod, "SHARD_BYTES", 7 * 8 * 8 * 128 * 2)  # 7-frame shards, 100 frames: 15 shards
    out = tmp_path / "features.zarr"
    torch.manual_seed(0)
    run_features(CFG, prepared, out)
    fs, root = FeatureStore(out), zarr.open_group(str(out), mode="r")
    for stream in fs.streams:
        files = ShardFiles.open(out / stream)
        assert files is not None and files.shard == 7
        truth = root[stream][...]
        np.testing.assert_array_equal(files.all(), truth)
        np.testing.assert_array_equal(fs.load(stream), truth)
        for row in (0, 6, 7, 50, 98, 99):
            np.testing.assert_array_equal(fs.grid(stream, row), truth[row])
    shard = out / "top" / "c" / "3" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # a bit of the index
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="shard index fails its checksum"):
        FeatureStore(out).grid("top", 21)
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("x", shape=(4, 2), dtype="float16", chunks=(1, 2))
    assert ShardFiles.open(tmp_path / "plain.zarr" / "x") is None  # one file per frame: zarr reads it



def test_shard_files_check_rows_and_damaged_files_where_zarr_reads_fill_values(store, prepared, tmp_path,
                                                                               monkeypatch, capsys):
    """Against zarr's own reader on the same shards: random rows agree; a row past the end,
    a truncated shard and a missing shard file are one-line StoreErrors naming the file
    (zarr raises on the row, but reads a missing shard as the fill value: for a cache that
    is data lost, so this refuses it); a layout zarr must read is said in one line."""
    import shutil

    import zarr

    from hsa_pipeline.data.shards import ShardFiles
    from hsa_pipeline.errors import StoreError

    monkeypatch.setattr(features_mod, "SHARD_BYTES", 7 * 8 * 8 * 128 * 2)
    out = tmp_path / "features.zarr"
    torch.manual_seed(0)
    run_features(CFG, prepared, out)
    truth = zarr.open_group(str(out), mode="r")["top"]
    files = ShardFiles.open(out / "top")
    for row in np.random.default_rng(0).integers(0, truth.shape[0], 40):
        np.testing.assert_array_equal(files.frame(int(row)), truth[int(row)])
    with pytest.raises(IndexError):
        truth[truth.shape[0]]
    for row in (truth.shape[0], -1):
        with pytest.raises(StoreError, match=rf"top: frame {row} asked for, the store holds frames 0-99"):
            files.frame(row)
    shard = out / "top" / "c" / "2" / "0" / "0" / "0"
    missing = out / "top" / "c" / "5" / "0" / "0" / "0"
    shutil.copy(shard, tmp_path / "shard")
    shard.write_bytes(shard.read_bytes()[:100])  # truncated, even its index
    missing.unlink()
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["top"][36], np.zeros_like(truth[0]))
    damaged = FeatureStore(out)
    with pytest.raises(StoreError, match=r"c/2/0/0/0: truncated \(100 bytes"):
        damaged.grid("top", 15)
    with pytest.raises(StoreError, match=r"c/5/0/0/0: shard file missing \(frames 35-41\)"):
        damaged.grid("top", 36)
    with pytest.raises(StoreError, match="missing|truncated"):
        damaged.load("top")
    data = (tmp_path / "shard").read_bytes()
    shard.write_bytes(data[:5000])  # cut inside its frames: the "index" read is frame bytes
    with pytest.raises(StoreError, match="c/2/0/0/0: the shard index fails its checksum"):
        FeatureStore(out).grid("top", 14)
    # the frames cut short, the index intact (a copy cut and patched)
    shard.write_bytes(data[: 3 * files.frame_bytes] + data[-(16 * 7 + 4):])
    with pytest.raises(StoreError, match="points past its frames"):
        FeatureStore(out).grid("top", 14)
    meta = out / "wrist" / "zarr.json"
    import json
    m = json.loads(meta.read_text())
    m["codecs"][0]["configuration"]["index_location"] = "start"
    assert ShardFiles.layout_problem(m) == "the shard index is not at the end"
    assert ShardFiles.layout_problem({"codecs": []}).startswith("metadata without")

def test_changed_settings_restart_instead_of_mixing(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(features_mod, "SHARD_BYTES", 100 * 8 * 8 * 128 * 2)
    out = tmp_path / "features.zarr"
    run_features(CFG, prepared, out, max_shards=1)
    run_features(FeaturesConfig(batch_size=16, workers=0, resize="letterbox"), prepared, out)
    assert FeatureStore(out).attrs["resize"] == "letterbox"


def test_weights_from_a_local_file(tmp_path):
    import open_clip

    from hsa_pipeline.features.encoder import register_shipped_configs

    register_shipped_configs()
    torch.manual_seed(123)
    model = open_clip.create_model("hsa-tiny-vit", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "tiny.bin")
    enc = Encoder(FeaturesConfig(pretrained=str(tmp_path / "tiny.bin")), quiet=True)
    for a, b in zip(enc.visual.state_dict().values(), model.visual.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    other = open_clip.create_model("ViT-S-32" if "ViT-S-32" in open_clip.list_models() else "RN50", pretrained=None)
    torch.save(other.state_dict(), tmp_path / "other.bin")
    with pytest.raises(ConfigError, match="other.bin does not match model hsa-tiny-vit"):
        Encoder(FeaturesConfig(pretrained=str(tmp_path / "other.bin")), quiet=True)
    with pytest.raises(ConfigError, match="weights file .*missing.bin not found"):
        Encoder(FeaturesConfig(pretrained=str(tmp_path / "missing.bin")), quiet=True)
    # each cause named, not all "does not match model" (the defect this guards)
    data = (tmp_path / "tiny.bin").read_bytes()
    (tmp_path / "truncated.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="truncated.bin is not a readable weights file"):
        Encoder(FeaturesConfig(pretrained=str(tmp_path / "truncated.bin")), quiet=True)
    (tmp_path / "text.bin").write_bytes(b"not weights\n" * 50)
    with pytest.raises(ConfigError, match="text.bin is not a weights file"):
        Encoder(FeaturesConfig(pretrained=str(tmp_path / "text.bin")), quiet=True)
    import argparse

    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.bin")
    with pytest.raises(ConfigError, match="pickled.bin holds Python objects besides tensors"):
        Encoder(FeaturesConfig(pretrained=str(tmp_path / "pickled.bin")), quiet=True)


def test_offline_pretrained_tag_says_how_to_use_a_local_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ConfigError, match="not in the local cache.*features.pretrained to that local file path"):
        Encoder(FeaturesConfig(model="ViT-B-32", pretrained="openai"), quiet=True)


def test_bad_model_settings_are_named():
    with pytest.raises(ConfigError, match="unknown model 'ViT-B-61'; did you mean"):
        Encoder(FeaturesConfig(model="ViT-B-61"), quiet=True)
    with pytest.raises(ConfigError, match="features.block: 9 outside -1..3"):
        Encoder(FeaturesConfig(block=9), quiet=True)
    with pytest.raises(ConfigError, match="not a known tag"):
        Encoder(FeaturesConfig(model="ViT-B-32", pretrained="imagenet-1k"), quiet=True)


def test_intermediate_block_gives_its_grid_without_running_the_later_blocks():
    """features.block: 1 of 4: the grid is block 1's output as open_clip's full pass computes
    it (the reference: forward_intermediates running every block), and blocks 2-3 never run."""
    enc = Encoder(FeaturesConfig(block=1), quiet=True)
    frame = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    ran = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: ran.append(k))
             for k, b in enumerate(enc.visual.transformer.resblocks)]
    out = enc.encode_frames([frame])
    for h in hooks:
        h.remove()
    assert out.shape == (1, 8, 8, 128) and ran == [0, 1]
    x = torch.from_numpy(preprocess(frame, enc.mapping(150, 100))[None]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        full = enc.visual.forward_intermediates((x - enc.mean) / enc.std, indices=[1], intermediates_only=True)
    torch.testing.assert_close(out, full["image_intermediates"][0].permute(0, 2, 3, 1), rtol=0, atol=0)


def test_undecodable_frame_is_named_and_the_old_store_survives(store, demo_dir, tmp_path):
    import shutil

    bad_dir = tmp_path / "eps"
    shutil.copytree(demo_dir, bad_dir)
    p = make_params([f"data.episodes_dir={bad_dir}", "synth.enabled=false"])
    run_prepare(p.data, p.act.chunk_size, tmp_path / "prepare")
    with h5py.File(bad_dir / "episode_1.hdf5", "a") as f:  # corrupt after prepare validated it
        row = f["observations/images/wrist"][4]
        n = int(f["compress_len"][list(f.attrs["camera_names"]).index("wrist"), 4])
        row[n // 2:] = 0  # the second half of the JPEG lost (an interrupted write)
        f["observations/images/wrist"][4] = row
    out = tmp_path / "features.zarr"
    shutil.copytree(store, out)
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    with pytest.raises(EpisodeError, match=r"episode_1.hdf5: /observations/images/wrist frame 4: JPEG does not decode"):
        run_features(CFG, tmp_path / "prepare", out)
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before


@pytest.mark.slow
def test_two_process_torchrun_shards_the_work_and_matches_one_process(work_dir):
    import subprocess
    import sys

    import yaml

    from conftest import AS_THIS_PROCESS, TINY, TINY_TRAIN
    from hsa_pipeline.config import apply_overrides

    raw = apply_overrides(yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text()), TINY + TINY_TRAIN)
    (work_dir / "params.yaml").write_text(yaml.safe_dump(raw))
    single = FeatureStore(work_dir / "outputs" / "features.zarr")
    ref = {s: single.load(s) for s in single.streams}
    import shutil

    shutil.rmtree(work_dir / "outputs" / "features.zarr")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "hsa_pipeline.cli", "features", *AS_THIS_PROCESS], cwd=work_dir, capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    two = FeatureStore(work_dir / "outputs" / "features.zarr")
    for s, grid in ref.items():
        np.testing.assert_array_equal(two.load(s), grid)


def test_frames_resized_in_threads_are_the_frames_resized_one_by_one():
    """encode_frames resizes a control step's frames side by side (threads); the batch the
    encoder sees must be the one the cache's per-frame path makes, bit for bit."""
    enc = Encoder(FeaturesConfig(model="hsa-tiny-vit", pretrained=None, resize="letterbox", device="cpu"), quiet=True)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((192, 256, 3), (144, 192, 3), (64, 64, 3))]
    seen = []
    encode = enc.encode
    enc.encode = lambda batch: seen.append(batch) or encode(batch)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = enc.encode_frames(frames)
        torch.set_num_threads(3)
        side_by_side = enc.encode_frames(frames)
    finally:
        torch.set_num_threads(threads)
    side = min(3, os.cpu_count() or 1)  # threads: the frames, at most torch's and the machine's cores
    assert (enc._pool is None) if side == 1 else (enc._pool._max_workers == side)  # the second call used them
    reference = np.stack([preprocess(f, enc.mapping(f.shape[1], f.shape[0])) for f in frames])
    assert np.array_equal(seen[0].numpy(), reference) and np.array_equal(seen[1].numpy(), reference)
    assert torch.equal(one, side_by_side)
