"""Datasets named by a spec string: ``elpv``, ``digits``, ``folder:PATH``, ``cifar100:PATH``, optionally followed by
unlabeled images: ``<labeled spec>|unlabeled:NAME=PATH|…``.

A dataset is a :class:`DatasetListing`: a sorted, immutable list of samples (relative path,
label, domain, split) plus a way to read each sample's bytes and image. Sample order is
deterministic (sorted relative paths) so a store row always means the same sample; the spec
grammar, row keys and staleness check are the store contract (:mod:`contract.schema`). Unlabeled
images (any tree, or a flat folder) come after the labeled rows, with label -1, in the training
split, in a domain named NAME (the folder's name unless given): SSL trains on them as unlabeled,
UDA takes them as an unlabeled target domain.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from customkd.common.errors import UserError, printable
from customkd.contract import location
from customkd.contract.images import IMAGE_ERRORS, decode_image, read_image_bytes, to_8bit  # noqa: F401 - re-exported
from customkd.contract.listing import listing_hash
from customkd.contract.schema import SPLITS, UNLABELED, DataSpecError, parse_data_spec, unlabeled_part

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
UNLABELED_PREFIX = "unlabeled/"  # relative paths of unlabeled rows: unlabeled/<domain>/<path in its folder>
HOLDOUT_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class Sample:
    relpath: str
    label: int
    domain: int
    split: int
    size: int


@dataclass(frozen=True)
class DatasetListing:
    """Every sample of a dataset, in store row order."""

    spec: str
    root: Path
    samples: tuple[Sample, ...]
    classes: tuple[str, ...]
    domains: tuple[str, ...]
    splits: tuple[str, ...] = SPLITS
    reader: Callable[[DatasetListing, int], bytes] | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, index: int) -> Path:
        """Absolute path of a sample; refuses relative paths that escape the root."""
        path = (self.root / self.samples[index].relpath).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise UserError(f"sample path {self.samples[index].relpath!r} escapes the dataset root")
        return path

    def read_bytes(self, index: int) -> bytes:
        if self.reader is not None:
            return self.reader(self, index)
        return read_image_bytes(self.path(index))

    def load_image(self, index: int, data: bytes | None = None) -> Image.Image:
        data = self.read_bytes(index) if data is None else data
        if self.spec.startswith("cifar100:") and not self.samples[index].relpath.startswith(UNLABELED_PREFIX):
            return Image.fromarray(np.frombuffer(data, np.uint8).reshape(3, 32, 32).transpose(1, 2, 0))
        return decode_image(io.BytesIO(data))

    def listing_hash(self) -> str:
        """Hash of sorted relative paths, sizes, labels, domains and splits (:func:`contract.listing.listing_hash`)."""
        return listing_hash(self.samples, self.classes, self.domains)


def stratified_holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Split ids ``[N]`` (0 train, 1 test): ``fraction`` of each (label, group) cell held out."""
    rng = np.random.default_rng(seed)
    split = np.zeros(len(labels), dtype=np.int16)
    for cell in sorted(set(zip(labels.tolist(), groups.tolist(), strict=True))):
        members = np.flatnonzero((labels == cell[0]) & (groups == cell[1]))
        members = members[rng.permutation(len(members))]
        split[members[: int(round(fraction * len(members)))]] = 1
    return split


def _list_elpv(arg: str) -> DatasetListing:
    if arg:
        raise UserError("the elpv dataset takes no path: use DATA=elpv")
    try:
        import elpv_dataset
    except ImportError as exc:
        raise UserError("the elpv dataset needs the package: pip install elpv-dataset") from exc
    root = Path(elpv_dataset.__file__).parent / "data"
    probabilities = {0.0: 0, 1 / 3: 1, 2 / 3: 2, 1.0: 3}
    rows = []
    with open(root / "labels.csv") as fh:
        for line in fh:
            if line.strip():
                relpath, prob, cell_type = line.split()
                label = min(probabilities.items(), key=lambda kv: abs(kv[0] - float(prob)))[1]
                rows.append((relpath, label, 0 if cell_type == "mono" else 1))
    rows.sort()
    labels = np.array([r[1] for r in rows])
    domains = np.array([r[2] for r in rows])
    split = stratified_holdout(labels, domains, HOLDOUT_FRACTION, SPLIT_SEED)
    samples = tuple(
        Sample(r[0], r[1], r[2], int(split[i]), (root / r[0]).stat().st_size) for i, r in enumerate(rows)
    )
    classes = ("p0", "p1/3", "p2/3", "p1")
    return DatasetListing("elpv", root, samples, classes, ("mono", "poly"))


