"""The store fingerprint: what a store was made from, as separate components each hashed on its own.

Part of the written contract (:mod:`contract.schema` holds the rest): a change of any component makes another
store, and readers name the component that differs. A store's own components are ``dataset``, ``augmentation``,
``layout`` and ``schema``; each of its teachers has a ``teacher`` component (version 3), and a reader's choice of
teachers gives the fifth (:func:`ensemble_component` for several).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


class ManifestError(ValueError):
    """One thing wrong with a manifest; the store names the store and says what to do."""


def _need(condition: bool, what: str) -> None:
    if not condition:
        raise ManifestError(what)


FINGERPRINT_COMPONENTS = ("dataset", "teacher", "augmentation", "layout", "schema")
STORE_COMPONENTS = ("dataset", "augmentation", "layout", "schema")  # a version-3 store's own; each teacher has one more


def component_hash(component: Mapping) -> str:
    """Short stable hash of one fingerprint component (canonical JSON)."""
    blob = json.dumps(component, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def with_hash(part: Mapping) -> dict:
    """A component in its stored form: its body and the ``hash`` of that body."""
    return {**part, "hash": component_hash(part)}


def fingerprint_diff(stored: Mapping, wanted: Mapping,
                     components: tuple[str, ...] = FINGERPRINT_COMPONENTS) -> list[str]:
    """Names of the components whose hashes differ (stored forms)."""
    return [c for c in components if stored.get(c, {}).get("hash") != wanted.get(c, {}).get("hash")]


def _checked_component(name: str, part: Any) -> Mapping:
    """A stored component, present and matching its hash (else :class:`ManifestError`)."""
    _need(isinstance(part, Mapping) and isinstance(part.get("hash"), str),
          f"fingerprint component '{name}' is missing or has no hash")
    body = {k: x for k, x in part.items() if k != "hash"}
    _need(component_hash(body) == part["hash"], f"fingerprint component '{name}' does not match its "
          "hash (it was edited after extraction)")
    return part


@dataclass(frozen=True)
class Component:
    """One fingerprint component: ``body`` is what is hashed, exactly as stored; the typed fields of a
    subclass are read from it (``None`` where a key is absent)."""

    body: Mapping[str, Any] = field(repr=False)
    hash: str

    @classmethod
    def from_dict(cls, part: Mapping) -> Component:
        body = copy.deepcopy({k: v for k, v in part.items() if k != "hash"})
        typed = {f.name: _frozen(body.get(f.name)) for f in fields(cls) if f.name not in ("body", "hash")}
        return cls(body=body, hash=part["hash"], **typed)

    def to_dict(self) -> dict:
        return {**copy.deepcopy(dict(self.body)), "hash": self.hash}


def _frozen(value: Any) -> Any:
    """A stored value as a field: lists become tuples, objects are copied (the manifest never shares them)."""
    return tuple(value) if isinstance(value, list) else copy.deepcopy(value)


@dataclass(frozen=True)
class DatasetComponent(Component):
    kind: str
    n: int
    listing_hash: str
    classes: tuple[str, ...]
    domains: tuple[str, ...]


@dataclass(frozen=True)
class TeacherComponent(Component):
    name: str
    library: str
    tap: str
    size: int | None
    weights: str
    weights_hash: str
    precision: str


@dataclass(frozen=True)
class AugmentationComponent(Component):
    recipe: dict
    views: int
    base_seed: int
    seed_scheme: int

    @property
    def centre_crop(self) -> float:
        """The crop fraction of view 0 (and of every image at evaluation)."""
        return self.recipe["centre_crop"]


@dataclass(frozen=True)
class LayoutComponent(Component):
    shard_size: int
    chunk_size: int
    compress: bool


@dataclass(frozen=True)
class SchemaComponent(Component):
    version: int


_COMPONENT_TYPES = {"dataset": DatasetComponent, "teacher": TeacherComponent, "augmentation": AugmentationComponent,
                    "layout": LayoutComponent, "schema": SchemaComponent}


@dataclass(frozen=True)
class Fingerprint:
    """What a store was made from: a change of any component makes it another store. ``teacher`` is None for a
    version-3 store's own fingerprint (its teachers carry theirs); a reader's choice of teachers fills it in
    (:meth:`Manifest.for_teachers`)."""

    dataset: DatasetComponent
    teacher: TeacherComponent | None
    augmentation: AugmentationComponent
    layout: LayoutComponent
    schema: SchemaComponent

    @classmethod
    def from_dict(cls, fingerprint: Mapping, with_teacher: bool = True) -> Fingerprint:
        """The stored form, each component present and matching its hash (else :class:`ManifestError`); a
        ``teacher`` component only ``with_teacher``."""
        _need(isinstance(fingerprint, Mapping), "'fingerprint' is missing or not an object")
        names = FINGERPRINT_COMPONENTS if with_teacher else STORE_COMPONENTS
        _need(with_teacher or "teacher" not in fingerprint, "the store's fingerprint has a 'teacher' component; "
              "in version 3 each teacher's component is in 'teachers'")
        parts = {name: _checked_component(name, fingerprint.get(name)) for name in names}
        return cls(**{name: kind.from_dict(parts[name]) if name in parts else None
                      for name, kind in _COMPONENT_TYPES.items()})

    def components(self) -> dict[str, Component]:
        return {name: getattr(self, name) for name in FINGERPRINT_COMPONENTS if getattr(self, name) is not None}

    def hashes(self) -> dict[str, str]:
        return {name: part.hash for name, part in self.components().items()}

    def to_dict(self) -> dict:
        return {name: part.to_dict() for name, part in self.components().items()}

    def diff(self, other: Fingerprint) -> list[str]:
        """Names of the components whose hashes differ (one present on one side only differs too)."""
        mine, theirs = self.hashes(), other.hashes()
        return [name for name in FINGERPRINT_COMPONENTS if mine.get(name) != theirs.get(name)]

    def short(self) -> str:
        return " ".join(f"{name}={value[:8]}" for name, value in self.hashes().items())


def ensemble_component(members: list[TeacherComponent]) -> TeacherComponent:
    """The teacher component of a reader's choice: one teacher's own, or for several (their features concatenated
    in this order) a component naming them, ``name`` ``A,B``, with each member's stored component."""
    if len(members) == 1:
        return members[0]
    body = {"name": ",".join(m.name for m in members), "members": [m.to_dict() for m in members]}
    return TeacherComponent.from_dict(with_hash(body))
