"""Settings files for ``extract`` and ``distill`` (``--config FILE``, ``DistillConfig.from_file``): YAML, TOML, or a
run's ``config.json`` to replay it.

Precedence is defaults (the config dataclasses) → file → flags typed on the command line. Keys are the option
names with underscores (``labels_per_class: 4``); each value goes through the same type conversion and checks
as the flag. An unknown key is refused by name. A run's ``config.json`` also records what the run measured and
resolved (``teacher``, ``n_train``, ``effective_lr`` …): those records are skipped when it is replayed, as are
``out`` and ``resume``, so ``distill --config RUN/config.json --out NEW`` trains the same run again.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable
from pathlib import Path

from customkd.common.errors import UserError
from customkd.common.files import parse_json

SUFFIXES = (".yaml", ".yml", ".toml", ".json")
NOT_REPLAYED = ("out", "resume")  # a replay writes a new run
NOT_SETTINGS = ("config", "verbose", "quiet")  # how the command runs, not what it computes
MAX_CONFIG_BYTES = 1 << 20  # a config holds a few dozen numbers and names; more is not a config
MAX_SHOWN_CHARS = 200  # how much of a file's key or value an error line quotes


def read_config_file(path: str) -> dict:
    """The file's top-level mapping; one error line for a missing, unreadable or malformed file."""
    file = Path(path)
    if file.suffix not in SUFFIXES:
        raise UserError(f"--config {path}: expected a {', '.join(SUFFIXES)} file")
    if not file.exists():
        raise UserError(f"--config {path} does not exist; pass a YAML or TOML file, or a run's config.json")
    if not file.is_file():  # a folder, a pipe, a device (/dev/zero): nothing a config is read from
        raise UserError(f"--config {path} is not a regular file; pass a YAML or TOML file, or a run's config.json")
    try:
        with file.open("rb") as stream:  # read at most one byte past the bound, whatever the file claims
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UserError(f"--config {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"--config {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a config holds option values")
    text = data.decode("utf-8", errors="replace")
    try:
        if file.suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        elif file.suffix == ".json":
            values = parse_json(text)
        else:
            values = _load_plain_yaml(text)
    except _AliasRefused:
        raise UserError(f"--config {path} uses YAML anchors or aliases (&name, *name); write each value out") \
            from None
    except Exception as exc:  # noqa: BLE001 - each parser raises its own error type
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--config {path} cannot be parsed ({first})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must hold a mapping of option names to values")
    return values


class _AliasRefused(Exception):
    """A YAML anchor or alias, refused before the node it names is composed."""


def _load_plain_yaml(text: str):
    """YAML's plain data (safe_load: no tags, nothing constructed) without anchors or aliases.

    An alias repeats a node without copying it, so nested aliases (the "billion laughs") make a file of a few
    hundred bytes stand for billions of values that converting or quoting them would then build."""
    import yaml

    class PlainLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise _AliasRefused
            return super().compose_node(parent, index)

    loader = PlainLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _shown(value: object) -> str:
    """``repr(value)`` cut to :data:`MAX_SHOWN_CHARS`, for quoting a file's key or value in an error line."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + f"... ({len(text)} characters)"


def _is_run_record(values: dict) -> bool:
    return "store_fingerprint" in values and "effective_epochs" in values


def settings_from_file(path: str, hints: dict[str, object], as_given=None) -> dict:
    """The settings a file gives, converted to ``hints`` (setting name → type, e.g. a config dataclass's fields)
    as a flag of that name would be; a run's config.json is replayed (its records, ``out`` and ``resume`` left
    out; ``as_given`` turns its values into the settings as they were given, ``trainer.run_folder.as_given``).
    One error line for an unknown key or a value of the wrong kind."""
    values = read_config_file(path)
    replay = _is_run_record(values)
    values = as_given(values) if replay and as_given is not None else values
    settings = {}
    for key, value in values.items():
        name = str(key)
        if replay and (name not in hints or name in NOT_REPLAYED):
            continue  # what the run recorded rather than chose, or where it wrote
        if name not in hints or name in NOT_SETTINGS:
            raise UserError(f"unknown key {_shown(name)} in --config {path}; known: {known(hints)}")
        settings[name] = convert(hints[name], value, name, path)
    return settings


def convert(hint, value, name: str, path: str):
    """A file value as the command-line option ``name`` (type ``hint``) would give it, or one error line."""
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
    union = typing.get_origin(base) in (typing.Union, types.UnionType)
    kinds = [t for t in typing.get_args(base) if t is not type(None)] if union else [base]
    if value is None and type(None) in typing.get_args(base):
        return None
    kind = kinds[0]
    if typing.get_origin(kind) is tuple:  # a list of names: a list, or one comma-separated string
        items = value if isinstance(value, list) else str(value).split(",")
        return tuple(convert(str, item, name, path) for item in items if item != "")
    if typing.get_origin(kind) is list:  # a repeatable option: a list, or one value
        items = value if isinstance(value, list) else [value]
        return [convert(typing.get_args(kind)[0], item, name, path) for item in items]
    if isinstance(value, list | tuple) and kind is str:
        value = ",".join(str(v) for v in value)  # e.g. UDA domains, written as a list
    try:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and not isinstance(value, bool) and isinstance(value, int | str):
            return int(value)
        if kind is float and not isinstance(value, bool) and isinstance(value, int | float | str):
            return float(value)
        if kind is str and isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    except ValueError:
        pass
    raise UserError(f"--config {path}: {name} must be {_KIND_WORDS.get(kind, kind.__name__)}, got {_shown(value)}")


_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def known(options: Iterable[str]) -> str:
    return ", ".join(sorted(name for name in options if name not in NOT_SETTINGS))
