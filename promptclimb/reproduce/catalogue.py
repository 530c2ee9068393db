"""CoOp's datasets: where each lives under CoOp's data root, our prompt for it, and discovery.

FGVC-Aircraft and ImageNet ship no split JSON in CoOp; :func:`fgvc_split` and
:func:`imagenet_split` build one from CoOp's own files, so the scorer reads every dataset the
same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CoopDataset:
    """Where CoOp keeps one dataset under its data root, and our prompt for it."""

    name: str  # CoOp's folder name under the data root
    title: str  # as in the paper's tables
    split_file: str  # split JSON (or, for fgvc/imagenet, the file we generate)
    image_dir: str  # image root relative to the dataset folder ("" = the folder itself)
    # Our hand-written template (baseline (1) of the table) and the task given to the LLM.
    template: str
    task: str
    # "json": CoOp's split_zhou_*.json; "fgvc": images_variant_*.txt; "imagenet": classnames.txt
    # + images/{train,val}.
    layout: str = "json"


# Folder and file names as in CoOp's datasets/*.py (KaiyangZhou/CoOp); templates are ours.
COOP_DATASETS: dict[str, CoopDataset] = {
    d.name: d
    for d in (
        CoopDataset(
            "imagenet",
            "ImageNet",
            "classnames.txt",
            "images",
            "a good photo showing a {}.",
            "photos of everyday objects, animals and scenes (ImageNet)",
            layout="imagenet",
        ),
        CoopDataset(
            "caltech-101",
            "Caltech101",
            "split_zhou_Caltech101.json",
            "101_ObjectCategories",
            "a centred photo of a {}, an object.",
            "photos of objects from 101 categories (Caltech101)",
        ),
        CoopDataset(
            "oxford_pets",
            "OxfordPets",
            "split_zhou_OxfordPets.json",
            "images",
            "a photo of my pet, a {}.",
            "photos of cat and dog breeds (Oxford-IIIT Pets)",
        ),
        CoopDataset(
            "stanford_cars",
            "StanfordCars",
            "split_zhou_StanfordCars.json",
            "",
            "a photo of a {}, a model of car.",
            "photos of car models by make, model and year (Stanford Cars)",
        ),
        CoopDataset(
            "oxford_flowers",
            "Flowers102",
            "split_zhou_OxfordFlowers.json",
            "jpg",
            "a close-up photo of a {}, a flowering plant.",
            "photos of flower species (Oxford Flowers 102)",
        ),
        CoopDataset(
            "food-101",
            "Food101",
            "split_zhou_Food101.json",
            "images",
            "a photo of a plate of {}, a dish.",
            "photos of dishes (Food-101)",
        ),
        CoopDataset(
            "fgvc_aircraft",
            "FGVCAircraft",
            "variants.txt",
            "images",
            "a photo of a {}, an aircraft model.",
            "photos of aircraft variants (FGVC Aircraft)",
            layout="fgvc",
        ),
        CoopDataset(
            "sun397",
            "SUN397",
            "split_zhou_SUN397.json",
            "SUN397",
            "a photo taken in a {}.",
            "photos of indoor and outdoor scenes (SUN397)",
        ),
        CoopDataset(
            "dtd",
            "DTD",
            "split_zhou_DescribableTextures.json",
            "images",
            "a close-up of a surface with a {} texture.",
            "close-ups of textures (Describable Textures Dataset)",
        ),
        CoopDataset(
            "eurosat",
            "EuroSAT",
            "split_zhou_EuroSAT.json",
            "2750",
            "a satellite image of {}.",
            "Sentinel-2 satellite images of land use (EuroSAT)",
        ),
        CoopDataset(
            "ucf101",
            "UCF101",
            "split_zhou_UCF101.json",
            "UCF-101-midframes",
            "a video frame of a person doing {}.",
            "middle frames of videos of human actions (UCF101)",
        ),
    )
}


class ReproduceError(ValueError):
    """Bad flags or a data root that cannot be used; the message is for the user."""


@dataclass(frozen=True)
class FoundDataset:
    """A dataset present under the data root, as a CoOp split JSON + image root."""

    info: CoopDataset
    split_json: Path
    image_root: Path


def fgvc_split(folder: Path) -> dict[str, list[list[Any]]]:
    """CoOp's FGVC-Aircraft files (``variants.txt``, ``images_variant_{split}.txt``) as split JSON data."""
    classes = [line.strip() for line in (folder / "variants.txt").read_text().splitlines() if line.strip()]
    label = {c: i for i, c in enumerate(classes)}
    out: dict[str, list[list[Any]]] = {}
    for split in ("train", "val", "test"):
        entries = []
        for line in (folder / f"images_variant_{split}.txt").read_text().splitlines():
            parts = line.strip().split(" ")
            if len(parts) < 2:
                continue
            cname = " ".join(parts[1:])
            if cname not in label:
                raise ReproduceError(
                    f"fgvc_aircraft: {cname!r} in images_variant_{split}.txt is not in variants.txt"
                )
            entries.append([parts[0] + ".jpg", label[cname], cname])
        out[split] = entries
    return out


