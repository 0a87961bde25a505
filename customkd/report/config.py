"""What ``customkd report`` runs: one frozen dataclass, light to import (the CLI's ``--help`` reads it)."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path

from customkd.common.errors import UserError
from customkd.common.options import option
from customkd.featcache.config import ExtractConfig
from customkd.trainer.config import EVAL_SPLITS, DistillConfig

_EXTRACT = ExtractConfig()  # the report's defaults are extract's and distill's own
DEFAULT_REGIMES = "headroom,pretrained,main,teachers-lite0,teachers-lite2,teachers-ensemble"
DEFAULT_SEEDS = "0,1,2,3,4"
LABEL_FRACTION = 0.1  # the label budget of the regimes that name none (SSL with scarce labels)


README_START, README_END = "<!-- report:start -->", "<!-- report:end -->"


def is_this_project(folder: Path) -> bool:
    """The customkd repository (its pyproject names the project and its README has the report block): the only
    place where the report writes docs/ and README.md without being told to."""
    try:
        pyproject = (folder / "pyproject.toml").read_text(errors="replace")
        readme = (folder / "README.md").read_text(errors="replace")
    except OSError:
        return False
    return 'name = "customkd"' in pyproject and README_START in readme and README_END in readme


def default_cache(data: str, teacher: str) -> str:
    """``caches/<data>-<teacher>.zarr``, the Makefile's CACHE rule: the last part of the data spec
    (``folder:/x/oh/`` → ``oh``) and the teacher, with ``:`` and ``/`` as ``-``."""
    name = Path(data.rstrip("/")).name.replace(":", "-")
    return f"caches/{name}-{teacher.replace(':', '-').replace('/', '-')}.zarr"


@dataclass(frozen=True)
class ReportConfig:
    """Every option of ``customkd report``; ``None`` means "the default of the command the report runs"."""

    data: str = option(
        _EXTRACT.data, "Dataset spec, as extract --data.")
    teacher: str = option(
        _EXTRACT.teacher, "The teacher of every regime but large-teacher.")
    large_teacher: str = option(
        "efficientnet_lite2", "The large-teacher regime's teacher.")
    cache: str | None = option(
        None, "--teacher's store (default caches/<data>-<teacher>.zarr).")
    large_cache: str | None = option(
        None, "--large-teacher's store (default likewise).")
    views: int = option(
        _EXTRACT.views, "Views per image of each extraction.")
    teacher_weights: str | None = option(
        None, "Passed to extract --weights ('random' in tests).")
    student: str | None = option(
        None, "Student of the regimes that do not name one (default: distill's).")
    out: Path = option(
        Path("runs/report"), "The report's run folder.")
    regimes: str = option(
        DEFAULT_REGIMES, "Comma-separated regimes: headroom, pretrained, main, large-teacher, supervised.")
    variants: str = option(
        "", "Keep only these variants in every regime (default: all).")
    seeds: str = option(
        DEFAULT_SEEDS, "Comma-separated seeds (each seed also draws its label subset).")
    regime_seeds: str = option(  # a report built over sittings
        "", "Per-regime seeds overriding --seeds, e.g. 'pretrained=0,1,2' (separate regimes with ';').")
    epochs: int | None = option(
        None, "distill --epochs for every run (default: distill's).")
    min_steps: int | None = option(
        None, "distill --min-steps for every run (0 makes --epochs exact on small data).")
    image_size: int | None = option(
        None, "Student resolution (default: distill's).")
    label_fraction: float = option(
        LABEL_FRACTION, "SSL label budget.")
    parallel: int = option(
        2, "Runs at once; the cores are split between them.")
    eval_split: str = option(
        "test", "test, or dev: every run scored on a fixed 20 % of the training rows (for choosing settings; the test "
        "rows stay untouched).")
    extra: str = option(
        "", "More distill flags for every run, e.g. --extra='--lr 1e-3'.")
    docs: Path | None = option(
        None, "Where results.md and results/ are written (default: docs/ in the customkd repository, else --out).")
    readme: Path | None = option(
        None, "README whose headline block is rewritten (default: README.md in the customkd repository, else none).")
    no_docs: bool = option(
        False, "Write nothing outside --out.", negatable=False)
    quick: bool = option(
        False, "Smoke run: main regime, 1 seed, 1 epoch, 2 variants, no docs.", negatable=False)

    def __post_init__(self) -> None:
        if self.eval_split not in EVAL_SPLITS:
            raise UserError(f"unknown --eval-split {self.eval_split!r}; known: {', '.join(EVAL_SPLITS)}")
        if self.parallel < 1:
            raise UserError(f"--parallel must be at least 1, got {self.parallel}")
        if self.no_docs and ((self.docs is not None and Path(self.docs) != Path(self.out)) or self.readme is not None):
            raise UserError("--no-docs writes the page under --out and nothing elsewhere; leave out --docs and "
                            "--readme, or --no-docs")
        try:
            [int(s) for s in self.seeds.split(",")]
            for part in (p for p in self.regime_seeds.split(";") if p):
                regime, sep, seeds = part.partition("=")
                if not sep or not regime:
                    raise ValueError(part)
                [int(s) for s in seeds.split(",")]
        except ValueError:
            raise UserError(f"--seeds must be comma-separated integers and --regime-seeds REGIME=SEEDS[;REGIME=SEEDS], "
                            f"got {self.seeds!r} and {self.regime_seeds!r}") from None

    def seeds_of(self, regime: str) -> list[int]:
        """The seeds a regime runs: its ``--regime-seeds`` entry, else ``--seeds``."""
        overrides = dict(part.split("=", 1) for part in self.regime_seeds.split(";") if part)
        return [int(s) for s in overrides.get(regime, self.seeds).split(",")]

    def resolved(self) -> ReportConfig:
        """``--quick`` applied, the stores' default paths filled in, and where the page goes: ``--docs``, else
        docs/ in the customkd repository, else ``--out``; always ``--out`` with ``--no-docs``."""
        cfg = self
        if cfg.quick:
            cfg = dataclasses.replace(cfg, regimes="main", seeds="0", epochs=1, no_docs=True, docs=None, readme=None,
                                      variants="student,customkd", min_steps=0)
        here = is_this_project(Path.cwd())
        docs = Path(cfg.docs) if cfg.docs is not None else Path("docs") if here else Path(cfg.out)
        readme = Path(cfg.readme) if cfg.readme is not None else Path("README.md") if here else None
        if cfg.no_docs:  # the same page, under --out only
            docs, readme = Path(cfg.out), None
        return dataclasses.replace(cfg, out=Path(cfg.out), docs=docs, readme=readme,
                                   cache=cfg.cache or default_cache(cfg.data, cfg.teacher),
                                   large_cache=cfg.large_cache or default_cache(cfg.data, cfg.large_teacher))


def _split(value: str | tuple | list) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else tuple(value)


COMPARE_OWNS = {"--cache", "--teacher", "--method", "--seed", "--out", "--resume", "--config"}  # set per run


@dataclass(frozen=True)
class CompareConfig:
    """Every option of ``customkd compare``: methods × seeds on one store, each run with the same budget.
    ``None`` means distill's own default; ``methods`` and ``seeds`` take a tuple or a comma-separated string."""

    cache: str | None = option(
        None, "The store to compare methods on (made by customkd extract).")
    teacher: str | None = option(
        None, "The store's teacher to distil from, or A,B,… for their ensemble (required when it holds several).")
    methods: tuple[str, ...] = option(
        ("kd", "customkd"), "Comma-separated methods: student, fitnet, kd, kd+fitnet, dkd, customkd, customkd+kd, customkd+dkd, or an ablation of the report (customkd-random-head, customkd-random-trained, customkd-no-specific).")
    seeds: tuple[int, ...] = option(
        (0, 1, 2), "Comma-separated seeds; each seed also draws the labeled subset, the same for every method.")
    out: Path | None = option(
        None, "The folder to write runs, results.md and results/ into (nothing is written elsewhere).")
    baseline: str | None = option(
        None, "Compare every other method with this one (default: each customkd-family method with each other method).")
    student: str | None = option(
        None, "distill --student for every run (default: distill's).")
    epochs: int | None = option(
        None, "distill --epochs for every run.")
    min_steps: int | None = option(
        None, "distill --min-steps for every run (0 makes --epochs exact on small data).")
    image_size: int | None = option(
        None, "distill --image-size for every run.")
    setting: str | None = option(
        None, "distill --setting for every run: supervised, ssl or uda.")
    labels_per_class: int | None = option(
        None, "distill --labels-per-class for every run (a label budget).")
    label_fraction: float | None = option(
        None, "distill --label-fraction for every run (a label budget).")
    eval_split: str = option(
        "test", "test, or dev: score on a fixed 20 % of the training rows.")
    extra: str = option(
        "", "More distill flags for every run, e.g. --extra='--lr 1e-3'.")
    parallel: int = option(
        1, "Runs at once; the cores are split between them.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", _split(self.methods))
        try:
            object.__setattr__(self, "seeds", tuple(int(s) for s in _split(self.seeds)))
        except ValueError:
            raise UserError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {self.seeds!r}") from None
        if self.cache is None:
            raise UserError("--cache STORE is required: the store to compare methods on (made by customkd extract)")
        if self.out is None:
            raise UserError("--out DIR is required: the folder compare writes its runs and page into")
        object.__setattr__(self, "out", Path(self.out))
        if len(set(self.methods)) != len(self.methods) or len(self.methods) < 2:
            raise UserError(f"--methods needs at least two different methods, e.g. kd,customkd; got "
                            f"{','.join(self.methods)!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"--seeds needs distinct seeds, e.g. 0,1,2; got {self.seeds!r}")
        if self.baseline is not None and self.baseline not in self.methods:
            raise UserError(f"--baseline {self.baseline} is not one of --methods {','.join(self.methods)}; add it there")
        if self.eval_split not in EVAL_SPLITS:
            raise UserError(f"unknown --eval-split {self.eval_split!r}; known: {', '.join(EVAL_SPLITS)}")
        if self.parallel < 1:
            raise UserError(f"--parallel must be at least 1, got {self.parallel}")
        self._check_extra()
        self._check_run_options()

    def _check_run_options(self) -> None:
        """Each distill option compare passes (a seed, --epochs, --image-size, …) in the range distill takes, checked
        one at a time by :class:`~trainer.config.DistillConfig` before anything is written: every run would otherwise
        be refused in turn, after ``--out`` was made. How options combine (with ``--extra``) is left to the runs."""
        given = {name: getattr(self, name) for name in ("epochs", "min_steps", "image_size", "labels_per_class",
                                                         "label_fraction") if getattr(self, name) is not None}
        for name, value in [*given.items(), *(("seed", seed) for seed in self.seeds)]:
            DistillConfig(cache=self.cache, **{name: value})

    def _check_extra(self) -> None:
        """--extra may add any distill flag but those compare sets per run (a later flag would win over them)."""
        try:
            flags = {word.split("=", 1)[0] for word in shlex.split(self.extra)}
        except ValueError as exc:
            raise UserError(f"--extra {self.extra!r} cannot be split like a shell line ({exc})") from None
        owned = sorted(flags & COMPARE_OWNS)
        if owned:
            raise UserError(f"--extra cannot set {owned[0]}: compare sets it for each run (use --cache, --teacher, "
                            "--methods, --seeds and --out)")
