"""What the report and ``customkd compare`` run: a *variant* (a method plus the distill flags that make it an
ablation), a *regime* (a teacher store, a student, a setting), and a *job* (one ``customkd distill`` command line
with its run folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from customkd.common.errors import UserError
from customkd.report.config import default_cache


@dataclass(frozen=True)
class Variant:
    """One row of a table: a method plus the distill flags that make it an ablation."""

    name: str
    slug: str
    method: str
    flags: tuple[str, ...] = ()



@dataclass(frozen=True)
class Store:
    """A regime's own teacher store: dataset, teacher and extract flags (``None`` in a regime = the
    report's ``--data`` / ``--teacher`` store)."""

    data: str
    teacher: str
    flags: tuple[str, ...] = ()
    added: tuple[str, ...] = ()  # teachers added over the same views with ``extract --into`` (same --teacher-size)

    @property
    def teachers(self) -> tuple[str, ...]:
        return (self.teacher, *self.added)

    @property
    def size_flags(self) -> tuple[str, ...]:
        return tuple(self.flags[self.flags.index("--teacher-size"):][:2]) if "--teacher-size" in self.flags else ()

    @property
    def path(self) -> str:
        size = self.size_flags[1] if self.size_flags else ""
        name = default_cache(self.data, "+".join(self.teachers)).removesuffix(".zarr")
        return name + (f"-{size}px" if size else "") + ".zarr"


# digits, efficientnet_lite2 at 128 px (its ImageNet probe on digits is within a point of 260 px), 8 views

@dataclass(frozen=True)
class Regime:
    """One table: a teacher store (``store``; ``None`` = the report's ``--data`` with ``base`` = ``--teacher`` or
    ``large`` = ``--large-teacher``), a student (``student_flags``; empty = ``--student`` or distill's default),
    a setting, the regime's own distill flags (label budget, resolution, schedule; the report's ``--epochs``,
    ``--min-steps`` and ``--image-size`` override them) and its variants. ``compare_to`` names a regime whose
    runs of the same variants and seeds this one is read against (and are planned too)."""

    slug: str
    title: str
    variants: tuple[str, ...]
    teacher: str = "base"
    store: Store | None = None
    student_flags: tuple[str, ...] = ()
    distill_flags: tuple[str, ...] = ()
    setting: str = "ssl"
    compare_to: str | None = None
    pick: str | None = None  # distill --teacher: the teacher (or A,B,… ensemble) of a store holding several


def source(cache: str, teacher: str | None = None) -> str:
    """What a run distils from: a store, or one teacher choice of a store that holds several."""
    return cache if teacher is None else f"{cache}#{teacher}"


@dataclass(frozen=True)
class Job:
    """One ``customkd distill`` command line and the run folder it writes; ``key`` names its table row."""

    regime: Regime
    variant: Variant
    seed: int
    run_dir: Path
    argv: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.regime.slug}/{self.variant.slug}"

    @property
    def source(self) -> str:
        """:func:`source` of the argv's ``--cache`` and ``--teacher``."""
        def value(flag: str) -> str | None:
            return self.argv[self.argv.index(flag) + 1] if flag in self.argv else None
        return source(value("--cache"), value("--teacher"))


def names(text: str, table: dict, what: str) -> list:
    unknown = [s for s in text.split(",") if s and s not in table]
    if unknown:
        raise UserError(f"unknown {what} {unknown[0]!r}; choose from {', '.join(table)}")
    return [table[s] for s in text.split(",") if s]



def distill_argv(cache: str, variant: Variant, seed: int, run_dir: Path, setup: tuple[str, ...] = (),
                 common: tuple[str, ...] = ()) -> tuple[str, ...]:
    """``distill`` with the store, the method, the setup (setting, label budget, a regime's own flags), the seed,
    the variant's flags, the flags common to every run, one loader worker (runs share the cores) and the run folder.
    The order is part of the command: finished runs are recognised by an equal argv."""
    return ("distill", "--cache", cache, "--method", variant.method, *setup, "--seed", str(seed), *variant.flags,
            *common, "--workers", "1", "--out", str(run_dir))
