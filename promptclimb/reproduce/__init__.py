"""``promptclimb reproduce``: the paper's table (datasets × seeds × backbones) in one command.

For every dataset found in CoOp's layout under ``--data-root`` and every (seed, backbone), the
command registers the few-shot set with the backbone's scorer, runs one search through the
backbone's coordinator with a named *profile*, and records a finished cell in ``cells.jsonl``
in ``--out``. From the finished cells it writes ``results.csv``, ``transfer.csv``, ``cells.csv``
and ``results.md``:

- per dataset and averaged, the test accuracy of our hand-written template, of the found prompt
  and of the top-k ensemble of found prompts, each as mean ± std over seeds, plus the LLM calls
  and tokens one search spent;
- the transfer table: the prompts found with each backbone scored on every other backbone.

Resumable: a cell is appended (and fsynced) only once finished, so a killed run loses no
finished cell and a rerun skips them. Searches are started with a request id derived from the
cell, so a search left running by a killed run is picked up again, not started twice.

Layout: pure planning and tables first (unit-tested directly), then the gRPC driver, then the
optional local services and the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from promptclimb.local import start_service, stop_services

# ---- CoOp's datasets ---------------------------------------------------------------------------


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


# ---- profiles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """Search settings of one protocol (fields as in ``promptclimb.client.make_spec``)."""

    name: str
    description: str
    strategy: str
    best_k: int
    worst_k: int
    templates_per_iteration: int
    iterations: int
    restarts: int
    temperature: float
    pool: str
    ensemble_k: int = 3

    def spec_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``make_spec`` for this profile."""
        return {
            "strategy": self.strategy,
            "best_k": self.best_k,
            "worst_k": self.worst_k,
            "templates_per_iteration": self.templates_per_iteration,
            "iterations": self.iterations,
            "restarts": self.restarts,
            "temperature": self.temperature,
            "pool": self.pool,
            "ensemble_k": self.ensemble_k,
        }


PROFILES: dict[str, Profile] = {
    # Best guess at the paper's protocol: the paper describes a conversation with numeric
    # feedback and positive + negative examples; reviewers report 15 best / 15 worst. The number
    # of restarts, iterations and prompts per call are not all public: these are our choice.
    "paper": Profile(
        "paper",
        "conversation with numeric feedback, 15 best / 15 worst, 5 per call, 5 restarts x 10 iterations",
        strategy="conversation",
        best_k=15,
        worst_k=15,
        templates_per_iteration=5,
        iterations=10,
        restarts=5,
        temperature=1.0,
        pool="clip80",
    ),
    # The released code: single turn, top-3 / bottom-3, one template per call, 10 iterations,
    # temperature 1, starting from 80 templates.
    "released": Profile(
        "released",
        "single-turn contrast, 3 best / 3 worst, 1 per call, 10 iterations, temperature 1",
        strategy="contrast",
        best_k=3,
        worst_k=3,
        templates_per_iteration=1,
        iterations=10,
        restarts=1,
        temperature=1.0,
        pool="clip80",
    ),
}


# ---- cells and the results store ---------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One search: a (dataset, seed, backbone) under a profile and a number of shots."""

    profile: str
    shots: int
    dataset: str
    seed: int
    backbone: str

    @property
    def key(self) -> str:
        """Stable identity of the cell in the store."""
        return f"search/{self.profile}/{self.shots}shot/{self.dataset}/seed{self.seed}/{self.backbone}"

    @property
    def dataset_id(self) -> str:
        """The scorer dataset id of this few-shot sample."""
        return dataset_id(self.dataset, self.shots, self.seed)

    def request_id(self, attempt: int = 0) -> str:
        """Idempotency key of the search: a rerun finds the search a killed run started."""
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:16]
        return f"reproduce-{digest}" + (f"-{attempt}" if attempt else "")


