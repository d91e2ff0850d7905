"""The params.yaml schema: every section a dataclass, every field with a one-line doc
(docs/params.md is generated from them, so the reference cannot drift) and its checks
(gt, ge, lt, le, min_len). Every default equals the repository's params.yaml (tested).
Loading and validation: loading.py; `--set` overrides: overrides.py; the reference: reference.py;
how a field is declared: fields.py; the rig's sections (arms, sensors, cameras, poses): rig.py.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

from .fields import DEVICE_DOC, THREADS_DOC, param
from .rig import CameraConfig, RobotConfig, SensorConfig


# --------------------------------------------------------------------------- sections
# Every default below equals the value in the repository's params.yaml (tests/test_config.py
# checks it), so docs/params.md shows what a user of the demo runs.
@dataclass
class WorldConfig:
    """The simulated touch world (hsa_pipeline/world): the rig of `robot`, `sensors` and
    `cameras` over a table with object tiles, and a task. `synth` records its scripted
    expert; `evaluate` runs the trained policy in it, closed loop."""

    kind: Literal["touch", "aloha"] = param(
        "touch", "touch: this project's touch world (the keys below); aloha: gym-aloha's simulated bimanual tasks on "
                 "MuJoCo (the `aloha` section), the field's benchmark for ACT: synth records its scripted expert and "
                 "evaluate rolls the policy out there")
    task: Literal["match", "press"] = param(
        "match", "match: feel a probe whose class no camera shows and put it on the tile of its class (needs "
        "touch); press: press the target tiles left to right (vision suffices)")
    object_classes: int = param(6, "distinct object classes (a texture each, and an imprint shape)", ge=2, le=12)
    candidates: int = param(3, "match: tiles to choose from (one is the probe's class); guessing succeeds 1 in this",
                            ge=2, le=4)
    candidate_order: Literal["random", "by_class"] = param(
        "random", "match: where the candidate tiles lie. random: in random order (the felt class must be matched to "
                  "the seen tile); by_class: sorted by class, so with object_classes = candidates each class's tile "
                  "always lies at the same place and the felt class alone decides it (the control task: touch "
                  "reaching the decision, no matching)")
    touches: int = param(3, "press: target tiles to press", ge=1)
    distractors: int = param(3, "press: distractor tiles (in-image hard negatives)", ge=0)
    frames_per_touch: int = param(20, "the expert's frames for one approach-press-hold-lift cycle", ge=6)
    tactile_size: int = param(96, "tactile image side in pixels", ge=16)
    control_hz: float = param(10.0, "control steps per second (one recorded frame a step)", gt=0.0)
    max_joint_speed_deg: float = param(180.0, "an arm joint moves at most this fast toward its target, deg/s (a "
                                                "setting of the demo world, not a datasheet value)", gt=0.0)


@dataclass
class AlohaConfig:
    """gym-aloha's two simulated bimanual tasks (hsa_pipeline/aloha), used when `world.kind`
    is aloha: two ViperX 300s arms, one top camera, no tactile stream."""

    task: Literal["transfer_cube", "insertion"] = param(
        "transfer_cube", "transfer_cube: the right arm picks the cube up and hands it to the left; insertion: the "
                         "arms pick up a peg and a socket and put the peg in (success: the task's own reward 4)")
    image_height: int = param(240, "height of the recorded top camera (the benchmark's: 480; the encoder resizes "
                                   "to its input anyway)", ge=16)
    image_width: int = param(320, "width of the recorded top camera (the benchmark's: 640)", ge=16)
    shadows: bool = param(True, "render shadows as the benchmark does; false: about 3x cheaper rendering here, "
                                "and images the benchmark never shows", )
    episode_steps: int = param(400, "steps of a demonstration and of an evaluation rollout (50 Hz; the ACT paper "
                                    "and LeRobot's evaluation: 400)", ge=10)


@dataclass
class SynthConfig:
    """The embedded demo dataset (stage `synth`): the scripted expert acting in the touch
    world (`world`), recorded as HDF5 episodes."""

    enabled: bool = param(True, "generate the demo dataset; set false when data.episodes_dir points at real data")
    out_dir: str = param("data/demo", "where the demo episodes are written (episodes/ below it); "
                                      "data.episodes_dir must be <out_dir>/episodes while enabled")
    episodes: int = param(80, "number of episodes", ge=2)
    layout: Literal["xtrainer", "act"] = param("xtrainer", "HDF5 layout written: X-Trainer JPEG or ACT raw")
    jpeg_quality: int = param(90, "JPEG quality for the xtrainer layout", ge=1, le=100)
    seed: int = param(0, "scene seed; the dataset is a pure function of params (scenes of evaluate's rollouts are "
                         "disjoint from these)")


@dataclass
class LeRobotConfig:
    """Which features of a LeRobot dataset are the pipeline's qpos, action and image streams."""

    qpos: str = param("observation.state", "feature holding the joint positions")
    action: str = param("action", "feature holding the actions")
    streams: dict[str, str] = param(doc="stream name (data.cameras, data.tactile) -> video feature key; a stream "
                                        "not listed reads observation.images.<name>", factory=dict)


