"""Few-shot image sets: ImageFolder trees, CoOp-style splits and array files.

A :class:`FewShotSet` is a registered dataset: class names in a fixed order and, per split, the
images with their labels. Images are only read to compute features (see ``features.py``);
requests never carry images.

Spec syntax of ``--dataset`` (see :func:`parse_dataset_spec`)::

    ID=PATH                       ImageFolder tree PATH/<split>/<class_folder>/*.{png,jpg,jpeg}
    ID=imagefolder:PATH           the same, explicit
    ID=PATH.npz | ID=npz:PATH     arrays <split>_images (N,H,W[,C] uint8), <split>_labels, class_names
    ID=coop:split_json=FILE,root=DIR,shots=N,seed=S
                                  CoOp's split JSON + image root; train sampled N-shot with seed S
                                  (val min(N, 4)-shot, test whole), as CoOp does
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.scorer.features import FeaturesSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset source that cannot be read (bad path, bad spec, empty tree)."""


@dataclass
class Split:
    """The images of one split: a loader per image and its label index."""

    name: str
    labels: list[int]
    # Loads image i as a PIL image; kept lazy so registering a set reads no pixels.
    load: Callable[[int], Any]
    # Content hash of the split (image bytes + labels); keys the feature cache. Splits read from
    # image files take a FileDigests memo so a restart need not read every file again.
    fingerprint: Callable[[FileDigests | None], str]
    # How its image features were obtained; None until they are.
    features_source: FeaturesSource | None = None
    # Reads every image's header (raises OSError for a missing, unreadable or non-image file),
    # so a registration is refused at once instead of failing minutes later mid-encoding.
    check: Callable[[], None] | None = None
    # Why its features could not be written to the feature cache (a full disk), if so.
    cache_error: str | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FewShotSet:
    """A registered labelled image set: ordered class names and its splits."""

    id: str
    class_names: list[str]
    splits: dict[str, Split]
    source: str
    ready: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    images_done: int = 0  # images of every split whose features are ready (progress)
    error: str | None = None  # why computing its features failed (a re-registration retries)

    @property
    def images_total(self) -> int:
        """Images over every split."""
        return sum(len(s) for s in self.splits.values())

    def check(self) -> None:
        """Read every image's header: OSError for one that is missing, unreadable or no image."""
        for split in self.splits.values():
            if split.check is not None:
                split.check()


def display_name(folder: str) -> str:
    """Class display name from a folder name: ``_`` becomes a space."""
    return folder.replace("_", " ")


def _open_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


class FileDigests:
    """SHA-256 of image files, remembered in a SQLite file by (path, size, mtime).

    Hashing every image's bytes to find a split's feature-cache key reads the whole dataset at
    each start (6.4 GB for ImageNet's validation set). Like make or ccache, a file whose path,
    size and modification time are unchanged is taken to hold the same bytes, and only new or
    touched files are read. SQLite's locking lets replicas share the folder. Use as a context
    manager; new digests are written on exit.

    The memo is only a shortcut: a file that is not a database, is damaged or holds another
    table is logged and rebuilt empty; one that cannot be opened or written (locked for too
    long, a full disk) is logged and skipped, and every digest is then read from the bytes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._new: list[tuple[str, int, int, bytes]] = []
        self.read = 0  # files whose bytes were read (memo misses)
        self.rebuilt = False  # the file was damaged and started afresh
        self._db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._open()
        except sqlite3.OperationalError as exc:  # locked, read-only, no space: work without it
            self._skip(exc)
        except sqlite3.DatabaseError as exc:  # not a database, malformed, another schema
            log.warning(
                "file-digest memo is damaged, rebuilding it", extra={"path": str(path), "error": str(exc)}
            )
            for suffix in ("", "-journal", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            self.rebuilt = True
            try:
                self._db = self._open()
            except sqlite3.DatabaseError as again:
                self._skip(again)
        except OSError as exc:
            self._skip(exc)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS digests"
                " (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, digest BLOB)"
            )
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check[0] if check else 'no answer'}")
            try:
                db.execute("SELECT path, size, mtime_ns, digest FROM digests LIMIT 1").fetchall()
            except sqlite3.OperationalError as exc:  # a table of that name with other columns
                raise sqlite3.DatabaseError(f"foreign digests table: {exc}") from exc
        except BaseException:
            db.close()
            raise
        return db

    def _skip(self, exc: Exception) -> None:
        log.warning("file-digest memo not used", extra={"path": str(self.path), "error": str(exc)})
        if self._db is not None:
            self._db.close()
        self._db = None

    def digest(self, file: Path) -> bytes:
        """The SHA-256 of ``file``'s bytes, from the memo when its size and mtime match."""
        key = os.path.abspath(file)  # not resolve(): a realpath per file costs more than the lookup
        st = os.stat(key)
        row = None
        if self._db is not None:
            try:
                row = self._db.execute(
                    "SELECT digest FROM digests WHERE path = ? AND size = ? AND mtime_ns = ?",
                    (key, st.st_size, st.st_mtime_ns),
                ).fetchone()
            except sqlite3.DatabaseError as exc:  # damaged beyond what quick_check saw
                self._skip(exc)
        if row is not None and isinstance(row[0], bytes) and len(row[0]) == 32:
            return bytes(row[0])
        digest = hashlib.sha256(file.read_bytes()).digest()
        self.read += 1
        self._new.append((key, st.st_size, st.st_mtime_ns, digest))
        return digest

    def __enter__(self) -> FileDigests:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._db is None:
            return
        try:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)", self._new)
        except sqlite3.DatabaseError as err:  # a full disk: the digests are read again next time
            log.warning("file digests not remembered", extra={"path": str(self.path), "error": str(err)})
        finally:
            self._db.close()