def imagenet_split(folder: Path) -> dict[str, list[list[Any]]]:
    """CoOp's ImageNet (``classnames.txt`` + ``images/{train,val}/<wnid>/``) as JSON data.

    As in CoOp, labels follow the sorted folder names, the class name comes from
    ``classnames.txt`` and ``val`` is the test split (there is no val split to sample). Files are
    sorted by name (CoOp lists them unsorted, which makes its sampling filesystem-dependent).
    """
    names: dict[str, str] = {}
    for line in (folder / "classnames.txt").read_text().splitlines():
        parts = line.strip().split(" ")
        if parts and parts[0]:
            names[parts[0]] = " ".join(parts[1:])
    images = folder / "images"
    out: dict[str, list[list[Any]]] = {"val": []}
    for split, target in (("train", "train"), ("val", "test")):
        entries = []
        folders = sorted(f.name for f in os.scandir(images / split) if f.is_dir())
        for label, wnid in enumerate(folders):
            if wnid not in names:
                raise ReproduceError(f"imagenet: folder {wnid!r} is not in classnames.txt")
            for f in sorted(os.listdir(images / split / wnid)):
                if not f.startswith("."):
                    entries.append([f"{split}/{wnid}/{f}", label, names[wnid]])
        out[target] = entries
    return out


def discover(data_root: Path, only: Sequence[str] | None, splits_dir: Path) -> list[FoundDataset]:
    """The datasets in CoOp's layout under ``data_root`` (all known ones, or those in ``only``).

    FGVC-Aircraft and ImageNet ship no split JSON in CoOp; one is generated once into
    ``splits_dir`` from CoOp's own files, so the scorer reads every dataset the same way.
    """
    data_root = Path(data_root).expanduser().resolve()
    if not data_root.is_dir():
        raise ReproduceError(f"--data-root {str(data_root)!r} is not a directory")
    if only:
        unknown = [n for n in only if n not in COOP_DATASETS]
        if unknown:
            raise ReproduceError(f"unknown datasets {unknown}; known: {', '.join(COOP_DATASETS)}")
    found: list[FoundDataset] = []
    for info in COOP_DATASETS.values():
        if only and info.name not in only:
            continue
        folder = data_root / info.name
        marker = folder / info.split_file
        if not marker.is_file():
            if only:
                raise ReproduceError(f"{info.name}: {str(marker)!r} not found (see docs/REPRODUCE.md)")
            continue
        image_root = folder / info.image_dir if info.image_dir else folder
        split_json = marker
        if info.layout != "json":
            split_json = splits_dir / f"{info.name}.json"
            if not split_json.is_file():  # listing ImageNet takes minutes: once
                data = fgvc_split(folder) if info.layout == "fgvc" else imagenet_split(folder)
                splits_dir.mkdir(parents=True, exist_ok=True)
                tmp = split_json.with_suffix(".tmp")
                tmp.write_text(json.dumps(data))
                tmp.replace(split_json)
        found.append(FoundDataset(info, split_json.resolve(), image_root.resolve()))
    if not found:
        raise ReproduceError(
            f"no dataset in CoOp's layout under {str(data_root)!r} "
            f"(looked for {', '.join(f'{d.name}/{d.split_file}' for d in COOP_DATASETS.values())})"
        )
    return found