@dataclass
class ContactConfig:
    """When a tactile sensor is in contact, read from its own images (stage `prepare`;
    hsa_pipeline/data/contact.py): each frame's difference from the sensor's no-contact
    look (a contact score, 0..1), with hysteresis and a minimum duration. It decides where
    the sensor touches next (hsa.positives: next_contact), hsa.require_contact, the phases
    of the touch-reliance table and the alignment frames of `evaluate`, and the onsets of
    `hsa calibrate --check`."""

    reference: Literal["episode_start", "dataset_start"] = param(
        "episode_start", "the no-contact look: episode_start = the median of each episode's first reference_frames "
        "frames (recordings start with the pad free; follows a gel's drift between episodes); dataset_start = the "
        "median of those frames over every episode (robust when a few episodes start in contact). Never the bulk of "
        "the stream, so contact may last most of an episode")
    reference_frames: int = param(3, "frames at the start of each episode taken as free of contact", ge=1)
    enter: float = param(0.02, "contact begins when the score rises above this (the demo's gel: about 0.003 free, "
                               "0.03-0.05 in contact)", gt=0.0)
    exit: float = param(0.01, "contact ends when the score falls below this (hysteresis; <= enter)", gt=0.0)
    min_frames: int = param(2, "contact runs, and gaps inside contact, shorter than this many frames are ignored", ge=1)


@dataclass
class DataConfig:
    """Where episodes are and how to read them (stage `prepare`)."""

    episodes_dir: str = param("data/demo/episodes", "directory of episode_*.hdf5 files, or a local LeRobot dataset")
    layout: Literal["auto", "act", "xtrainer", "lerobot"] = param(
        "auto", "episode layout; auto: a LeRobot dataset when meta/info.json is there, else HDF5 (JPEG-compressed "
        "X-Trainer files are detected)")
    lerobot: LeRobotConfig = param(doc="LeRobot datasets only: which features are qpos, action and the streams",
                                   factory=LeRobotConfig)
    cameras: dict[str, Literal["third_person", "wrist"]] = param(
        doc="camera stream name -> role", factory=lambda: {"top": "third_person", "wrist": "wrist"})
    tactile: list[str] = param(doc="tactile image stream names", factory=lambda: ["tactile"])
    action_shift: int = param(
        0, "pair observation t with action[t - action_shift:]; 0 for sim data, 1 for the real-robot "
        "recordings of ACT/X-Trainer (observation t with action t-1 onward)", ge=0)
    train_ratio: float = param(0.75, "fraction of episodes used for training (split by episode)", gt=0.0, le=1.0)
    split_seed: int = param(0, "seed of the episode shuffle before the split")
    on_bad_episode: Literal["error", "skip"] = param(
        "error", "error: stop at the first bad episode; skip: list it in the manifest and go on")
    min_length: int = param(10, "episodes shorter than this many frames are bad", ge=1)
    contact: ContactConfig = param(doc="when a tactile sensor is in contact, from its own images", factory=ContactConfig)