def dataset_id(name: str, shots: int, seed: int) -> str:
    """Scorer dataset id of one few-shot sample, e.g. ``oxford_pets-1shot-seed2``."""
    return f"{name}-{shots}shot-seed{seed}"


def transfer_key(cell: Cell, target: str) -> str:
    """Store key of the found prompts of ``cell`` scored on backbone ``target``."""
    return (
        f"transfer/{cell.profile}/{cell.shots}shot/{cell.dataset}/seed{cell.seed}/{cell.backbone}->{target}"
    )


class ResultsStore:
    """Finished cells as JSON lines; an append is flushed and fsynced before it counts.

    A line cut short by a kill (the only partial write an append can leave) is ignored on read.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a killed run
                if isinstance(record, dict) and "key" in record:
                    self.records[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of ``key``, if finished."""
        return self.records.get(key)

    def add(self, record: dict[str, Any]) -> None:
        """Append a finished record durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        with self.path.open("a", encoding="utf-8") as f:
            if data and not data.endswith(b"\n"):
                f.write("\n")  # end a torn line so this record stands on its own
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record["key"]] = record


# ---- tables ------------------------------------------------------------------------------------

METRICS = (("handwritten", "Hand-written"), ("found", "Found prompt"), ("ensemble", "Top-k ensemble"))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std (as CoOp's result parser, ``np.std``); (nan, nan) when empty."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.pstdev(values)


def _by_seed_average(per_dataset: dict[str, dict[int, float]]) -> list[float]:
    """Per seed, the average over datasets; only seeds every dataset has."""
    if not per_dataset:
        return []
    seeds = set.intersection(*(set(v) for v in per_dataset.values()))
    return [statistics.fmean(v[s] for v in per_dataset.values()) for s in sorted(seeds)]


def results_rows(
    records: Iterable[dict[str, Any]], datasets: Sequence[str], backbones: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows of ``results.csv``: per backbone, each dataset then ``Average``.

    The average row is mean ± std over seeds of the per-seed average over datasets.
    """
    search = [r for r in records if r.get("kind") == "search"]
    rows: list[dict[str, Any]] = []
    for backbone in backbones:
        values: dict[str, dict[str, dict[int, float]]] = {m: {} for m, _ in METRICS}
        for name in datasets:
            cells = sorted(
                (r for r in search if r["backbone"] == backbone and r["dataset"] == name),
                key=lambda r: r["seed"],
            )
            if not cells:
                continue
            row: dict[str, Any] = {"backbone": backbone, "dataset": name, "seeds": len(cells)}
            for metric, _ in METRICS:
                per_seed = {r["seed"]: r[f"{metric}_test"] for r in cells}
                values[metric][name] = per_seed
                row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std(list(per_seed.values()))
            row["llm_calls"] = statistics.fmean(r["llm_calls"] for r in cells)
            row["tokens"] = statistics.fmean(r["prompt_tokens"] + r["completion_tokens"] for r in cells)
            rows.append(row)
        done = [r for r in rows if r["backbone"] == backbone]
        if not done:
            continue
        avg: dict[str, Any] = {
            "backbone": backbone,
            "dataset": "Average",
            "seeds": min(r["seeds"] for r in done),
        }
        for metric, _ in METRICS:
            avg[f"{metric}_mean"], avg[f"{metric}_std"] = mean_std(_by_seed_average(values[metric]))
        avg["llm_calls"] = statistics.fmean(r["llm_calls"] for r in done)
        avg["tokens"] = statistics.fmean(r["tokens"] for r in done)
        rows.append(avg)
    return rows