def _files_split(name: str, files: Sequence[Path], labels: list[int], root: Path) -> Split:
    files = list(files)

    def fingerprint(memo: FileDigests | None = None) -> str:
        h = hashlib.sha256()
        for path, label in zip(files, labels, strict=True):
            rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
            h.update(f"{rel}\0{label}\0".encode())
            h.update(memo.digest(path) if memo else hashlib.sha256(path.read_bytes()).digest())
        return h.hexdigest()

    def check() -> None:
        from PIL import Image

        for path in files:
            with Image.open(path):  # reads the header only: cheap, and no pixel is decoded
                pass

    return Split(name, labels, lambda i: _open_rgb(files[i]), fingerprint, check=check)


def load_image_folder(dataset_id: str, root: Path) -> FewShotSet:
    """An ImageFolder tree ``root/<split>/<class_folder>/*.{png,jpg,jpeg}``.

    Splits are the subfolders present; classes are the union of class folders over all splits,
    ordered by folder name, so every split shares one label space.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"image folder {str(root)!r} is not a directory")
    split_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    folders = sorted({c.name for s in split_dirs for c in s.iterdir() if c.is_dir()})
    if not folders:
        raise DatasetError(f"image folder {str(root)!r} has no <split>/<class>/ folders")
    index = {name: i for i, name in enumerate(folders)}
    splits: dict[str, Split] = {}
    for split_dir in split_dirs:
        files: list[Path] = []
        labels: list[int] = []
        for class_dir in sorted(c for c in split_dir.iterdir() if c.is_dir()):
            for f in sorted(class_dir.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                    labels.append(index[class_dir.name])
        if files:
            splits[split_dir.name] = _files_split(split_dir.name, files, labels, root)
    if not splits:
        raise DatasetError(f"image folder {str(root)!r} holds no .png/.jpg/.jpeg images")
    return FewShotSet(dataset_id, [display_name(f) for f in folders], splits, f"imagefolder:{root}")


def coop_fewshot(items: Sequence[Any], labels: Sequence[int], shots: int, rng: random.Random) -> list[int]:
    """Indices of a ``shots``-shot sample, exactly as CoOp's ``generate_fewshot_dataset``.

    CoOp groups items by label in order of first appearance, then per label draws
    ``random.sample(items, shots)`` (all items when a label has fewer; no repeat).
    """
    if shots < 1:
        return list(range(len(items)))
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    chosen: list[int] = []
    for idx in by_label.values():
        chosen.extend(rng.sample(idx, shots) if len(idx) >= shots else idx)
    return chosen


def load_coop(dataset_id: str, split_json: Path, image_root: Path, shots: int, seed: int) -> FewShotSet:
    """A CoOp-style dataset: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``.

    Class names have ``_`` replaced by a space, as CoOp does before filling its prompts.
    Sampling follows CoOp: ``random.seed(seed)``, then train ``shots``-shot and val
    ``min(shots, 4)``-shot; test is whole. ``shots=0`` keeps every split whole.
    """
    split_json, image_root = Path(split_json).expanduser(), Path(image_root).expanduser()
    try:
        raw = json.loads(split_json.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read CoOp split {str(split_json)!r}: {exc}") from exc
    names: dict[int, str] = {}
    for entries in raw.values():
        for _path, label, cname in entries:
            names.setdefault(int(label), str(cname))
    if not names:
        raise DatasetError(f"CoOp split {str(split_json)!r} lists no images")
    # CoOp's prompt learner writes class names with spaces (UCF101's "Apply_Eye_Makeup" and the like).
    class_names = [names.get(i, str(i)).replace("_", " ") for i in range(max(names) + 1)]
    # One generator seeded once, drawn train then val: the same sequence as CoOp's global seed.
    rng = random.Random(seed)
    splits: dict[str, Split] = {}
    for name in ("train", "val", "test"):
        entries = raw.get(name) or []
        files = [image_root / str(e[0]) for e in entries]
        labels = [int(e[1]) for e in entries]
        k = {"train": shots, "val": min(shots, 4)}.get(name, 0)
        keep = coop_fewshot(files, labels, k, rng) if shots > 0 else list(range(len(files)))
        if keep:
            splits[name] = _files_split(name, [files[i] for i in keep], [labels[i] for i in keep], image_root)
    return FewShotSet(
        dataset_id, class_names, splits, f"coop:{split_json}", extra={"shots": shots, "seed": seed}
    )


def load_array_file(dataset_id: str, path: Path) -> FewShotSet:
    """An ``.npz`` with ``<split>_images`` (N,H,W[,C] uint8), ``<split>_labels`` and ``class_names``."""
    import numpy as np
    from PIL import Image

    path = Path(path).expanduser()
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read array file {str(path)!r}: {exc}") from exc
    if "class_names" not in arrays:
        raise DatasetError(f"array file {str(path)!r} has no class_names array")
    class_names = [str(c) for c in arrays["class_names"].tolist()]
    splits: dict[str, Split] = {}
    for key in sorted(arrays):
        if not key.endswith("_images"):
            continue
        name = key[: -len("_images")]
        images, labels = arrays[key], arrays.get(f"{name}_labels")
        if labels is None or len(labels) != len(images):
            raise DatasetError(f"array file {str(path)!r}: {name}_labels missing or of another length")

        def load(i: int, images: Any = images) -> Any:
            a = images[i]
            return Image.fromarray(a.astype(np.uint8)).convert("RGB")

        def fingerprint(_memo: FileDigests | None = None, images: Any = images, labels: Any = labels) -> str:
            h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
            h.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
            return h.hexdigest()

        splits[name] = Split(name, [int(x) for x in labels], load, fingerprint)
    if not splits:
        raise DatasetError(f"array file {str(path)!r} has no <split>_images arrays")
    return FewShotSet(dataset_id, class_names, splits, f"npz:{path}")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``--dataset`` value: the id and how to load the set."""

    id: str
    kind: str  # "imagefolder" | "coop" | "npz"
    path: str
    options: dict[str, str] = field(default_factory=dict)

    def load(self) -> FewShotSet:
        """Read the source (no pixels yet) into a :class:`FewShotSet`."""
        if self.kind == "imagefolder":
            return load_image_folder(self.id, Path(self.path))
        if self.kind == "npz":
            return load_array_file(self.id, Path(self.path))
        o = self.options
        try:
            shots, seed = int(o.get("shots", "0")), int(o.get("seed", "1"))
        except ValueError as exc:
            raise DatasetError(f"coop dataset {self.id!r}: shots and seed must be integers") from exc
        if "split_json" not in o or "root" not in o:
            raise DatasetError(f"coop dataset {self.id!r} needs split_json=FILE and root=DIR")
        return load_coop(self.id, Path(o["split_json"]), Path(o["root"]), shots, seed)


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Parse ``ID=PATH``, ``ID=imagefolder:PATH``, ``ID=npz:PATH`` or ``ID=coop:k=v,...``."""
    dataset_id, sep, rest = spec.partition("=")
    dataset_id = dataset_id.strip()
    if not sep or not dataset_id or not rest:
        raise DatasetError(f"dataset spec {spec!r} is not ID=SOURCE")
    if rest.startswith("coop:"):
        options: dict[str, str] = {}
        for part in rest[len("coop:") :].split(","):
            key, eq, value = part.partition("=")
            if not eq:
                raise DatasetError(f"dataset spec {spec!r}: {part!r} is not key=value")
            options[key.strip()] = value.strip()
        unknown = set(options) - {"split_json", "root", "shots", "seed"}
        if unknown:
            raise DatasetError(f"dataset spec {spec!r}: unknown keys {sorted(unknown)}")
        return DatasetSpec(dataset_id, "coop", options.get("split_json", ""), options)
    if rest.startswith("imagefolder:"):
        return DatasetSpec(dataset_id, "imagefolder", rest[len("imagefolder:") :])
    if rest.startswith("npz:"):
        return DatasetSpec(dataset_id, "npz", rest[len("npz:") :])
    if rest.lower().endswith(".npz"):
        return DatasetSpec(dataset_id, "npz", rest)
    return DatasetSpec(dataset_id, "imagefolder", rest)