@dataclass
class GeometryConfig:
    """Options of the `geometry` stage beyond the calibration itself."""

    margin_px: float = param(4.0, "pixels added on every side of a box to absorb calibration error", ge=0.0)
    press_tolerance_m: float = param(
        0.01, "sensors with contact: kinematics only: in contact within this of the sensor's lowest height in the "
              "episode", gt=0.0)


@dataclass
class FeaturesConfig:
    """The CLIP encoder whose patch-token grids the `features` stage caches."""

    model: str = param("hsa-tiny-vit", "open_clip model name, or one shipped in hsa_pipeline/features/model_configs")
    pretrained: Optional[str] = param(
        None, "open_clip pretrained tag or a local weights file; null = random weights (demo only)")
    block: int = param(-1, "transformer block whose tokens are cached; -1 = final tokens after ln_post")
    resize: Literal["stretch", "letterbox"] = param(
        "stretch", "keep the full field of view: stretch to a square or letterbox (never centre-crop)")
    batch_size: int = param(64, "images per encoder batch", ge=1)
    workers: int = param(2, "DataLoader workers that decode and resize", ge=0)
    device: str = param("auto", DEVICE_DOC)
    threads: Union[Literal["auto"], int] = param(1, THREADS_DOC, ge=1)


@dataclass
class ActConfig:
    """ACT as published (Zhao et al. 2023); the demo uses a smaller transformer."""

    chunk_size: int = param(20, "actions predicted per step", ge=1)
    hidden_dim: int = param(128, "transformer width (ACT: 512)", ge=8)
    dim_feedforward: int = param(512, "feed-forward width (ACT: 3200)", ge=8)
    enc_layers: int = param(2, "transformer encoder layers (ACT: 4)", ge=1)
    dec_layers: int = param(2, "decoder layers, every one used (ACT built 7 and used 1)", ge=1)
    heads: int = param(4, "attention heads (ACT: 8)", ge=1)
    dropout: float = param(0.1, "dropout", ge=0.0, lt=1.0)
    latent_dim: int = param(32, "CVAE latent size", ge=1)
    vae_enc_layers: int = param(2, "CVAE encoder layers (ACT: 4)", ge=1)
    vae: bool = param(True, "the CVAE of ACT: in training an encoder reads the demonstrated actions into a latent "
                            "z; at inference z = 0. false: no CVAE (z is always 0), so nothing but the observation "
                            "can carry a choice into the actions")
    kl_weight: float = param(10.0, "weight of the KL term (with vae: true); it is what keeps z from carrying a "
                                   "choice the observation should make (README, 'Why the policy ignored touch')",
                             ge=0.0)
    grid_pool: int = param(2, "average-pool camera token grids by this factor before the transformer", ge=1)
    full_grid: list[str] = param(doc="streams the transformer sees unpooled (every patch token), e.g. the camera "
                                     "whose small details decide the task", factory=list)
    touch_map: bool = param(
        True, "explicit grounding of touch in sight: each tactile sensor marks the tokens of the cameras that can see "
               "where it is going (its own arm's wrist cameras and every third-person camera) with a learned vector "
               "of its own, weighted by how well each token matches what THAT sensor feels (cosine of two projection "
               "heads over a learned temperature, softmax over the camera's tokens), so 'where do I see what I feel' "
               "is an input of the transformer, not something attention must find. With hsa.enabled the heads are "
               "HSA's own: the alignment HSA learns per sensor is the map the policy reads")
    touch_query: Literal["per_sensor", "mean"] = param(
        "per_sensor", "touch_map only: per_sensor = one map per sensor, as above; mean = one map from the mean of "
                      "every tactile stream's tokens marking every camera (the map before per-arm maps, kept to "
                      "compare: with two pads it halves one pad's signal, blends two felt classes and lets a pad mark "
                      "the other arm's wrist camera)")
    touch_map_tokens: bool = param(
        False, "touch_map only: each map also enters the transformer whole, as one token per camera it marks (a "
               "learned linear read of its weight at every patch token), so a place finer than the pooled grid, "
               "and which part of a shared camera is its own arm's, reach the decision. For a third-person camera "
               "over several workspaces whose pooled tokens each cover more than one of the things to tell apart "
               "(presets/touch-world/bimanual.yaml)")
    arm_queries: bool = param(
        False, "each arm its own chunk_size action queries: an arm's action columns (its joints and claw, by the "
               "geometry store's column names) are read from the decoder outputs of its own queries, which still "
               "attend to each other; columns of no arm come from the first arm's. Needs actions in qpos space. "
               "One arm: no change")
    relative_actions: bool = param(
        False, "predict each chunk relative to the current qpos (needs actions in qpos space); ACT: absolute")
    blind: list[str] = param(doc="streams the policy does not see (their tokens are zeroed), for ablations such as "
                                 "a touch-blind policy: [tactile]", factory=list)
    checkpoint_layers: bool = param(
        False, "training memory: recompute each transformer layer's activations in the backward pass instead of "
               "keeping them (same gradients; X-Trainer config on a CPU: peak RSS 4.1-4.3 -> 2.8 GB, 36% slower)")


