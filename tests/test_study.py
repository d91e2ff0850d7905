"""scripts/hsa_study.py: the table's pooled rates, intervals and paired differences from
hand-made runs (the figures are checked against hand computation)."""

from __future__ import annotations

import pytest
import yaml

from conftest import load_script
from hsa_pipeline.config import apply_overrides, params_from_dict
from hsa_pipeline.evaluation.rollout import paired_difference, wilson


def _study():
    return load_script("hsa_study")


def _run(variant, seed, outcomes, decision=None, reliance=None):
    k = sum(outcomes)
    return {"variant": variant, "seed": seed, "episodes": None, "outcomes": list(enumerate(outcomes)),
            "closed_loop": {"successes": k, "rollouts": len(outcomes), "success_rate": k / len(outcomes),
                            "decision": decision or {}, "task": "match", "guess_rate": 1 / 3},
            "touch_reliance": {"in contact": {"reliance": reliance}}, "alignment": {}, "chunk_l1_vs_hold": 0.2}


def test_the_table_pools_seeds_and_pairs_each_variant_with_hsa_off_scene_by_scene():
    study = _study()
    on = [_run("hsa-on", 0, [1, 1, 0, 1], {"accuracy": 1.0, "follows_touch": 0.9}, 1.5),
          _run("hsa-on", 1, [1, 0, 1, 1], {"accuracy": 0.5, "follows_touch": 0.5}, 0.5)]
    off = [_run("hsa-off", 0, [0, 1, 0, 1]), _run("hsa-off", 1, [1, 0, 0, 0])]
    table = {r["variant"]: r for r in study.summarise(on + off)}
    assert table["hsa-on"]["successes"] == 6 and table["hsa-on"]["rollouts"] == 8
    assert table["hsa-on"]["ci95"] == list(wilson(6, 8))
    assert table["hsa-on"]["decision_accuracy"] == 0.75 and table["hsa-on"]["reliance_in_contact"] == 1.0
    # pairs (seed, scene): on 1 1 0 1 1 0 1 1 against off 0 1 0 1 1 0 0 0
    assert table["hsa-on"]["minus_hsa-off"] == list(paired_difference([1, 1, 0, 1, 1, 0, 1, 1],
                                                                      [0, 1, 0, 1, 1, 0, 0, 0]))
    assert table["hsa-on"]["minus_hsa-off"][0] == pytest.approx(3 / 8)
    assert "minus_hsa-off" not in table["hsa-off"]
    args = type("A", (), {"seeds": [0, 1], "rollouts": 4, "set": [], "preset": []})
    text = study.render(study.summarise(on + off), on + off, args, 1.0)
    assert "| params | hsa-on | 6/8 = 75% |" in text and "+38%" in text


def test_a_bimanual_study_reports_each_arm_as_the_mean_over_seeds():
    study = _study()
    arms = [{"left": {"decision_right": 1.0, "picked_up": 1.0, "on_a_tile": 0.5, "right_tile": 0.5},
             "right": {"decision_right": 0.5, "picked_up": 1.0, "on_a_tile": 1.0, "right_tile": 0.25}},
            {"left": {"decision_right": 0.5, "picked_up": 0.5, "on_a_tile": 0.5, "right_tile": 0.0},
             "right": {"decision_right": None, "picked_up": 0.0, "on_a_tile": 0.0, "right_tile": 0.0}}]
    runs = [_run("hsa-on", s, [1, 0, 0, 1]) for s in (0, 1)]
    for r, a in zip(runs, arms, strict=True):
        r["closed_loop"]["per_arm"] = a
    table = study.summarise(runs)
    assert table[0]["per_arm"]["left"] == {"decision_right": 0.75, "picked_up": 0.75, "on_a_tile": 0.5,
                                           "right_tile": 0.25}
    assert table[0]["per_arm"]["right"]["decision_right"] == 0.5  # a seed without a check does not count
    args = type("A", (), {"seeds": [0, 1], "rollouts": 4, "set": [], "preset": []})
    text = study.render(table, runs, args, 1.0)
    assert "| params | hsa-on | left | 75% | 75% | 50% | 25% |" in text
    assert "| params | hsa-on | right | 50% | 50% | 50% | 12% |" in text


def test_a_study_trains_as_long_as_its_preset_says_unless_steps_is_given(tmp_path):
    study = _study()
    params = yaml.safe_load((study.REPO / "params.yaml").read_text())

    def steps(presets, given):
        overrides = study.study_overrides(presets, given, [], 50)
        return params_from_dict(apply_overrides(params, overrides)).train.steps

    preset = tmp_path / "long.yaml"
    preset.write_text("train.steps: 4321\nworld.task: match\n")
    plain = tmp_path / "plain.yaml"
    plain.write_text("world.task: match\n")
    assert steps([preset], None) == 4321  # the preset's own budget
    assert steps([preset], 99) == 99  # --steps wins
    assert steps([plain], None) == study.STUDY_STEPS == 1500  # neither says: the studies' 1,500
    assert steps([], None) == 1500 and params["train"]["steps"] != 1500  # not the demo's 1,000
    assert study.study_overrides([], 7, ["world.object_classes=3"], 50)[-2:] == ["world.object_classes=3",
                                                                                "eval.rollouts=50"]


def test_a_stages_peak_memory_is_its_own_allocation_not_its_parents(tmp_path):
    """run_measured's peak memory against known allocations: a child that writes 400 MiB
    reports at least that, one that allocates nothing far less, even when the parent
    holds 600 MiB itself (ru_maxrss would report the parent's); the exit code and the
    output come back as from subprocess.run; the module runs as `python -m` would run it."""
    import os

    import numpy as np

    study = _study()
    held = np.ones(600 * 2**20 // 8)  # the parent's own 600 MiB, resident while the children start
    (tmp_path / "big.py").write_text("import numpy as np\na = np.ones(400 * 2**20 // 8)\nprint(a.size)\n")  # 400 MiB
    (tmp_path / "exits.py").write_text("import sys\nprint(sys.argv[1:])\nraise SystemExit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    with open(tmp_path / "log", "w") as log:
        code, cost = study.run_measured("big", [], tmp_path, env, log)
        small_code, small = study.run_measured("exits", ["--flag"], tmp_path, env, log)
    assert held.sum() == held.size
    assert code == 0 and small_code == 3
    assert (tmp_path / "log").read_text().split("\n")[:2] == [str(400 * 2**20 // 8), "['--flag']"]
    assert cost.peak_rss_gb >= 400 / 1024
    assert small.peak_rss_gb < 0.2  # an interpreter: tens of MiB, neither the other child's 400 nor the parent's
    assert cost.seconds > 0


def test_the_aloha_studys_table_gives_each_stages_time_and_memory():
    aloha = load_script("aloha_study")
    study = load_script("hsa_study")
    row = {"steps": 100, "successes": 1, "rollouts": 4, "success": 0.25, "ci95": list(wilson(1, 4)),
           "per_seed": [0.25], "stages": {"lifted": 0.5}}
    args = type("A", (), {"seeds": [0], "rollouts": 4, "set": [], "preset": []})
    costs = {"synth": study.StageCost(12.4, 1.5), "s0: train to 100": study.StageCost(30.0, 0.75)}
    text = aloha.render("transfer_cube", [row], args, 1.0, costs)
    assert "- synth: 12 s, 1.50 GiB" in text and "- s0: train to 100: 30 s, 0.75 GiB" in text
    assert "| 100 | 1/4 = 25% |" in text
