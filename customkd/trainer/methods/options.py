"""Every method's own settings, declared once beside the methods that read them: a frozen option group per
method family, each field with its default, help, known values and ``--help`` panel (:func:`common.options.option`),
each group with the range checks of its fields. The run's config is composed of these groups, so a field added
here is a flag, a config-file key and a config.json entry with no other edit.

Light on purpose (no torch): the command line's ``--help`` and ``import customkd`` read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from customkd.common.errors import UserError
from customkd.common.options import option

# the help panels of the methods' own options (``distill --help``)
FEATURE_TERM, CUSTOMKD = "Feature terms (fitnet, kd+fitnet, customkd…)", "CustomKD (customkd, customkd+kd, customkd+dkd)"
LOGIT_TERMS, DKD = "Logit terms (kd, dkd and their combinations)", "DKD (dkd, customkd+dkd)"
CUSTOMIZERS = ("linear", "mlp")
CUSTOMIZE_HEADS = ("student", "random", "random-trained")
CUSTOMIZER_ACTIVATIONS = ("student", "none")
CUSTOMIZE_TARGETS = ("labels+pseudo", "labels", "soft")
SPECIFIC_SPACES = ("full", "head")
SPECIFIC_LOSSES = ("mse", "cosine")
CUSTOMIZER_INITS = ("default", "zero")
CUSTOMIZER_OPTIMIZERS = ("adamw", "sgd")


def at_least(flag: str, value: float, low: float, *, strict: bool = False) -> None:
    """Refuse ``value`` below ``low`` (or at it, when ``strict``), naming the flag."""
    if value < low or (strict and value == low):
        raise UserError(f"{flag} must be {'>' if strict else '>='} {low:g}, got {value}")


def within(flag: str, value: float, low: float, high: float, *, open_high: bool = False) -> None:
    """Refuse ``value`` outside [low, high] (or [low, high) when ``open_high``), naming the flag."""
    if not (low <= value < high if open_high else low <= value <= high):
        raise UserError(f"{flag} must be in [{low:g}, {high:g}{')' if open_high else ']'}, got {value}")


@dataclass(frozen=True)
class FeatureTermOptions:
    """The task-general feature term λ_g · MSE(P_s(f_s), f_t) (fitnet.py, customkd.py)."""

    lambda_general: float | None = option(
        None, "λ_g, weight of MSE(P_s(f_s), f_t) (default: 1 for fitnet and kd+fitnet, 0.1 for the customkd methods).",
        group=FEATURE_TERM)


@dataclass(frozen=True)
class KDOptions:
    """Hinton's soft-target term (kd.py); T is shared with the DKD term."""

    kd_temperature: float = option(4.0, "Temperature T of the soft targets (kd, dkd).", group=LOGIT_TERMS)
    kd_weight: float = option(
        1.0, "w, weight of the KD term (kd, kd+fitnet, customkd+kd; dkd weighs its parts by α and β).",
        group=LOGIT_TERMS)

    def check_kd(self) -> None:
        at_least("--kd-temperature", self.kd_temperature, 0, strict=True)
        at_least("--kd-weight", self.kd_weight, 0)


@dataclass(frozen=True)
class DKDOptions:
    """The decoupled KD term (dkd.py)."""

    dkd_alpha: float = option(1.0, "DKD: weight α of the target-class term.", group=DKD)
    dkd_beta: float = option(8.0, "DKD: weight β of the non-target-class term.", group=DKD)
    dkd_warmup: int = option(2, "DKD: epochs over which its weight ramps up.", group=DKD)

    def check_dkd(self) -> None:
        at_least("--dkd-alpha", self.dkd_alpha, 0)
        at_least("--dkd-beta", self.dkd_beta, 0)


@dataclass(frozen=True)
class CustomKDOptions:
    """CustomKD's customization and task-specific term (customkd.py)."""

    lambda_specific: float = option(1.0, "λ_s, weight of MSE(f_s, θ^h_t(f_t)).", group=CUSTOMKD)
    customizer: str = option("linear", f"{' or '.join(CUSTOMIZERS)}.", choices=CUSTOMIZERS, group=CUSTOMKD)
    customizer_lr: float = option(1e-3, "Learning rate of θ^h_t during customization.", group=CUSTOMKD)
    customizer_activation: str = option(
        "student", "student (θ^h_t's output through the student's output activation: reachable targets) or none.",
        choices=CUSTOMIZER_ACTIVATIONS, group=CUSTOMKD)
    customizer_weight_decay: float = option(
        0.05, "Weight decay on θ^h_t (nearly inert at lr 1e-3: under 1 % over a run).", group=CUSTOMKD)
    customizer_reset: bool = option(False, "Re-initialise θ^h_t and its optimiser before every round.", group=CUSTOMKD)
    customizer_init: str = option(
        "default", f"{' or '.join(CUSTOMIZER_INITS)}: θ^h_t's initial output layer (zero: directions L_cus never "
        "sets stay 0).", choices=CUSTOMIZER_INITS, group=CUSTOMKD)
    customizer_optimizer: str = option(
        "adamw", f"{' or '.join(CUSTOMIZER_OPTIMIZERS)} for θ^h_t (sgd: momentum 0.9, --customizer-lr).",
        choices=CUSTOMIZER_OPTIMIZERS, group=CUSTOMKD)
    customize_epochs: int = option(1, "Customization epochs per round.", group=CUSTOMKD)
    specific_space: str = option(
        "head", f"{' or '.join(SPECIFIC_SPACES)}: compare f_s with θ^h_t(f_t) in all dims, or only in the head's "
        "row space.", choices=SPECIFIC_SPACES, group=CUSTOMKD)
    specific_loss: str = option(
        "mse", f"{' or '.join(SPECIFIC_LOSSES)}: the task-specific term's distance.", choices=SPECIFIC_LOSSES,
        group=CUSTOMKD)
    customize_smoothing: float = option(0.1, "Label smoothing of the customization loss.", group=CUSTOMKD)
    customize_warmup: int = option(1, "KD epochs before the first customization round.", group=CUSTOMKD)
    customize_head: str = option(
        "student", "student, random (fixed random head, ablation) or random-trained (random head trained with "
        "θ^h_t, ablation).", choices=CUSTOMIZE_HEADS, group=CUSTOMKD)
    customize_target: str = option(
        "labels+pseudo", f"{', '.join(CUSTOMIZE_TARGETS)}.", choices=CUSTOMIZE_TARGETS, group=CUSTOMKD)
    pseudo_threshold: float = option(0.8, "Teacher-probe confidence needed to use a pseudo-label.", group=CUSTOMKD)
    alternate_every: int = option(1, "One customization round every K KD epochs.", group=CUSTOMKD)

    def check_customkd(self) -> None:
        at_least("--lambda-specific", self.lambda_specific, 0)
        at_least("--customizer-lr", self.customizer_lr, 0, strict=True)
        at_least("--customizer-weight-decay", self.customizer_weight_decay, 0)
        at_least("--customize-epochs", self.customize_epochs, 1)
        at_least("--alternate-every", self.alternate_every, 1)
        at_least("--customize-warmup", self.customize_warmup, 0)
        within("--customize-smoothing", self.customize_smoothing, 0, 1, open_high=True)
        within("--pseudo-threshold", self.pseudo_threshold, 0, 1)


OPTION_GROUPS = (FeatureTermOptions, KDOptions, DKDOptions, CustomKDOptions)  # what the run's config is made of
