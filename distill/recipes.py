"""Distillation recipes: one YAML per method in ``configs/recipes/`` (SMKD, CRKD, SignKD, KD-MSLRT).

A recipe names a teacher, a student, the data, the losses and the training schedule::

    method: kdmslrt              # informative: smkd | crkd | signkd | kdmslrt
    paper: {...}                 # the paper's hyper-parameters at paper scale (not read)
    teacher: {name, config, features, reduce_dim, online, out_of_fold}   # absent: no teacher (SMKD)
    data: {dataset, cache, augment}                 # models.train.DataConfig (streams: from the student)
    student: {kind, ...}                            # models.students.StudentConfig (+ lrinet_width, lrinet_stem_repeats)
    landmark_augment: {...}                         # KD-MSLRT augmentations (landmark students)
    transfer: {weight, augment: {...}, splice}      # KD-only perturbed views (online teacher)
    kd: {posterior, temperature, blank_mode, features, feature_map}
    smkd: {weight, temperature}                     # SMKD self-mutual loss
    stages: [{name, epochs, data, lr, level_weights, distill}]  # absent: one stage of train.epochs
    train: {...}                                    # models.train.TrainConfig
    correction: {...}                               # KD-MSLRT text error correction (CorrectionConfig overrides)
    eval: {beam}

``load_recipe`` validates everything up front (unknown keys, flips with distillation, ...),
so a bad recipe fails before any teacher runs.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from distill.losses import BLANK_MODES
from models.augment import LandmarkAugmentConfig
from models.data import AugmentConfig
from models.students import STUDENT_KINDS, StudentConfig
from models.train import DataConfig, TrainConfig
from preprocess.configs import ConfigError, from_dict, load_yaml, preset_dir, preset_names, preset_path

METHODS = ("smkd", "crkd", "signkd", "kdmslrt")
STAGE_DATA = ("sentences", "segments", "sentences+segments")
STUDENT_STREAMS = {"landmark": ("keypoints",), "rgb": ("rgb",), "lrinet": ("rgb",)}  # cache streams each kind reads


@dataclass(frozen=True)
class TeacherSpec:
    name: str  # checkpoint exp/teachers/<name>/best.pt, else exp/kd_teachers/<name>/best.pt
    config: str = ""  # teacher training YAML (models.train), used by --train-teacher when neither exists
    features: tuple[str, ...] = ()  # teacher features cached besides the main posteriors ("frame", "context", ...)
    reduce_dim: int = 0  # > 0: cache wider features through a fixed random projection to this width
    online: bool = False  # run the teacher on every augmented training batch (the student's exact view)
    #   instead of caching its outputs on the clean clips: a teacher that fits its training clips
    #   says little more than the labels there, but on a perturbed clip it shows what it would guess
    out_of_fold: bool = False  # an ensemble whose members trained on different folds: each clip's
    #   cached posteriors are the mean of only the members that never trained on it (evaluate.cv --cross-fit)

    def __post_init__(self) -> None:
        if self.online and self.reduce_dim:
            raise ValueError("teacher.reduce_dim shrinks cached features; an online teacher (teacher.online) "
                             "passes them whole: drop reduce_dim")
        if self.online and self.out_of_fold:
            raise ValueError("teacher.out_of_fold chooses the members per cached clip; it cannot run online: "
                             "set teacher.online: false")


@dataclass(frozen=True)
class KDConfig:
    posterior: float = 1.0  # weight of KL(teacher || student) on the main-level frame posteriors
    occupancy: float = 0.0  # weight of the alignment-free KL of the clips' gloss occupancies (distill.losses)
    temperature: float = 1.0  # softening temperature of that KL (T^2-scaled, distill.losses.kd_kl)
    blank_mode: str = "keep"  # "keep" | "drop" | "weight": how the CTC blank enters the KL
    features: dict[str, float] = field(default_factory=dict)  # student feature -> MSE weight (projected when widths differ)
    feature_map: dict[str, str] = field(default_factory=dict)  # student feature -> teacher feature (default: same name)
    only_correct: bool = False  # distil only the training clips the teacher itself decodes correctly (its
    #   mistakes on the training set would otherwise be taught against the transcript's CTC target)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", {str(k): float(v) for k, v in dict(self.features).items()})
        object.__setattr__(self, "feature_map", {str(k): str(v) for k, v in dict(self.feature_map).items()})
        if self.blank_mode not in BLANK_MODES:
            raise ValueError(f"kd.blank_mode must be one of {BLANK_MODES}, got {self.blank_mode!r}")
        if not self.temperature > 0:
            raise ValueError(f"kd.temperature must be > 0, got {self.temperature}")
        if self.posterior < 0 or self.occupancy < 0 or any(w < 0 for w in self.features.values()):
            raise ValueError(f"kd weights must be >= 0, got posterior {self.posterior}, occupancy {self.occupancy}, "
                             f"features {self.features}")
        stray = sorted(set(self.feature_map) - set(self.features))
        if stray:
            raise ValueError(f"kd.feature_map names {stray}, which kd.features does not weigh")

    def teacher_feature(self, student_feature: str) -> str:
        return self.feature_map.get(student_feature, student_feature)

    @property
    def active(self) -> bool:
        return self.posterior > 0 or self.occupancy > 0 or any(w > 0 for w in self.features.values())


@dataclass(frozen=True)
class SMKDConfig:
    weight: float = 0.0  # weight of the self-mutual KL (contextual "main" teaches visual "conv_main"); 0: off
    temperature: float = 8.0  # SMKD's temperature

    def __post_init__(self) -> None:
        if self.weight < 0 or not self.temperature > 0:
            raise ValueError(f"smkd.weight must be >= 0 and temperature > 0, got {self.weight}, {self.temperature}")


@dataclass(frozen=True)
class StageConfig:
    name: str  # sub-folder of the run for this stage's checkpoints
    epochs: int  # epochs of this stage
    data: str = "sentences"  # "sentences" | "segments" (SMKD: per-gloss clips cut by the previous stage's CTC
    #   alignment) | "sentences+segments" (both in one training set; no teacher outputs on such a stage)
    lr: float | None = None  # learning rate of this stage (default train.lr)
    level_weights: dict[str, float] | None = None  # CTC levels of this stage (default train.level_weights)
    distill: bool = True  # apply the recipe's KD/SMKD losses in this stage
    segment_ce: float = 0.0  # segments: weight of a cross-entropy making every conv step of a clip predict its
    #   gloss (frame-level pseudo-labels from the alignment, as in iterative CSLR training)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"stage name must be a plain folder name, got {self.name!r}")
        if int(self.epochs) < 1:
            raise ValueError(f"stage {self.name!r}: epochs must be >= 1, got {self.epochs}")
        if self.data not in STAGE_DATA:
            raise ValueError(f"stage {self.name!r}: data must be one of {STAGE_DATA}, got {self.data!r}")
        if self.segment_ce < 0 or (self.segment_ce > 0 and self.data != "segments"):
            raise ValueError(f"stage {self.name!r}: segment_ce must be >= 0 and needs data: segments, "
                             f"got {self.segment_ce} on {self.data!r}")


@dataclass(frozen=True)
class TransferConfig:
    """KD-only transfer views: a second, strongly perturbed copy of every training clip on which
    the student matches the (online) teacher's posteriors, with no CTC loss.

    On its own training clips a teacher that fits them says little more than the labels; on a
    perturbed clip its members disagree and show how they generalise. Teacher and student see
    the same view, so any perturbation is consistent (even a left/right swap: no label is
    involved), while the CTC loss stays on the clip as the data section draws it. A spliced view
    joins two clips at a random frame: no label exists for it, so only a teacher can teach it.
    """

    weight: float = 1.0  # weight of the view's KL (at kd.temperature, with kd.blank_mode)
    augment: LandmarkAugmentConfig = field(default_factory=lambda: LandmarkAugmentConfig(swap_prob=0.0))
    splice: float = 0.0  # probability that a view is spliced: the clip up to a random cut, then another
    # training clip from a random frame (models.augment.LandmarkAugment.splice), before the augment

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"transfer.weight must be > 0, got {self.weight}")
        if not 0.0 <= self.splice <= 1.0:
            raise ValueError(f"transfer.splice must be in [0, 1], got {self.splice}")


@dataclass(frozen=True)
class Recipe:
    name: str  # recipe name (file stem): default output exp/students/<name>
    method: str  # "smkd" | "crkd" | "signkd" | "kdmslrt"
    data: DataConfig  # cache, dataset, augmentation; streams follow the student kind
    student: dict[str, Any]  # StudentConfig fields
    train: TrainConfig  # optimizer, schedule, CTC level weights (per stage overrides in stages)
    teacher: TeacherSpec | None = None  # None: no teacher (SMKD distils itself)
    kd: KDConfig = field(default_factory=KDConfig)
    smkd: SMKDConfig = field(default_factory=SMKDConfig)
    landmark_augment: LandmarkAugmentConfig | None = None  # KD-MSLRT landmark augmentations
    transfer: TransferConfig | None = None  # KD-only transfer views (landmark students, online teacher)
    stages: tuple[StageConfig, ...] = ()  # empty: one "sentences" stage of train.epochs
    correction: dict[str, Any] | None = None  # CorrectionConfig overrides (+ confusions: learn the student's
    #   own substitutions on the training split): train and apply the KD-MSLRT text corrector
    eval_beam: int = 10  # beam of the final dev/test decoding
    paper: dict[str, Any] = field(default_factory=dict)  # the paper's settings, for the record
    raw: dict[str, Any] = field(default_factory=dict)  # the YAML as read (saved in checkpoints)

    @property
    def kind(self) -> str:
        return str(self.student.get("kind", "landmark"))

    @property
    def streams(self) -> tuple[str, ...]:
        return STUDENT_STREAMS[self.kind]

    @property
    def distills(self) -> bool:
        """Whether the recipe has anything beyond CTC (a teacher loss or SMKD)."""
        return (self.teacher is not None and self.kd.active) or self.smkd.weight > 0

    def stage_list(self, kd: bool) -> tuple[StageConfig, ...]:
        """The stages to run; the CTC-only twin (kd=False) trains one sentence stage of the total epochs."""
        stages = self.stages or (StageConfig("main", self.train.epochs),)
        if kd:
            return stages
        return (StageConfig("main", sum(s.epochs for s in stages), distill=False),)


def student_config(d: dict[str, Any]) -> StudentConfig:
    """The StudentConfig of a recipe's student dict."""
    return StudentConfig.from_dict(dict(d))