@dataclass
class HsaConfig:
    """The HSA tactile-visual contrastive loss (docs/hsa-loss.md explains every knob)."""

    enabled: bool = param(True, "add the HSA loss; false = plain ACT on the same tokens")
    weight: float = param(1.0, "w_HSA in L = L1 + kl_weight*KL + w_HSA*L_HSA", ge=0.0)
    third_person_weight: float = param(1.0, "scale of the third-person term (times visibility alpha)", ge=0.0)
    proj_dim: int = param(64, "projection head output size", ge=1)
    temperature: float = param(0.07, "kappa (initial value when learnable)", gt=0.0)
    temperature_mode: Literal["fixed", "learnable", "anneal"] = param(
        "fixed", "fixed, learnable (CLIP-style, clamped) or annealed")
    temperature_final: float = param(0.07, "kappa at the end of training when annealed", gt=0.0)
    temperature_min: float = param(0.01, "lower clamp of a learnable kappa", gt=0.0)
    symmetric: bool = param(False, "also contrast vision -> tactile (in-batch only)")
    in_image_negatives: bool = param(True, "use out-of-box tokens of the same image as hard negatives")
    bank_size: int = param(0, "FIFO memory bank of past wrist embeddings used as extra negatives; 0 = off", ge=0)
    bank_topk: int = param(0, "keep only the k hardest bank negatives; 0 = all", ge=0)
    require_contact: bool = param(False, "only frames in contact count as positives (the published method, with "
                                         "positives: now); with next_contact every frame points where its touch "
                                         "next changes")
    positives: Literal["now", "next_contact"] = param(
        "next_contact", "the positive box: now = where the sensor is in the image (the published method); "
        "next_contact = where its touch next CHANGES, from the recording's own future: out of contact, where its "
        "next contact begins; in contact, where this contact ends (where a carried object is put down). Contact "
        "comes from the sensor's own images (data.contact, or sensors.<name>.contact: kinematics); forward "
        "kinematics of that frame projected into the current one gives the box. Frames of an episode without "
        "contact get no positive")
    reduction: Literal["mean", "sum"] = param("mean", "mean or sum of the per-sample losses over usable samples")


@dataclass
class TrainConfig:
    """The `train` stage: optimisation, devices, logging and checkpoints."""

    steps: int = param(1000, "optimizer steps (the demo's length; the studies train 1,500 unless a preset says, "
                             "the claw 3,000); raising it on a finished run continues that run", ge=1)
    batch_size: int = param(32, "samples per step (per process)", ge=1)
    lr: float = param(3e-4, "AdamW learning rate (after warm-up; constant, so it does not depend on steps)", gt=0.0)
    weight_decay: float = param(1e-4, "AdamW weight decay", ge=0.0)
    grad_clip: float = param(10.0, "max gradient norm; 0 = off", ge=0.0)
    warmup_steps: int = param(100, "linear warm-up steps", ge=0)
    seed: int = param(0, "seed for torch, numpy and sampling")
    device: str = param("auto", DEVICE_DOC)
    threads: Union[Literal["auto"], int] = param(1, THREADS_DOC, ge=1)
    compile: Union[bool, Literal["auto", "default", "reduce-overhead", "max-autotune"]] = param(
        "auto", "torch.compile the training forward and backward: auto = reduce-overhead (CUDA graphs: the step "
        "launches one graph instead of thousands of kernels) on a GPU and off on a CPU (eager: compiling costs "
        "a minute there and changes the float sums); true (= default), a mode, or false. A compile that fails "
        "says why in one line and the run trains eager. HSA diagnostics run outside the compiled graph")
    memory_budget_gb: float = param(4.0, "hold the caches in RAM below this size (a GPU run moves them there while "
                                    "they take at most half its free memory), else stream from Zarr", gt=0.0)
    workers: int = param(0, "DataLoader workers when streaming", ge=0)
    log_every: int = param(25, "steps between TensorBoard/TSV scalars", ge=1)
    val_every: int = param(250, "steps between validations", ge=1)
    ckpt_every: int = param(500, "steps between checkpoints", ge=1)
    resume: bool = param(True, "continue from the last checkpoint when it was made from the same inputs, code "
                               "and settings (else start fresh)")


