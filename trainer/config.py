"""The distill process's configuration: one frozen dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from common.errors import UserError

SETTINGS = ("supervised", "ssl", "uda")
METHOD_NAMES = ("student", "fitnet", "kd", "kd+fitnet", "dkd", "customkd", "customkd+kd", "customkd+dkd")  # = trainer.methods.METHODS
OPTIMIZERS = {"adamw": 2e-3, "sgd": 0.05}  # name → default learning rate
CUSTOMIZERS = ("linear", "mlp")
CUSTOMIZE_HEADS = ("student", "random", "random-trained")
CUSTOMIZER_ACTIVATIONS = ("student", "none")
CUSTOMIZE_TARGETS = ("labels+pseudo", "labels", "soft")
FEATURE_NORMS = ("none", "l2", "standardize")
SPECIFIC_SPACES = ("full", "head")
SPECIFIC_LOSSES = ("mse", "cosine")
CUSTOMIZER_INITS = ("default", "zero")
CUSTOMIZER_OPTIMIZERS = ("adamw", "sgd")
VIEW_SAMPLING = ("cycle", "random")
EVAL_SPLITS = ("test", "dev")  # dev: a fixed part of the training rows, for choosing settings without the test rows
DEFAULT_LABEL_FRACTION = 0.1
DEFAULT_EPOCHS = 8
MAX_IMAGE_SIZE = 2048  # px; a student's input side, for training and for a run's recorded preprocessing
# λ_g when --lambda-general is not given: FitNet's usual weight for the feature-imitation methods; 0.1 for the
# CustomKD methods, chosen on the digits development split (docs/tuning.md), where λ_g = 1 cost them 4–5 points.
LAMBDA_GENERAL_DEFAULTS = {"fitnet": 1.0, "kd+fitnet": 1.0, "customkd": 0.1, "customkd+kd": 0.1, "customkd+dkd": 0.1}


@dataclass(frozen=True)
class DistillConfig:
    cache: str = "caches/elpv-efficientnet_lite0.zarr"
    student: str = "mobilenetv3"
    student_pretrained: bool = False
    student_weights: str | None = None
    method: str = "customkd"
    setting: str = "ssl"
    labels_per_class: int | None = None
    label_fraction: float | None = None
    ssl: str = "none"  # "fixmatch" adds FixMatch's unlabeled objective to L_task
    fixmatch_threshold: float = 0.95
    fixmatch_weight: float = 1.0
    source: tuple[str, ...] = ()
    target: tuple[str, ...] = ()
    epochs: int | None = None  # None: DEFAULT_EPOCHS, extended to min_steps optimizer steps; a number is exact
    min_steps: int = 250  # without --epochs: more epochs on small datasets until this many optimizer steps
    image_size: int = 96
    batch_size: int = 64
    out: str = ""
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 0.05
    grad_clip: float = 5.0
    lambda_general: float | None = None  # None: the method's own default (LAMBDA_GENERAL_DEFAULTS)
    lambda_specific: float = 1.0
    customizer: str = "linear"
    customizer_lr: float = 1e-3
    customizer_activation: str = "student"  # a(·) on θ^h_t's output: the student's own output activation
    customizer_weight_decay: float = 0.05  # AdamW decay on θ^h_t (nearly inert at lr 1e-3: < 1 % over a run)
    customizer_reset: bool = False  # re-initialise θ^h_t and its optimiser before every customization
    customizer_init: str = "default"  # "zero": θ^h_t's output layer starts at 0 (no random directions in the target)
    customizer_optimizer: str = "adamw"  # "sgd": θ^h_t's updates stay in the span of L_cus's gradients
    customize_epochs: int = 1  # customization epochs per round
    specific_space: str = "head"  # the task-specific term in the head's row space ("full": every dimension)
    specific_loss: str = "mse"  # "cosine": a scale-free task-specific term
    customize_smoothing: float = 0.1  # label smoothing on L_cus: CE with a finite optimum
    customize_warmup: int = 1  # KD epochs before the first customization (the head must mean something)
    customize_head: str = "student"
    customize_target: str = "labels+pseudo"
    pseudo_threshold: float = 0.8
    alternate_every: int = 1
    kd_temperature: float = 4.0
    kd_weight: float = 1.0
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dkd_warmup: int = 2
    feature_norm: str = "standardize"
    view_sampling: str = "cycle"
    features: str = "auto"  # auto: RAM when they fit in half the free memory, else stream shard blocks
    allow_stale: bool = False
    expect_fingerprint: str = ""  # "teacher=4f498eb6 augmentation=761081aa" (as printed by `cache info`)
    data: str | None = None
    eval_split: str = "test"
    resume: bool = False

    def __post_init__(self) -> None:
        self._check_numbers()
        self._check_choices()
        self._check_ranges()
        self._check_setting()

    def _check_numbers(self) -> None:
        """Finite numbers, positive rates, non-negative weights, seeds numpy takes, a sane resolution."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        for flag, value in (("--lr", self.lr), ("--customizer-lr", self.customizer_lr)):
            if value is not None and value <= 0:
                raise UserError(f"{flag} must be > 0, got {value}")
        for flag, value in (("--weight-decay", self.weight_decay), ("--grad-clip", self.grad_clip),
                            ("--customizer-weight-decay", self.customizer_weight_decay)):
            if value < 0:
                raise UserError(f"{flag} must be >= 0, got {value}")
        if not 0 <= self.seed < 2**32:  # np.random.seed (seed_everything) takes 32-bit seeds
            raise UserError(f"--seed must be >= 0 and < 2**32 (4294967296), got {self.seed}")
        for flag, value in (("--fixmatch-weight", self.fixmatch_weight), ("--dkd-alpha", self.dkd_alpha),
                            ("--dkd-beta", self.dkd_beta)):
            if value < 0:
                raise UserError(f"{flag} must be >= 0, got {value}")
        if not 0 <= self.fixmatch_threshold <= 1:
            raise UserError(f"--fixmatch-threshold must be in [0, 1], got {self.fixmatch_threshold}")
        if self.image_size > MAX_IMAGE_SIZE:
            raise UserError(f"--image-size {self.image_size} is larger than {MAX_IMAGE_SIZE}; the student trains at its own, "
                            "small resolution (default 96)")

    def _check_choices(self) -> None:
        """Every named option is one of its known values."""
        self._check_choice("--setting", self.setting, SETTINGS)
        self._check_choice("--ssl", self.ssl, ("none", "fixmatch"))
        if self.ssl == "fixmatch" and self.setting == "supervised":
            raise UserError("--ssl fixmatch needs unlabeled samples: use --setting ssl or uda")
        self._check_choice("--optimizer", self.optimizer, tuple(OPTIMIZERS))
        self._check_choice("--customizer", self.customizer, CUSTOMIZERS)
        self._check_choice("--customize-head", self.customize_head, CUSTOMIZE_HEADS)
        self._check_choice("--customizer-activation", self.customizer_activation, CUSTOMIZER_ACTIVATIONS)
        self._check_choice("--customize-target", self.customize_target, CUSTOMIZE_TARGETS)
        self._check_choice("--feature-norm", self.feature_norm, FEATURE_NORMS)
        self._check_choice("--specific-space", self.specific_space, SPECIFIC_SPACES)
        self._check_choice("--specific-loss", self.specific_loss, SPECIFIC_LOSSES)
        self._check_choice("--customizer-init", self.customizer_init, CUSTOMIZER_INITS)
        self._check_choice("--customizer-optimizer", self.customizer_optimizer, CUSTOMIZER_OPTIMIZERS)
        self._check_choice("--view-sampling", self.view_sampling, VIEW_SAMPLING)
        self._check_choice("--features", self.features, ("auto", "ram", "stream"))
        self._check_choice("--eval-split", self.eval_split, EVAL_SPLITS)

    def _check_ranges(self) -> None:
        """Counts, fractions and thresholds in their ranges."""
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"unknown --device {self.device!r}; known: auto, cpu, cuda, cuda:N")
        for flag, value in (("--epochs", 1 if self.epochs is None else self.epochs), ("--image-size", self.image_size),
                            ("--batch-size", self.batch_size), ("--alternate-every", self.alternate_every),
                            ("--customize-epochs", self.customize_epochs)):
            if value < 1:
                raise UserError(f"{flag} must be >= 1, got {value}")
        for flag, value in (("--min-steps", self.min_steps), ("--customize-warmup", self.customize_warmup)):
            if value < 0:
                raise UserError(f"{flag} must be >= 0, got {value}")
        if not 0 <= self.customize_smoothing < 1:
            raise UserError(f"--customize-smoothing must be in [0, 1), got {self.customize_smoothing}")
        if self.workers < 0:
            raise UserError(f"--workers must be >= 0, got {self.workers}")

    def _check_setting(self) -> None:
        """The label budget, domains, loss weights and fingerprint pins fit the setting."""
        if self.labels_per_class is not None and self.label_fraction is not None:
            raise UserError("give either --labels-per-class or --label-fraction, not both")
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise UserError(f"--labels-per-class must be >= 1, got {self.labels_per_class}")
        if self.label_fraction is not None and not 0 < self.label_fraction <= 1:
            raise UserError(f"--label-fraction must be in (0, 1], got {self.label_fraction}")
        if self.setting == "uda" and (not self.source or not self.target):
            raise UserError("--setting uda needs --source DOMAIN[,DOMAIN] and --target DOMAIN[,DOMAIN]")
        if self.setting != "uda" and (self.source or self.target):
            raise UserError("--source/--target only apply to --setting uda")
        if not 0 <= self.pseudo_threshold <= 1:
            raise UserError(f"--pseudo-threshold must be in [0, 1], got {self.pseudo_threshold}")
        if min(self.effective_lambda_general, self.lambda_specific, self.kd_weight) < 0:
            raise UserError("loss weights (--lambda-general, --lambda-specific, --kd-weight) must be >= 0")
        if self.kd_temperature <= 0:
            raise UserError(f"--kd-temperature must be > 0, got {self.kd_temperature}")
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
    def effective_lambda_general(self) -> float:
        if self.lambda_general is not None:
            return self.lambda_general
        return LAMBDA_GENERAL_DEFAULTS.get(self.method, 1.0)

    @property
    def effective_label_fraction(self) -> float | None:
        if self.setting == "ssl" and self.labels_per_class is None and self.label_fraction is None:
            return DEFAULT_LABEL_FRACTION
        return self.label_fraction

    def to_dict(self) -> dict:
        """Every setting including defaults, plus the values actually used."""
        values = dataclasses.asdict(self)
        values.update(source=list(self.source), target=list(self.target), effective_lr=self.effective_lr,
                      effective_lambda_general=self.effective_lambda_general,
                      effective_label_fraction=self.effective_label_fraction)
        return values