def _section(cls: type, d: Any, name: str) -> Any:
    return from_dict(cls, d, section=name)


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A recipe name (a preset ``recipes/<name>.yaml``, see :func:`preset_dir`) or a path to a YAML file."""
    p = preset_path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: recipe not found")
        return p
    cand = preset_dir("recipes") / f"{name_or_path}.yaml"
    if not cand.is_file():
        names = preset_names("recipes")
        raise FileNotFoundError(f"unknown recipe {str(name_or_path)!r}; choose one of {names} or give a YAML path")
    return cand


def load_recipe(name_or_path: str | os.PathLike, cache: str | None = None, epochs: int | None = None) -> Recipe:
    """Read and validate a recipe; ``cache``/``epochs`` override it (command-line flags).

    ``epochs`` sets train.epochs, and every stage's epochs when the recipe has stages.
    """
    path = recipe_path(name_or_path)
    raw = load_yaml(path, "recipe")
    try:
        return _parse(raw, path.stem, cache, epochs)
    except (TypeError, ValueError) as e:  # one line that names the file once
        raise ConfigError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


def _parse(raw: dict[str, Any], stem: str, cache: str | None, epochs: int | None) -> Recipe:
    known = {"name", "method", "paper", "teacher", "data", "student", "landmark_augment", "transfer", "kd", "smkd",
             "stages", "train", "correction", "eval"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown recipe section(s) {unknown}; known: {sorted(known)}")
    for need in ("data", "student", "train"):
        if need not in raw:
            raise ValueError(f"the recipe needs a {need!r} section")
    method = str(raw.get("method", stem))
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")

    student = dict(raw["student"] or {})
    kind = student.get("kind", "landmark")
    if kind not in STUDENT_KINDS:
        raise ValueError(f"unknown student kind {kind!r}; choose one of {STUDENT_KINDS}")
    student_config(student)  # validates the StudentConfig fields

    data = dict(raw["data"])
    if "streams" in data and tuple(data["streams"]) != STUDENT_STREAMS[kind]:
        raise ValueError(f"data.streams {data['streams']} do not match a {kind} student, which reads "
                         f"{list(STUDENT_STREAMS[kind])}; drop data.streams")
    data["streams"] = STUDENT_STREAMS[kind]
    data["augment"] = AugmentConfig.from_dict(data.get("augment"))
    if cache is not None:
        data["cache"] = cache
    data_cfg = _section(DataConfig, data, "data")

    train = _section(TrainConfig, raw["train"], "train")
    stages = tuple(_section(StageConfig, s, "stage") for s in (raw.get("stages") or ()))
    if len({s.name for s in stages}) != len(stages):
        raise ValueError(f"stage names repeat: {[s.name for s in stages]}")
    if stages and stages[0].data != "sentences":
        raise ValueError("the first stage cannot train on segments: they are cut by a trained model's alignment")
    if epochs is not None:
        train = replace(train, epochs=int(epochs))
        stages = tuple(replace(s, epochs=int(epochs)) for s in stages)

    teacher = None
    if raw.get("teacher"):
        t = dict(raw["teacher"])
        t["features"] = tuple(t.get("features") or ())
        teacher = _section(TeacherSpec, t, "teacher")
        if not teacher.name:
            raise ValueError("teacher.name is empty")
    kd = _section(KDConfig, raw.get("kd"), "kd")
    smkd = _section(SMKDConfig, raw.get("smkd"), "smkd")
    if teacher is not None:
        missing = sorted({kd.teacher_feature(s) for s, w in kd.features.items() if w > 0} - set(teacher.features))
        if missing:
            raise ValueError(f"kd.features need teacher features {missing}; add them to teacher.features")
    elif kd.features or "kd" in raw:
        raise ValueError("kd needs a teacher section (SMKD-style self-distillation goes in smkd)")
    if smkd.weight > 0 and kind == "lrinet":
        raise ValueError("smkd needs a student with a conv_main level (landmark or rgb)")

    lm = None
    if raw.get("landmark_augment") is not None:
        if kind != "landmark":
            raise ValueError(f"landmark_augment applies to landmark students, not {kind!r}")
        lm = _section(LandmarkAugmentConfig, raw["landmark_augment"], "landmark_augment")
    if teacher is not None:  # a mirrored clip changes direction-dependent glosses: cached targets would lie
        flips = {"data.augment.flip_prob": data_cfg.augment.flip_prob, "landmark_augment.swap_prob": lm.swap_prob if lm else 0.0}
        on = {k: v for k, v in flips.items() if v > 0}
        if on:
            raise ValueError(f"flips {on} with a teacher: the cached teacher outputs are for the unmirrored clip; "
                             "set them to 0 (see distill.teacher_cache)")

    transfer = None
    if raw.get("transfer") is not None:
        t = dict(raw["transfer"])
        aug = _section(LandmarkAugmentConfig, {"swap_prob": 0.0, **dict(t.pop("augment", None) or {})},
                       "transfer.augment")
        transfer = _section(TransferConfig, {**t, "augment": aug}, "transfer")
        if kind != "landmark":
            raise ValueError(f"transfer views are landmark views; they apply to landmark students, not {kind!r}")
        if teacher is None or not teacher.online:
            raise ValueError("transfer views need the teacher on the perturbed clip: set teacher.online: true")

    correction = raw.get("correction")
    if correction is not None:
        from distill.correction import CorrectionConfig

        correction = dict(correction or {})
        if not isinstance(correction.get("confusions", False), bool):
            raise ValueError(f"correction.confusions must be true or false, got {correction['confusions']!r}")
        CorrectionConfig.from_dict({k: v for k, v in correction.items() if k != "confusions"})  # validates
    ev = dict(raw.get("eval") or {})
    if set(ev) - {"beam"}:
        raise ValueError(f"unknown eval option(s) {sorted(set(ev) - {'beam'})}; known: ['beam']")
    beam = int(ev.get("beam", 10))
    if beam < 1:
        raise ValueError(f"eval.beam must be >= 1, got {beam}")
    return Recipe(name=str(raw.get("name", stem)), method=method, data=data_cfg, student=student, train=train,
                  teacher=teacher, kd=kd, smkd=smkd, landmark_augment=lm, transfer=transfer, stages=stages,
                  correction=correction,
                  eval_beam=beam, paper=dict(raw.get("paper") or {}), raw=raw)


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """A plain summary of the recipe as run (for checkpoints and results.json)."""
    return {"name": recipe.name, "method": recipe.method, "student": dict(recipe.student),
            "teacher": asdict(recipe.teacher) if recipe.teacher else None, "kd": asdict(recipe.kd),
            "smkd": asdict(recipe.smkd), "stages": [asdict(s) for s in recipe.stages],
            "landmark_augment": asdict(recipe.landmark_augment) if recipe.landmark_augment else None,
            "transfer": asdict(recipe.transfer) if recipe.transfer else None,
            "train": asdict(recipe.train), "correction": recipe.correction, "eval_beam": recipe.eval_beam}