@dataclass
class EvalConfig:
    """The `evaluate` stage: open-loop scores on held-out episodes, and closed-loop
    rollouts of the policy in the touch world."""

    ensemble_k: float = param(0.01, "temporal ensembling weight exp(-k*i), i = 0 the oldest prediction", ge=0.0)
    report_frames: int = param(4, "frames shown with boxes and heat maps in the HTML report", ge=0)
    rollouts: int = param(20, "closed-loop rollouts in the touch world (scenes disjoint from the training ones); 0 = "
                              "none (real-robot data: the policy cannot act in the demo world)", ge=0)
    max_steps: int = param(80, "a rollout that has not succeeded after this many steps is a failure (timeout)", ge=1)
    seed: int = param(0, "seed of the rollout scenes")
    threads: Union[Literal["auto"], int] = param(1, THREADS_DOC, ge=1)
    memory_budget_gb: float = param(4.0, "hold the validation frames' token grids (and their swap donors') in RAM "
                                         "below this size, else read them from Zarr as each batch needs them",
                                    gt=0.0)
    server: Optional[str] = param(None, "null: the rollouts run the exported policy in this process; ws://HOST:PORT: "
                                        "through that `hsa serve` server with openpi's client (API key from the "
                                        "HSA_API_KEY environment variable), to check a deployment closed loop")


@dataclass(kw_only=True)
class Params:
    """All of params.yaml. The tactile sensors and cameras have no defaults: they are your
    rig's calibration."""

    world: WorldConfig = param(factory=WorldConfig)
    aloha: AlohaConfig = param(factory=AlohaConfig)
    synth: SynthConfig = param(factory=SynthConfig)
    data: DataConfig = param(factory=DataConfig)
    robot: RobotConfig = param(factory=RobotConfig)
    sensors: dict[str, SensorConfig] = param(doc="tactile stream name -> sensor")
    cameras: dict[str, CameraConfig] = param(doc="camera stream name -> calibration")
    geometry: GeometryConfig = param(factory=GeometryConfig)
    features: FeaturesConfig = param(factory=FeaturesConfig)
    act: ActConfig = param(factory=ActConfig)
    hsa: HsaConfig = param(factory=HsaConfig)
    train: TrainConfig = param(factory=TrainConfig)
    eval: EvalConfig = param(factory=EvalConfig)
    numerics: Literal["portable", "native"] = param(
        "portable", "the CPU arithmetic of every stage that computes: portable = the same bytes on every x86-64 CPU "
        "with AVX2, Intel or AMD (MKL's COMPATIBLE branch, torch's AVX2 kernels, no oneDNN, numpy without AVX512; "
        "with threads 1); native = each library's fastest code for the CPU at hand (faster, and the bytes follow "
        "the CPU). GPUs are not covered (pipeline/numerics.py)")


def is_weights_path(pretrained: str | None) -> bool:
    """features.pretrained names a local weights file (not an open_clip tag, not null)."""
    return pretrained is not None and (Path(pretrained).suffix in (".bin", ".pt", ".pth", ".safetensors")
                                       or "/" in pretrained or os.sep in pretrained)


def to_dict(obj: Any) -> Any:
    """Plain data (for checkpoints, store attributes and TensorBoard hparams)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
