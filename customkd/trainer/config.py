"""The distill process's configuration: one frozen dataclass, validated on construction.

Each field is declared once, with its help text, known values, help panel and flag aliases
(:func:`common.options.option`): the run's own here, each method family's in :mod:`trainer.methods.options`.
``customkd distill``'s options, the keys of ``--config`` files and ``DistillConfig.from_file`` are all derived
from these fields."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from customkd.common.errors import UserError
from customkd.common.options import check_workers, field_hints, option
from customkd.trainer.methods.options import (
    OPTION_GROUPS,
    CustomKDOptions,
    DKDOptions,
    FeatureTermOptions,
    KDOptions,
)
from customkd.trainer.run_folder import CONFIG, MAX_IMAGE_SIZE, as_given

SETTINGS = ("supervised", "ssl", "uda")
METHOD_NAMES = ("student", "fitnet", "kd", "kd+fitnet", "dkd", "customkd", "customkd+kd", "customkd+dkd")  # = trainer.methods.METHODS
OPTIMIZERS = {"adamw": 2e-3, "sgd": 0.05}  # name → default learning rate
# name → default weight decay. AdamW's is decoupled (lr × decay per step: 1e-4 at the default lr); SGD's is added to
# the gradient and amplified by momentum 0.9, so it takes FixMatch's value for its Nesterov SGD (Sohn et al. 2020),
# the semi-supervised recipe this optimiser follows, and the usual CIFAR ResNet/WRN value.
WEIGHT_DECAY_DEFAULTS = {"adamw": 0.05, "sgd": 5e-4}
FEATURE_NORMS = ("none", "l2", "standardize")
VIEW_SAMPLING = ("cycle", "random")
EVAL_SPLITS = ("test", "dev")  # dev: a fixed part of the training rows, for choosing settings without the test rows
DEFAULT_EPOCHS = 8
# λ_g when --lambda-general is not given: FitNet's usual weight for the feature-imitation methods; 0.1 for the
# CustomKD methods, chosen on the digits development split (docs/tuning.md), where λ_g = 1 cost them 4–5 points.
LAMBDA_GENERAL_DEFAULTS = {"fitnet": 1.0, "kd+fitnet": 1.0, "customkd": 0.1, "customkd+kd": 0.1, "customkd+dkd": 0.1}



@dataclass(frozen=True)
class DistillConfig(CustomKDOptions, DKDOptions, KDOptions, FeatureTermOptions):
    """A distill run's settings: the run's own below, each method family's from its option group
    (:mod:`trainer.methods.options`, declared beside the methods)."""

    cache: str = option("caches/elpv-efficientnet_lite0.zarr", "Feature store written by `customkd extract`.")
    teachers: str | None = option(
        None, "The store's teacher to distill from (needed when it holds several, see `customkd cache info`), or "
        "A,B to concatenate their features (one probe and one projector over the concatenation).",
        aliases=("--teacher",))
    student: str = option("mobilenetv3", "Student: an alias from `customkd students` or any timm model name.",
                          aliases=("--model",))
    student_pretrained: bool = option(False, "Start from timm's pretrained student weights (hub).")
    student_weights: str | None = option(None, "Start from a local student weights file.")
    method: str = option("customkd", f"{', '.join(METHOD_NAMES)}.")
    setting: str = option("ssl", f"{', '.join(SETTINGS)}.", choices=SETTINGS)
    labels_per_class: int | None = option(
        None, "SSL: simulate a label budget of N labeled samples per class (default: every stored label).")
    label_fraction: float | None = option(
        None, "SSL: simulate a label budget, this fraction of each class's labels (default: every stored label).")
    ssl: str = option("none", "none or fixmatch (unlabeled objective in L_task).", choices=("none", "fixmatch"))
    fixmatch_threshold: float = option(0.95, "FixMatch confidence threshold τ.")
    fixmatch_weight: float = option(1.0, "Weight of FixMatch's unlabeled loss.")
    source: tuple[str, ...] = option((), "UDA: labeled source domain(s), comma-separated.")
    target: tuple[str, ...] = option((), "UDA: unlabeled target domain(s), comma-separated.")
    epochs: int | None = option(
        None, f"Student (KD) epochs, exactly (default: {DEFAULT_EPOCHS}, extended on small data to --min-steps).")
    min_steps: int = option(250, "Without --epochs: add epochs until this many optimizer steps.")
    image_size: int = option(96, "Student input resolution in px.", aliases=("--img-size",))
    batch_size: int = option(64, "Samples per optimizer step (all ranks together).", aliases=("-b",))
    out: str = option("", "Run directory (default runs/<method>-<student>-<time>).")
    seed: int = option(0, "Seed of the label budget, initialisation, batch order and views.")
    workers: int | None = option(
        None, "DataLoader workers replaying views (default: 2; on a CPU none while the view cache holds every view of "
        "the run: reading a cached view in the training process then costs less than a worker's hand-off).",
        aliases=("-j",))
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    replay: str = option(
        "auto", "Where views are replayed: workers (PIL in the DataLoader workers), device (every image decoded once, "
        "views replayed as batched tensor ops on the training device), auto (device on CUDA when the decoded images "
        "fit a quarter of its memory, workers otherwise).", choices=("auto", "workers", "device"))
    memory_format: str = option(
        "auto", "The student's memory layout: channels_last, contiguous (NCHW), or auto (channels_last for CNN "
        "students on CUDA; contiguous on a CPU, where channels_last trains faster but rounds differently from the "
        "results published so far: docs/benchmarks.md).", choices=("auto", "channels_last", "contiguous"))
    view_cache: bool = option(
        True, "With the worker replay: keep each replayed view in memory the workers share (when every view of the "
        "run's rows fits a quarter of the host's memory, shared by the host's ranks) and read it there when it comes back; the same pixels, "
        "less CPU. --no-view-cache replays every time.")
    replay_engine: str = option(
        "fast", "With --replay device: exact (PIL's pixels bit for bit) or fast (float32 resampling, within a grey "
        "level or so of PIL's; docs/benchmarks.md).", choices=("exact", "fast"))
    optimizer: str = option("adamw", f"{' or '.join(OPTIMIZERS)}.", choices=tuple(OPTIMIZERS))
    lr: float | None = option(
        None, f"Learning rate (default {', '.join(f'{k} {v:g}' for k, v in OPTIMIZERS.items())}).")
    weight_decay: float | None = option(
        None, f"Weight decay of the student's optimizer (default "
        f"{', '.join(f'{k} {v:g}' for k, v in WEIGHT_DECAY_DEFAULTS.items())}).")
    decay_norm_bias: bool = option(
        True, "Weight decay on every parameter, norms and biases included; --no-decay-norm-bias exempts 1-D "
        "parameters (norms, biases) and the model's no_weight_decay() list, as timm's create_optimizer_v2 does.")
    warmup_epochs: float = option(
        0.0, "Linear learning-rate warm-up over this many KD epochs (fractions allowed, rounded to optimizer steps) "
        "from --warmup-lr; the cosine decay spans the whole run, as in timm's CosineLRScheduler (0 = none).")
    warmup_lr: float = option(1e-5, "Learning rate of the first warm-up step (with --warmup-epochs).")
    grad_clip: float = option(5.0, "Clip the gradient norm to this (0 = off).", aliases=("--clip-grad",))
    feature_norm: str = option("standardize", f"{', '.join(FEATURE_NORMS)} (teacher features).", choices=FEATURE_NORMS)
    view_sampling: str = option("cycle", f"{' or '.join(VIEW_SAMPLING)}.", choices=VIEW_SAMPLING)
    features: str = option(
        "auto", "auto, ram or stream (read teacher features by shard blocks).",
        choices=("auto", "ram", "stream"))
    allow_stale: bool = option(False, "Train even if the dataset no longer matches the store.")
    expect_fingerprint: str = option("", "Refuse the cache unless its components match, e.g. 'teacher=4f498eb6'.")
    data: str | None = option(None, "Dataset spec if the images moved since extraction.")
    eval_split: str = option(
        "test", f"{' or '.join(EVAL_SPLITS)}: evaluate on the held-out test rows, or on a fixed 20 % of the training "
        f"rows (left out of training) to choose settings without touching the test rows.",
        choices=EVAL_SPLITS)
    val_fraction: float = option(
        0.0, "Validation: this fraction of each class's labeled training rows (at least one), chosen by --seed and "
        "left out of training; every epoch is scored on them instead of the test rows, the best epoch's student is "
        "kept and tested at the end (0 = off).")
    resume: bool = option(False, "Continue the run in --out from its last checkpoint.")
    keep_checkpoint: bool = option(
        False, "Keep the checkpoint (everything --resume needs) after the run finishes; by default it is removed once "
        "the student is saved.")

    def __post_init__(self) -> None:
        self._check_numbers()
        self._check_choices()
        self._check_ranges()
        self._check_setting()
        self.check_kd()
        self.check_dkd()
        self.check_customkd()

    def _check_numbers(self) -> None:
        """Finite numbers, positive rates, non-negative weights, seeds numpy takes, a sane resolution."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if self.lr is not None and self.lr <= 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        for flag, value in (("--weight-decay", self.effective_weight_decay), ("--grad-clip", self.grad_clip),
                            ("--fixmatch-weight", self.fixmatch_weight), ("--warmup-epochs", self.warmup_epochs),
                            ("--warmup-lr", self.warmup_lr)):
            if value < 0:
                raise UserError(f"{flag} must be >= 0, got {value}")
        if not 0 <= self.seed < 2**32:  # np.random.seed (seed_everything) takes 32-bit seeds
            raise UserError(f"--seed must be >= 0 and < 2**32 (4294967296), got {self.seed}")
        if not 0 <= self.fixmatch_threshold <= 1:
            raise UserError(f"--fixmatch-threshold must be in [0, 1], got {self.fixmatch_threshold}")
        if self.image_size > MAX_IMAGE_SIZE:
            raise UserError(f"--image-size {self.image_size} is larger than {MAX_IMAGE_SIZE}; the student trains at its own, "
                            "small resolution (default 96)")

    def _check_choices(self) -> None:
        """Every named option is one of its known values (its ``choices``)."""
        for f in dataclasses.fields(self):
            if f.metadata.get("choices"):
                self._check_choice(f"--{f.name.replace('_', '-')}", getattr(self, f.name), f.metadata["choices"])
        if self.ssl == "fixmatch" and self.setting == "supervised":
            raise UserError("--ssl fixmatch needs unlabeled samples: use --setting ssl or uda")
        if self.ssl == "fixmatch" and self.replay == "device":
            raise UserError("--replay device does not replay FixMatch's RandAugment views; use --replay workers "
                            "(or auto) with --ssl fixmatch")

    def _check_ranges(self) -> None:
        """Counts, fractions and thresholds in their ranges."""
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"unknown --device {self.device!r}; known: auto, cpu, cuda, cuda:N")
        for flag, value in (("--epochs", 1 if self.epochs is None else self.epochs), ("--image-size", self.image_size)):
            if value < 1:
                raise UserError(f"{flag} must be >= 1, got {value}")
        if self.batch_size < 2:  # a training batch of one sample: BatchNorm has no batch statistics to use
            raise UserError(f"--batch-size must be >= 2 (BatchNorm cannot train on batches of one sample), got "
                            f"{self.batch_size}")
        if self.epochs is not None and self.warmup_epochs >= self.epochs:
            raise UserError(f"--warmup-epochs {self.warmup_epochs:g} must be shorter than the run (--epochs "
                            f"{self.epochs}); the cosine decay follows the warm-up")
        if self.min_steps < 0:
            raise UserError(f"--min-steps must be >= 0, got {self.min_steps}")
        if self.workers is not None:
            check_workers(self.workers)

    def _check_setting(self) -> None:
        """The label budget, domains, loss weights and fingerprint pins fit the setting."""
        if self.labels_per_class is not None and self.label_fraction is not None:
            raise UserError("give either --labels-per-class or --label-fraction, not both")
        if self.setting != "ssl" and self.label_budget:
            raise UserError(f"--labels-per-class/--label-fraction simulate a label budget in --setting ssl; "
                            f"--setting {self.setting} uses every stored label: drop the budget or use --setting ssl")
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise UserError(f"--labels-per-class must be >= 1, got {self.labels_per_class}")
        if self.label_fraction is not None and not 0 < self.label_fraction <= 1:
            raise UserError(f"--label-fraction must be in (0, 1], got {self.label_fraction}")
        if not 0 <= self.val_fraction < 1:
            raise UserError(f"--val-fraction must be in [0, 1) (0 = no validation split), got {self.val_fraction}")
        if self.setting == "uda" and (not self.source or not self.target):
            raise UserError("--setting uda needs --source DOMAIN[,DOMAIN] and --target DOMAIN[,DOMAIN]")
        if self.setting != "uda" and (self.source or self.target):
            raise UserError("--source/--target only apply to --setting uda")
        if self.effective_lambda_general < 0:
            raise UserError(f"--lambda-general must be >= 0, got {self.effective_lambda_general}")
        for pin in self.expect_fingerprint.split():
            name, _, value = pin.partition("=")
            if name not in ("dataset", "teacher", "augmentation", "layout", "schema") or not value:
                raise UserError(f"--expect-fingerprint takes COMPONENT=HASH pairs as `cache info` prints them, got {pin!r}")

    @staticmethod
    def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            raise UserError(f"unknown {flag} {value!r}; known: {', '.join(choices)}")

    @property
    def expected_hashes(self) -> dict[str, str]:
        return dict(pin.split("=", 1) for pin in self.expect_fingerprint.split())

    def steps_per_epoch(self, n_train: int) -> int:
        return max(-(-self.samples_per_epoch(n_train) // self.batch_size), 1)

    def samples_per_epoch(self, n_train: int) -> int:
        """Training samples an epoch uses: all, less one when it would be alone in the last batch (BatchNorm cannot
        train on a batch of 1); the shuffle changes every epoch, so no sample is left out for good."""
        return n_train - 1 if n_train > 1 and n_train % self.batch_size == 1 else n_train

    def epochs_for(self, n_train: int) -> int:
        """KD epochs actually run: exactly ``--epochs`` when given; otherwise ``DEFAULT_EPOCHS``, extended on
        small datasets until ``--min-steps`` optimizer steps (8 epochs of 240 samples would be 32 steps)."""
        if self.epochs is not None:
            return self.epochs
        return max(DEFAULT_EPOCHS, -(-self.min_steps // self.steps_per_epoch(n_train)))

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else OPTIMIZERS[self.optimizer]

    @property
    def effective_weight_decay(self) -> float:
        return self.weight_decay if self.weight_decay is not None else WEIGHT_DECAY_DEFAULTS[self.optimizer]

    def warmup_steps(self, n_train: int) -> int:
        """Optimizer steps of the learning-rate warm-up (``--warmup-epochs``, rounded); refused unless shorter than
        the run."""
        steps = round(self.warmup_epochs * self.steps_per_epoch(n_train))
        total = self.epochs_for(n_train) * self.steps_per_epoch(n_train)
        if steps >= total and self.warmup_epochs > 0:
            raise UserError(f"--warmup-epochs {self.warmup_epochs:g} is {steps} optimizer steps, not shorter than the "
                            f"run's {total} ({self.epochs_for(n_train)} epochs of {self.steps_per_epoch(n_train)}); "
                            "give fewer warm-up epochs or more --epochs")
        return steps

    @property
    def effective_lambda_general(self) -> float:
        if self.lambda_general is not None:
            return self.lambda_general
        return LAMBDA_GENERAL_DEFAULTS.get(self.method, 1.0)

    @property
    def label_budget(self) -> bool:
        """Whether a label budget is asked for (SSL only); without one every stored label is used."""
        return self.labels_per_class is not None or self.label_fraction is not None

    @classmethod
    def from_file(cls, path: str, **overrides) -> DistillConfig:
        """The config of a YAML or TOML file of settings, or of a run's config.json (replayed: what the run
        measured, where it wrote and ``resume`` are left out); ``overrides`` win over the file."""
        from customkd.common.config_file import settings_from_file

        values = settings_from_file(path, {f.name: hint for f, hint in field_hints(cls)}, as_given)
        return cls(**{**values, **overrides})

    @classmethod
    def from_run(cls, run_dir: str, **overrides) -> DistillConfig:
        """The config a finished or interrupted run recorded, to train it again (``out`` and ``resume`` left out)."""
        from pathlib import Path

        return cls.from_file(str(Path(run_dir) / CONFIG), **overrides)

    def to_dict(self) -> dict:
        """Every setting including defaults (the run's own first, then each method family's), plus the values
        actually used."""
        fields = dataclasses.asdict(self)
        grouped = {f.name for group in OPTION_GROUPS for f in dataclasses.fields(group)}
        values = {**{k: v for k, v in fields.items() if k not in grouped},
                  **{k: v for k, v in fields.items() if k in grouped}}
        values.update(source=list(self.source), target=list(self.target), effective_lr=self.effective_lr,
                      effective_weight_decay=self.effective_weight_decay,
                      effective_lambda_general=self.effective_lambda_general)
        return values



@dataclass(frozen=True)
class UseConfig:
    """How ``evaluate``, ``predict`` and ``export`` run a saved student: checked like :class:`DistillConfig`'s
    counts before the run is read."""

    device: str = "auto"
    batch_size: int = 64
    workers: int = 2

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"unknown --device {self.device!r}; known: auto, cpu, cuda, cuda:N")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_workers(self.workers)