DIGITS_SIZE = 32  # px of the stored digit images (8×8 originals, bicubic); views are resized from these


def _digit_pgm(pixels: np.ndarray) -> bytes:
    """One 8×8 digit (values 0..16) as an 8-bit grayscale binary PGM of ``DIGITS_SIZE`` px: an uncompressed
    format, so the bytes (and the store's content hashes) do not depend on the zlib that Pillow was built with."""
    image = Image.fromarray(np.rint(pixels / 16.0 * 255).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    image.resize((DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BICUBIC).save(buffer, format="PPM")
    return buffer.getvalue()


_DIGITS_CACHE: dict[str, tuple[bytes, ...]] = {}


def _digits_images() -> tuple[bytes, ...]:
    if "pgm" not in _DIGITS_CACHE:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise UserError("the digits dataset needs scikit-learn: pip install scikit-learn") from exc
        _DIGITS_CACHE["pgm"] = tuple(_digit_pgm(image) for image in load_digits().images)
    return _DIGITS_CACHE["pgm"]


def _digits_reader(listing: DatasetListing, index: int) -> bytes:
    return _digits_images()[int(listing.samples[index].relpath.removesuffix(".pgm"))]


def _list_digits(arg: str) -> DatasetListing:
    """scikit-learn's bundled copy of the UCI handwritten digits: 1,797 real 8×8 images, 10 classes, offline.

    A regime where a pretrained teacher has a lot to teach a small student with few labels; the held-out
    20 % is a fixed stratified split (seed ``SPLIT_SEED``): 1,438 training rows, 359 evaluation rows."""
    if arg:
        raise UserError("the digits dataset takes no path: use DATA=digits")
    import sklearn.datasets

    images = _digits_images()
    labels = np.asarray(sklearn.datasets.load_digits().target)
    split = stratified_holdout(labels, np.zeros_like(labels), HOLDOUT_FRACTION, SPLIT_SEED)
    samples = tuple(Sample(f"{i:04d}.pgm", int(labels[i]), 0, int(split[i]), len(images[i])) for i in range(len(labels)))
    root = Path(sklearn.datasets.__file__).parent / "data"
    return DatasetListing("digits", root, samples, tuple(str(c) for c in range(10)), ("all",), reader=_digits_reader)


def _subdirs(directory: Path, links: set[Path]) -> list[Path]:
    """The folders in ``directory`` that are not hidden; a link to a folder is added to ``links``, not followed."""
    folders = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        (links.add if path.is_symlink() else folders.append)(path)
    return folders


def _relpath(path: Path, root: Path) -> str:
    """The sample's relative path; a name that is not UTF-8 (it could not be hashed or stored) is named."""
    relpath = path.relative_to(root).as_posix()
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        raw = relpath.encode("utf-8", "surrogateescape")
        raise UserError(f"file name {raw!r} under {root} is not valid UTF-8; rename it (e.g. with convmv) or move it "
                        "out of the dataset") from None
    return relpath


def _image_files(directory: Path, links: set[Path]) -> list[Path]:
    """The image files anywhere under ``directory``, hidden files and folders skipped.

    Links (to images or folders) are added to ``links`` and not followed: one pointing back into the tree
    (``c -> .``) repeats its images under another name, possibly as another class, and one pointing out of
    it makes files outside the dataset part of it."""
    files = []
    for folder, dirnames, filenames in os.walk(directory):  # os.walk does not descend into linked folders
        here = Path(folder)
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        links.update(here / name for name in dirnames if (here / name).is_symlink())
        for name in filenames:
            path = here / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.is_symlink():
                links.add(path)
            elif path.is_file():
                files.append(path)
    return sorted(files)


def _warn_links(links: set[Path], root: Path) -> None:
    """One warning naming the links a listing of ``root`` skipped."""
    if links:
        names = sorted(printable(link.relative_to(root).as_posix()) for link in links)
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        log.warning("skipped %d symbolic link(s) under %s, which a dataset folder does not follow (they would "
                    "repeat images or reach outside it): %s", len(names), printable(root), shown)


def _list_folder(arg: str) -> DatasetListing:
    """``PATH/<class>/<img>`` or ``PATH/<domain>/<class>/<img>``; ``train``/``test`` top dirs keep their split.

    Hidden files and folders (names starting with ``.``) are not data and are skipped."""
    if not arg:
        raise UserError("folder: needs a path, e.g. DATA=folder:/data/mydataset")
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist; pass DATA=folder:PATH with an existing directory")
    links: set[Path] = set()
    top = _subdirs(root, links)
    preset_split = {p.name for p in top} >= {"train", "test"} or {p.name for p in top} >= {"train", "val"}
    split_dirs = [p for p in top if p.name in ("train", "test", "val")] if preset_split else [root]
    entries = []  # (relpath, class, domain, split or -1)
    for split_dir in split_dirs:
        split_id = (0 if split_dir.name == "train" else 1) if preset_split else -1
        for class_or_domain in _subdirs(split_dir, links):
            subdirs = _subdirs(class_or_domain, links)
            direct = [p for p in class_or_domain.iterdir()
                      if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not p.is_symlink()]
            if subdirs and not direct:  # domain level
                for class_dir in subdirs:
                    for f in _image_files(class_dir, links):
                        entries.append((_relpath(f, root), class_dir.name, class_or_domain.name, split_id))
            else:
                for f in _image_files(class_or_domain, links):
                    entries.append((_relpath(f, root), class_or_domain.name, "", split_id))
    _warn_links(links, root)
    if not entries:
        raise UserError(f"no images found under {root}; expected PATH/<class>/<image> or PATH/<domain>/<class>/<image>")
    entries.sort()
    classes = tuple(sorted({e[1] for e in entries}))
    domains = tuple(sorted({e[2] for e in entries})) if any(e[2] for e in entries) else ("all",)
    labels = np.array([classes.index(e[1]) for e in entries])
    domain_ids = np.array([domains.index(e[2]) if e[2] else 0 for e in entries])
    split = (
        np.array([e[3] for e in entries], dtype=np.int16)
        if preset_split
        else stratified_holdout(labels, domain_ids, HOLDOUT_FRACTION, SPLIT_SEED)
    )
    samples = tuple(
        Sample(e[0], int(labels[i]), int(domain_ids[i]), int(split[i]), (root / e[0]).stat().st_size)
        for i, e in enumerate(entries)
    )
    return DatasetListing(f"folder:{root.resolve()}", root.resolve(), samples, classes, domains)


def _cifar_reader(listing: DatasetListing, index: int) -> bytes:
    part, row = listing.samples[index].relpath.split("/")
    return _load_cifar_part(listing.root, part)[b"data"][int(row)].tobytes()


_CIFAR_CACHE: dict[tuple[Path, str], dict] = {}


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a pickled NumPy array needs, as their objects (no import by name)."""
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    import codecs

    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,  # arrays pickled at protocol 5
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes pickled by Python 3 at protocol 2
    }


class CifarUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR-100 python release: dicts of bytes, lists, ints and NumPy arrays.

    ``find_class`` answers only the NumPy array globals above, so a pickle that asks for anything
    else (``os.system``, ``builtins.exec``, …) is refused before any of it runs."""

    def find_class(self, module: str, name: str):
        allowed = _numpy_globals().get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which the CIFAR-100 format never contains")
        return allowed


def load_cifar_pickle(path: Path) -> dict:
    """One CIFAR-100 pickle (``train``, ``test`` or ``meta``) read without running code from it."""
    try:
        with open(path, "rb") as fh:
            data = CifarUnpickler(fh, encoding="bytes").load()
    except OSError as exc:
        raise UserError(f"cannot read CIFAR-100 file {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure: the file is not what it claims
        reason = str(exc).split("\n")[0][:200] or type(exc).__name__
        raise UserError(f"refusing CIFAR-100 file {path}: {reason}; use the official cifar-100-python release "
                        "(nothing from this file was run)") from None
    if not isinstance(data, dict):
        raise UserError(f"CIFAR-100 file {path} does not hold a dict; use the official cifar-100-python release")
    return data


def _check_cifar_part(path: Path, part: str, data: dict) -> None:
    """The fields customkd reads have the types and sizes of the official release."""
    if part == "meta":
        names = data.get(b"fine_label_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, bytes) for n in names):
            raise UserError(f"CIFAR-100 file {path} has no list of fine_label_names; use the official release")
        return
    pixels, labels = data.get(b"data"), data.get(b"fine_labels")
    if (not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2
            or pixels.shape[1] != 3072 or not isinstance(labels, list) or len(labels) != len(pixels)
            or not all(type(y) is int and 0 <= y < 100 for y in labels)):
        raise UserError(f"CIFAR-100 file {path} is not a CIFAR-100 split (uint8 data [N, 3072] and N fine_labels "
                        "in 0..99); use the official release")


def _load_cifar_part(root: Path, part: str) -> dict:
    if (root, part) not in _CIFAR_CACHE:
        path = root / part
        data = load_cifar_pickle(path)
        _check_cifar_part(path, part, data)
        _CIFAR_CACHE[(root, part)] = data
    return _CIFAR_CACHE[(root, part)]


def _list_cifar100(arg: str) -> DatasetListing:
    root = Path(arg).expanduser().resolve()
    if not (root / "train").is_file() or not (root / "test").is_file() or not (root / "meta").is_file():
        raise UserError(
            f"{root} is not the CIFAR-100 python release (train, test, meta files); download "
            "cifar-100-python.tar.gz yourself, unpack it and pass DATA=cifar100:PATH/cifar-100-python"
        )
    names = _load_cifar_part(root, "meta")[b"fine_label_names"]
    try:
        classes = tuple(c.decode() for c in names)
    except UnicodeDecodeError:
        raise UserError(f"CIFAR-100 file {root / 'meta'} has class names that are not UTF-8") from None
    samples = []
    for split_id, part in enumerate(SPLITS):
        labels = _load_cifar_part(root, part)[b"fine_labels"]
        if labels and max(labels) >= len(classes):
            raise UserError(f"CIFAR-100 file {root / part} uses label {max(labels)} but {root / 'meta'} names "
                            f"{len(classes)} classes; use the official release")
        samples += [Sample(f"{part}/{i:05d}", int(y), 0, split_id, 3072) for i, y in enumerate(labels)]
    samples.sort(key=lambda s: s.relpath)
    return DatasetListing(f"cifar100:{root}", root, tuple(samples), classes, ("all",), reader=_cifar_reader)


DATASETS: dict[str, Callable[[str], DatasetListing]] = {
    "elpv": _list_elpv,
    "digits": _list_digits,
    "folder": _list_folder,
    "cifar100": _list_cifar100,
}


def with_kind(spec: str) -> str:
    """A bare directory path (``/data/mine``, ``./shapes``) is a folder dataset, as timm's ``--data-dir`` is:
    ``folder:`` is put in front. Named datasets and specs with a ``kind:`` keep their meaning."""
    head = spec.split("|", 1)[0]
    if ":" in head or head in DATASETS or not Path(head).expanduser().is_dir():
        return spec
    return f"folder:{spec}"


def unlabeled_spec(value: str) -> str:
    """A ``--unlabeled`` value (``folder:PATH``, ``PATH`` or ``NAME=folder:PATH``) as its part of a data spec."""
    name, sep, where = value.partition("=")
    if not sep or "/" in name or ":" in name:
        name, where = "", value
    folder = Path(where.removeprefix("folder:")).expanduser()
    if not folder.is_dir():
        raise UserError(f"--unlabeled {value}: folder {folder} does not exist; pass --unlabeled folder:PATH")
    if "|" in str(folder.resolve()) or "|" in name:
        raise UserError(f"--unlabeled {value}: '|' in a name or path is not supported; rename or link the folder")
    return unlabeled_part(name or folder.resolve().name, str(folder.resolve()))


def _unlabeled_folders(parts: tuple[tuple[str, str], ...]) -> list[tuple[str, Path]]:
    for _, where in parts:
        if not Path(where).is_dir():
            raise UserError(f"unlabeled folder {where} does not exist; pass --data with the spec of where the "
                            "images are now")
    return [(name, Path(where)) for name, where in parts]


def _labeled_files(listing: DatasetListing) -> dict[tuple[int, int], str]:
    """(device, inode) → relative path of each labeled image stored as a file; empty when the images are read
    from elsewhere (archives, a bundled array). Identities, not paths, so a hard link is the same image too."""
    if listing.reader is not None:
        return {}
    identities = {}
    for sample in listing.samples:
        stat = (listing.root / sample.relpath).stat()
        identities[stat.st_dev, stat.st_ino] = sample.relpath
    return identities


def _with_unlabeled(listing: DatasetListing, spec: str, parts: tuple[tuple[str, str], ...]) -> DatasetListing:
    """``listing`` followed by every image of the unlabeled folders (label -1, training split)."""
    domains, samples, sources = list(listing.domains), list(listing.samples), {}
    labeled = _labeled_files(listing)
    for name, folder in _unlabeled_folders(parts):
        if name not in domains:
            domains.append(name)
        links: set[Path] = set()
        files = _image_files(folder, links)
        _warn_links(links, folder)
        if not files:
            raise UserError(f"no images under unlabeled folder {folder} (looked for {', '.join(IMAGE_SUFFIXES)})")
        for file in files:
            relpath = f"{UNLABELED_PREFIX}{name}/{_relpath(file, folder)}"
            if relpath in sources:
                raise UserError(f"two unlabeled folders named {name!r} hold {_relpath(file, folder)}; name them "
                                "apart with --unlabeled NAME=folder:PATH")
            stat = file.stat()
            if (stat.st_dev, stat.st_ino) in labeled:
                raise UserError(f"unlabeled folder {folder} holds {labeled[stat.st_dev, stat.st_ino]} of the labeled "
                                f"dataset (as {file.name}); pass a folder of other images: held-out images would be "
                                "trained on")
            sources[relpath] = file
            samples.append(Sample(relpath, UNLABELED, domains.index(name), 0, stat.st_size))
    base_reader = listing.reader

    def read(composed: DatasetListing, index: int) -> bytes:
        relpath = composed.samples[index].relpath
        if relpath in sources:
            return sources[relpath].read_bytes()
        return base_reader(listing, index) if base_reader is not None else listing.path(index).read_bytes()

    return DatasetListing(spec, listing.root, tuple(samples), listing.classes, tuple(domains), listing.splits, read)


def check_outside_data(spec: str, place: str | Path, option: str, why: str) -> None:
    """Refuse, before any work, ``option``'s local ``place`` where it is, lies inside or contains a dataset folder of
    ``spec``; ``why`` says what writing there would do to the images (a dataset folder is the user's, and any
    image written into it becomes a sample). A spec that does not parse is left to :func:`load_listing`."""
    if location.is_remote(str(place)):
        return
    target = Path(location.to_local(str(place))).expanduser().resolve()
    try:
        folders = parse_data_spec(spec).folders
    except DataSpecError:
        return
    for folder in folders:
        images = Path(folder).expanduser().resolve()
        relation = ("is" if images == target else "lies inside" if target in images.parents
                    else "contains" if images in target.parents else None)
        if relation:
            raise UserError(f"dataset folder {folder} {relation} {option} {location.display(place)}; {why}: choose "
                            f"an {option} outside the dataset folders (nothing was touched)")


def load_listing(spec: str) -> DatasetListing:
    """Resolve a data spec (``elpv``, ``folder:PATH``, ``cifar100:PATH``, each optionally followed by
    ``|unlabeled:NAME=PATH`` parts, :func:`contract.schema.parse_data_spec`) into its listing."""
    spec = with_kind(spec)
    try:
        parsed = parse_data_spec(spec)
    except DataSpecError as exc:
        if exc.part is None:
            raise UserError(f"unknown dataset {spec!r}; known: elpv, digits, folder:PATH (or an existing folder's "
                            "path), cifar100:PATH") from None
        raise UserError(f"data spec part {exc.part!r} is not unlabeled:NAME=PATH") from None
    try:  # a folder the listing walks may hold entries this process cannot stat or list
        listing = DATASETS[parsed.kind](parsed.arg)
        if parsed.unlabeled:
            parts = [unlabeled_part(name, folder) for name, folder in parsed.unlabeled]
            listing = _with_unlabeled(listing, "|".join([listing.spec, *parts]), parsed.unlabeled)
    except OSError as exc:
        raise UserError(f"cannot list dataset {spec} ({exc.filename}: {exc.strerror or type(exc).__name__}); "
                        "fix its permissions or pass a dataset folder this user can read") from None
    log.info("dataset %s: %d samples (%d unlabeled), %d classes", printable(listing.spec), len(listing),
             sum(s.label == UNLABELED for s in listing.samples), len(listing.classes))
    return listing