def transfer_rows(
    records: Iterable[dict[str, Any]], datasets: Sequence[str], backbones: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows of ``transfer.csv``: prompts found on ``source`` scored on ``target``, per dataset and averaged.

    The diagonal (source = target) is the backbone's own result, for comparison.
    """
    records = list(records)
    scored: dict[tuple[str, str, str], dict[int, tuple[float, float]]] = {}
    for r in records:
        if r.get("kind") == "search":
            scored.setdefault((r["backbone"], r["backbone"], r["dataset"]), {})[r["seed"]] = (
                r["found_test"],
                r["ensemble_test"],
            )
        elif r.get("kind") == "transfer":
            scored.setdefault((r["source"], r["target"], r["dataset"]), {})[r["seed"]] = (
                r["found_test"],
                r["ensemble_test"],
            )
    rows: list[dict[str, Any]] = []
    for source in backbones:
        for target in backbones:
            found: dict[str, dict[int, float]] = {}
            ensemble: dict[str, dict[int, float]] = {}
            for name in datasets:
                per_seed = scored.get((source, target, name))
                if not per_seed:
                    continue
                found[name] = {s: v[0] for s, v in per_seed.items()}
                ensemble[name] = {s: v[1] for s, v in per_seed.items()}
                fm, fs = mean_std(list(found[name].values()))
                em, es = mean_std(list(ensemble[name].values()))
                rows.append(
                    {
                        "source": source,
                        "target": target,
                        "dataset": name,
                        "seeds": len(per_seed),
                        "found_mean": fm,
                        "found_std": fs,
                        "ensemble_mean": em,
                        "ensemble_std": es,
                    }
                )
            if found:
                fm, fs = mean_std(_by_seed_average(found))
                em, es = mean_std(_by_seed_average(ensemble))
                rows.append(
                    {
                        "source": source,
                        "target": target,
                        "dataset": "Average",
                        "seeds": min(len(v) for v in found.values()),
                        "found_mean": fm,
                        "found_std": fs,
                        "ensemble_mean": em,
                        "ensemble_std": es,
                    }
                )
    return rows


CELL_COLUMNS = (
    "profile", "shots", "dataset", "seed", "backbone", "search", "best_template", "selection_accuracy",
    "found_test", "ensemble_test", "ensemble_templates", "handwritten_template", "handwritten_test",
    "llm_calls", "prompt_tokens", "completion_tokens", "evaluations", "wall_seconds",
)  # fmt: skip


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("|".join(v) if isinstance(v, list) else v) for k, v in row.items()})
    tmp.replace(path)  # a reader never sees half a table


def _pct(mean: float, std: float) -> str:
    if mean != mean:  # nan: no finished cell
        return "–"
    return f"{mean * 100:.1f} ± {std * 100:.1f}"


def write_tables(
    out: Path,
    records: Sequence[dict[str, Any]],
    datasets: Sequence[str],
    backbones: Sequence[str],
    profile: Profile,
    shots: int,
    seeds: Sequence[int],
) -> None:
    """Write ``cells.csv``, ``results.csv``, ``transfer.csv`` and ``results.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    cells = sorted(
        (r for r in records if r.get("kind") == "search"),
        key=lambda r: (backbones.index(r["backbone"]), datasets.index(r["dataset"]), r["seed"]),
    )
    _write_csv(out / "cells.csv", cells, CELL_COLUMNS)
    rows = results_rows(records, datasets, backbones)
    result_columns = ["backbone", "dataset", "seeds"]
    result_columns += [f"{m}_{s}" for m, _ in METRICS for s in ("mean", "std")] + ["llm_calls", "tokens"]
    _write_csv(out / "results.csv", rows, result_columns)
    transfer = transfer_rows(records, datasets, backbones)
    transfer_columns = [
        "source",
        "target",
        "dataset",
        "seeds",
        "found_mean",
        "found_std",
        "ensemble_mean",
        "ensemble_std",
    ]
    _write_csv(out / "transfer.csv", transfer, transfer_columns)

    titles = {name: COOP_DATASETS[name].title if name in COOP_DATASETS else name for name in datasets}
    titles["Average"] = "**Average**"
    lines = [
        f"# Results: profile `{profile.name}`, {shots}-shot, seeds {', '.join(map(str, seeds))}",
        "",
        f"Profile: {profile.description}. Test accuracy (%), mean ± std over seeds.",
        "",
    ]
    for backbone in backbones:
        lines += [f"## {backbone}", ""]
        lines += [
            "| Dataset | Seeds | Hand-written | Found prompt | Top-k ensemble "
            "| LLM calls / search | Tokens / search |"
        ]
        lines += ["|---|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["backbone"] == backbone):
            lines.append(
                f"| {titles.get(r['dataset'], r['dataset'])} | {r['seeds']} | "
                + " | ".join(_pct(r[f"{m}_mean"], r[f"{m}_std"]) for m, _ in METRICS)
                + f" | {r['llm_calls']:.0f} | {r['tokens']:.0f} |"
            )
        lines.append("")
    if len(backbones) > 1:
        lines += [
            "## Transfer across backbones",
            "",
            "Found prompt of the row's backbone, scored on the column's backbone (average over datasets;"
            " the diagonal is each backbone's own result). Per dataset: `transfer.csv`.",
            "",
            "| Found with \\ scored on | " + " | ".join(backbones) + " |",
            "|---|" + "---:|" * len(backbones),
        ]
        avg = {(r["source"], r["target"]): r for r in transfer if r["dataset"] == "Average"}
        for source in backbones:
            cells_md = []
            for target in backbones:
                t = avg.get((source, target))
                cells_md.append(_pct(t["found_mean"], t["found_std"]) if t else "–")
            lines.append(f"| {source} | " + " | ".join(cells_md) + " |")
        lines.append("")
    tmp = out / "results.md.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(out / "results.md")


# ---- running: scorer registration, searches, transfer ------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """The services of one backbone: its scorer and the coordinator searching with it."""

    scorer: str
    coordinator: str


@dataclass
class Plan:
    """What one ``reproduce`` run covers."""

    datasets: list[FoundDataset]
    backbones: list[str]
    shots: int
    seeds: list[int]
    profile: Profile
    overrides: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Every search cell, dataset-major so a dataset's features are computed once per run."""
        return [
            Cell(self.profile.name, self.shots, d.info.name, seed, backbone)
            for d in self.datasets
            for seed in self.seeds
            for backbone in self.backbones
        ]


class RunFailed(RuntimeError):
    """A search ended without success; its cell stays open for the next run."""


def _log(stream: TextIO, message: str) -> None:
    print(message, file=stream, flush=True)


async def run_plan(
    plan: Plan,
    endpoints: dict[str, Endpoints],
    store: ResultsStore,
    *,
    log: TextIO = sys.stderr,
    register_timeout: float = 24 * 3600.0,
) -> list[str]:
    """Run every unfinished cell of ``plan``; returns the keys of cells that failed.

    Cells run one after another; scale comes from the coordinator's scorer fan-out.
    """
    import grpc

    from promptclimb.api.v1 import scorer_pb2, scorer_pb2_grpc
    from promptclimb.client import CoordinatorClient
    from promptclimb.common.channels import open_channel

    channels = {b: open_channel(e.scorer) for b, e in endpoints.items()}
    scorers = {b: scorer_pb2_grpc.ScorerServiceStub(c) for b, c in channels.items()}
    coordinators = {b: CoordinatorClient(e.coordinator, timeout=60) for b, e in endpoints.items()}
    registered: set[tuple[str, str]] = set()
    by_name = {d.info.name: d for d in plan.datasets}
    failed: list[str] = []

    async def ensure_registered(backbone: str, cell: Cell) -> None:
        if (backbone, cell.dataset_id) in registered:
            return
        d = by_name[cell.dataset]
        request = scorer_pb2.RegisterDatasetRequest(
            id=cell.dataset_id,
            coop=scorer_pb2.CoopSource(
                split_json=str(d.split_json), image_root=str(d.image_root), shots=cell.shots, seed=cell.seed
            ),
        )
        t0 = time.monotonic()
        reply = await scorers[backbone].RegisterDataset(request, timeout=register_timeout)
        sizes = ", ".join(f"{s.name} {s.num_images}" for s in reply.dataset.splits)
        _log(log, f"registered {cell.dataset_id} on {backbone} ({sizes}; {time.monotonic() - t0:.1f} s)")
        registered.add((backbone, cell.dataset_id))

    async def score_one(backbone: str, cell: Cell, template: str) -> float:
        """Test accuracy of one template with ``backbone``."""
        await ensure_registered(backbone, cell)
        reply = await scorers[backbone].EvaluatePrompts(
            scorer_pb2.EvaluatePromptsRequest(dataset=cell.dataset_id, split="test", templates=[template]),
            timeout=3600,
        )
        if reply.scores[0].error.code:
            raise RunFailed(f"{template!r} rejected by {backbone}: {reply.scores[0].error.message}")
        return reply.scores[0].accuracy

    async def score_ensemble(backbone: str, cell: Cell, templates: Sequence[str]) -> float:
        """Test accuracy of the ensemble of ``templates`` with ``backbone``."""
        await ensure_registered(backbone, cell)
        reply = await scorers[backbone].EvaluateEnsemble(
            scorer_pb2.EvaluateEnsembleRequest(
                dataset=cell.dataset_id, split="test", templates=list(templates)
            ),
            timeout=3600,
        )
        return reply.score.accuracy

    async def search(cell: Cell) -> Any:
        """Start (or find again, by request id) the cell's search and wait for its end."""
        from promptclimb.api.v1 import coordinator_pb2 as pb
        from promptclimb.client import TERMINAL, make_spec

        info = COOP_DATASETS[cell.dataset]
        kwargs = {**plan.profile.spec_kwargs(), **plan.overrides}
        spec = make_spec(
            cell.dataset_id,
            selection_split="train",
            evaluation_split="test",
            seed=cell.seed,
            task_description=info.task,
            display_name=f"{info.title} {cell.shots}-shot seed {cell.seed} {cell.backbone} "
            f"({plan.profile.name})",
            **kwargs,
        )
        client = coordinators[cell.backbone]
        for attempt in range(3):  # a failed search under an id stays failed: next id
            started = await client.start(spec, request_id=cell.request_id(attempt))
            for _ in range(60):  # the watch stream may break while a coordinator restarts
                try:
                    final = await client.wait(started.name)
                    break
                except grpc.aio.AioRpcError as err:
                    if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                    await asyncio.sleep(2)
            else:
                raise RunFailed(f"{cell.key}: coordinator unreachable")
            if final.state == pb.SEARCH_STATE_SUCCEEDED:
                return final
            assert final.state in TERMINAL
            _log(
                log,
                f"search {final.name} of {cell.key} ended "
                f"{pb.SearchState.Name(final.state)}: {final.end_reason}",
            )
        raise RunFailed(f"{cell.key}: search failed 3 times")

    try:
        cells = plan.cells()
        for cell in cells:
            if cell.key in store:
                _log(log, f"skip {cell.key} (finished)")
                continue
            _log(log, f"run {cell.key}")
            try:
                for backbone in plan.backbones:  # every scorer scores this sample (transfer too)
                    await ensure_registered(backbone, cell)
                final = await search(cell)
                template = COOP_DATASETS[cell.dataset].template
                handwritten = await score_one(cell.backbone, cell, template)
            except (RunFailed, grpc.aio.AioRpcError) as err:
                detail = (
                    f"{err.code().name}: {err.details()}"
                    if isinstance(err, grpc.aio.AioRpcError)
                    else str(err)
                )
                _log(log, f"FAILED {cell.key}: {detail}")
                failed.append(cell.key)
                continue
            u = final.usage
            store.add(
                {
                    "key": cell.key,
                    "kind": "search",
                    **asdict(cell),
                    "search": final.name,
                    "best_template": final.result.best.template,
                    "selection_accuracy": final.result.best.accuracy,
                    "found_test": final.result.best_evaluation_accuracy,
                    "ensemble_templates": list(final.result.ensemble_templates),
                    "ensemble_test": final.result.ensemble_evaluation_accuracy,
                    "handwritten_template": template,
                    "handwritten_test": handwritten,
                    "llm_calls": u.llm_calls,
                    "prompt_tokens": u.prompt_tokens,
                    "completion_tokens": u.completion_tokens,
                    "evaluations": u.evaluations,
                    "wall_seconds": final.wall_seconds,
                }
            )
            _log(
                log,
                f"done {cell.key}: found {final.result.best_evaluation_accuracy:.4f} "
                f"ensemble {final.result.ensemble_evaluation_accuracy:.4f} hand-written {handwritten:.4f} "
                f"({u.llm_calls} LLM calls)",
            )
        # Transfer: the found prompts of each finished cell scored on every other backbone.
        for cell in cells:
            record = store.get(cell.key)
            if record is None:
                continue
            for target in plan.backbones:
                key = transfer_key(cell, target)
                if target == cell.backbone or key in store:
                    continue
                try:
                    found = await score_one(target, cell, record["best_template"])
                    ensemble = await score_ensemble(
                        target, cell, record["ensemble_templates"] or [record["best_template"]]
                    )
                except (RunFailed, grpc.aio.AioRpcError) as err:
                    _log(log, f"FAILED {key}: {err}")
                    failed.append(key)
                    continue
                store.add(
                    {"key": key, "kind": "transfer", "profile": cell.profile, "shots": cell.shots,
                     "dataset": cell.dataset, "seed": cell.seed, "source": cell.backbone, "target": target,
                     "template": record["best_template"], "found_test": found, "ensemble_test": ensemble}
                )  # fmt: skip
                _log(log, f"done {key}: found {found:.4f} ensemble {ensemble:.4f}")
    finally:
        for client in coordinators.values():
            await client.close()
        for channel in channels.values():
            await channel.close()
    return failed


def plan_records(plan: Plan, store: ResultsStore) -> list[dict[str, Any]]:
    """The finished records that belong to ``plan`` (the store may hold other runs' cells)."""
    out = []
    for cell in plan.cells():
        record = store.get(cell.key)
        if record is not None:
            out.append(record)
        for target in plan.backbones:
            t = store.get(transfer_key(cell, target))
            if t is not None:
                out.append(t)
    return out


# ---- local services (--start-services) ---------------------------------------------------------


def parse_model_map(values: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """``NAME=MODEL[@PRETRAINED]`` or ``NAME=local-dir:PATH`` → {NAME: (model, pretrained)}."""
    out: dict[str, tuple[str, str | None]] = {}
    for value in values:
        name, sep, model = value.partition("=")
        if not sep or not name or not model:
            raise ReproduceError(f"--model-map {value!r} is not BACKBONE=MODEL[@PRETRAINED]")
        if model.startswith("local-dir:"):
            out[name] = (model, None)
        else:
            m, _, pretrained = model.partition("@")
            out[name] = (m, pretrained or None)
    return out


def model_of(backbone: str, model_map: dict[str, tuple[str, str | None]]) -> tuple[str, str | None]:
    """The open_clip model and pretrained tag a backbone name stands for (default: NAME with ``openai``)."""
    return model_map.get(backbone, (backbone, "openai"))


def _launch(name: str, argv: list[str], timeout: float, log_path: Path) -> tuple[subprocess.Popen[str], int]:
    """Start ``promptclimb serve NAME …`` logging to ``log_path``; wait until it serves: (proc, port)."""
    with log_path.open("a") as log:
        try:
            return start_service(name, argv, timeout, log)
        except RuntimeError as err:
            raise ReproduceError(f"{err}; see {log_path}") from err


def start_services(
    args: argparse.Namespace, backbones: Sequence[str], state: Path
) -> tuple[dict[str, Endpoints], list[tuple[str, subprocess.Popen[str]]]]:
    """One optimizer, and per backbone a scorer and a coordinator (its own SQLite store in ``state``)."""
    model_map = parse_model_map(args.model_map)
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    endpoints: dict[str, Endpoints] = {}
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / "services.log"
    try:
        optimizer_argv = ["--llm-base-url", args.llm_base_url, "--llm-model", args.llm_model, "--port", "0"]
        if args.llm_api_key_file:
            optimizer_argv += ["--llm-api-key-file", args.llm_api_key_file]
        proc, optimizer_port = _launch("optimizer", optimizer_argv, args.startup_timeout, log_path)
        procs.append(("optimizer", proc))
        for backbone in backbones:
            folder = state / backbone.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            model, pretrained = model_of(backbone, model_map)
            scorer_argv = ["--model", model, "--port", "0", "--cache-dir", str(state / "features")]
            if pretrained:
                scorer_argv += ["--pretrained", pretrained]
            if args.device:
                scorer_argv += ["--device", args.device]
            proc, scorer_port = _launch("scorer", scorer_argv, args.startup_timeout, log_path)
            procs.append((f"scorer {backbone}", proc))
            coordinator_argv = [
                "--scorer", f"127.0.0.1:{scorer_port}", "--optimizer", f"127.0.0.1:{optimizer_port}",
                "--store", str(folder / "searches.db"), "--port", "0",
                "--lease-seconds", str(args.lease_seconds),
            ]  # fmt: skip
            proc, coordinator_port = _launch("coordinator", coordinator_argv, args.startup_timeout, log_path)
            procs.append((f"coordinator {backbone}", proc))
            endpoints[backbone] = Endpoints(f"127.0.0.1:{scorer_port}", f"127.0.0.1:{coordinator_port}")
    except BaseException:
        stop_services(procs)
        raise
    return endpoints, procs


# ---- CLI ---------------------------------------------------------------------------------------


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _targets(values: Sequence[str], flag: str, backbones: Sequence[str]) -> dict[str, str]:
    """``BACKBONE=TARGET`` values; a single bare TARGET is allowed with one backbone."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, target = value.partition("=")
        if not sep:
            if len(backbones) != 1 or len(values) != 1:
                raise ReproduceError(
                    f"{flag} {value!r}: give BACKBONE=TARGET when several backbones are listed"
                )
            name, target = backbones[0], value
        out[name.strip()] = target.strip()
    missing = [b for b in backbones if b not in out]
    if missing:
        raise ReproduceError(f"{flag}: no target for backbones {missing}")
    return out


def add_parsers(commands: Any, services: Any) -> None:
    """Register the top-level ``reproduce`` command."""
    p = commands.add_parser(
        "reproduce",
        help="the paper's table: every CoOp dataset × seed × backbone, resumable",
        description=(
            "Run one search per (dataset, seed, backbone) over the datasets found in CoOp's layout under "
            "--data-root and write results.csv, transfer.csv, cells.csv and results.md into --out. "
            "Give the services of each backbone (--scorer/--coordinator BACKBONE=TARGET), or let the "
            "command start them (--start-services with --llm-base-url/--llm-model). Rerunning skips "
            "finished cells. See docs/REPRODUCE.md."
        ),
    )
    p.add_argument(
        "--data-root", type=Path, required=True, help="CoOp's DATA folder (one subfolder per dataset)"
    )
    p.add_argument("--backbones", default="RN50", help="comma list of open_clip model names (RN50)")
    p.add_argument("--shots", type=int, default=1, help="training images per class (1)")
    p.add_argument("--seeds", default="1,2,3", help="comma list of CoOp sampling seeds (1,2,3)")
    p.add_argument("--datasets", help=f"comma list, default all found: {','.join(COOP_DATASETS)}")
    p.add_argument("--out", type=Path, required=True, help="results folder (cells.jsonl makes reruns resume)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="paper", help="search protocol (paper)")
    p.add_argument("--iterations", type=int, help="override the profile's iterations")
    p.add_argument("--restarts", type=int, help="override the profile's restarts")
    p.add_argument("--templates-per-iteration", type=int, help="override the profile's templates per call")
    p.add_argument("--pool", help="override the profile's initial pool (basic, clip80)")
    g = p.add_argument_group("running services")
    g.add_argument(
        "--scorer", action="append", default=[], metavar="BACKBONE=TARGET", help="scorer per backbone"
    )
    g.add_argument(
        "--coordinator",
        action="append",
        default=[],
        metavar="BACKBONE=TARGET",
        help="coordinator per backbone (searching with that backbone's scorer)",
    )
    g = p.add_argument_group("local services (--start-services)")
    g.add_argument(
        "--start-services",
        action="store_true",
        help="start an optimizer, and a scorer + coordinator per backbone",
    )
    g.add_argument(
        "--model-map",
        action="append",
        default=[],
        metavar="BACKBONE=MODEL",
        help="model of a backbone: local-dir:PATH or NAME@PRETRAINED (default: BACKBONE@openai)",
    )
    g.add_argument("--device", help="scorer torch device (cuda in production)")
    g.add_argument("--llm-base-url", help="OpenAI-compatible endpoint for the optimizer")
    g.add_argument("--llm-model", help="LLM model name")
    g.add_argument("--llm-api-key-file", help="file holding the LLM API key")
    g.add_argument(
        "--lease-seconds", type=float, default=30.0, help="coordinator lease (resume delay after a kill)"
    )
    g.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for each service")
    p.set_defaults(func=_reproduce)


def _reproduce(args: argparse.Namespace) -> int:
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        backbones = _csv_list(args.backbones)
        seeds = [int(s) for s in _csv_list(args.seeds)]
        if not backbones or not seeds or len(set(backbones)) != len(backbones):
            raise ReproduceError("--backbones and --seeds must list distinct values")
        out: Path = args.out.expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        found = discover(args.data_root, _csv_list(args.datasets) if args.datasets else None, out / "splits")
        overrides = {
            k: getattr(args, k)
            for k in ("iterations", "restarts", "templates_per_iteration", "pool")
            if getattr(args, k) is not None
        }
        plan = Plan(found, backbones, args.shots, seeds, PROFILES[args.profile], overrides)
        store = ResultsStore(out / "cells.jsonl")
        todo = [c for c in plan.cells() if c.key not in store]
        _log(
            sys.stderr,
            f"reproduce: {len(found)} datasets ({', '.join(d.info.name for d in found)}), "
            f"{len(plan.cells())} cells, {len(todo)} to run, profile {plan.profile.name}",
        )
        if args.start_services:
            if args.scorer or args.coordinator:
                raise ReproduceError("--start-services starts its own services: drop --scorer/--coordinator")
            if not (args.llm_base_url and args.llm_model):
                raise ReproduceError("--start-services needs --llm-base-url and --llm-model")
            endpoints, procs = start_services(args, backbones, out / "services")
        else:
            scorers = _targets(args.scorer, "--scorer", backbones)
            coordinators = _targets(args.coordinator, "--coordinator", backbones)
            endpoints = {b: Endpoints(scorers[b], coordinators[b]) for b in backbones}
        failed = asyncio.run(run_plan(plan, endpoints, store))
        names = [d.info.name for d in found]
        write_tables(out, plan_records(plan, store), names, backbones, plan.profile, plan.shots, seeds)
        _log(sys.stderr, f"wrote {out / 'results.md'}")
        if failed:
            _log(sys.stderr, f"{len(failed)} cells failed; rerun the same command to retry them")
            return 1
        return 0
    except ReproduceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        stop_services(procs)
