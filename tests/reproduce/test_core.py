"""The pure core of `reproduce`: discovery in CoOp's layout, the resumable store, the tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from promptclimb.reproduce.catalogue import ReproduceError, discover
from promptclimb.reproduce.cells import Cell, ResultsStore
from promptclimb.reproduce.local_services import model_slug
from promptclimb.reproduce.profiles import PROFILES
from promptclimb.reproduce.tables import results_rows, transfer_rows, write_tables
from services.scorer.datasets import load_coop
from tests.reproduce.conftest import make_coop_dataset


def test_discover_finds_coop_folders_and_skips_absent_ones(tmp_path: Path) -> None:
    make_coop_dataset(
        tmp_path, "oxford_pets", "split_zhou_OxfordPets.json", "images", ["a", "b"], {"train": 1}
    )
    make_coop_dataset(tmp_path, "eurosat", "split_zhou_EuroSAT.json", "2750", ["x", "y"], {"test": 1})
    (tmp_path / "dtd").mkdir()  # a folder without its split file is not a dataset

    found = discover(tmp_path, None, tmp_path / "splits")

    assert [(d.info.name, d.image_root.name) for d in found] == [
        ("oxford_pets", "images"),
        ("eurosat", "2750"),
    ]
    assert found[0].split_json == (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").resolve()


def test_discover_rejects_unknown_or_missing_requested_datasets(tmp_path: Path) -> None:
    make_coop_dataset(tmp_path, "oxford_pets", "split_zhou_OxfordPets.json", "images", ["a"], {"train": 1})
    with pytest.raises(ReproduceError, match="unknown datasets"):
        discover(tmp_path, ["pets"], tmp_path / "splits")
    with pytest.raises(ReproduceError, match=r"split_zhou_DescribableTextures\.json"):
        discover(tmp_path, ["oxford_pets", "dtd"], tmp_path / "splits")
    with pytest.raises(ReproduceError, match="no dataset in CoOp's layout"):
        discover(tmp_path / "oxford_pets", None, tmp_path / "splits")


def test_fgvc_aircraft_variant_files_become_a_split_the_scorer_reads(tmp_path: Path) -> None:
    folder = tmp_path / "fgvc_aircraft"
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("707-320\nA300B4\n")
    (folder / "images_variant_train.txt").write_text("0001 707-320\n0002 A300B4\n0003 A300B4\n")
    (folder / "images_variant_val.txt").write_text("0004 707-320\n")
    (folder / "images_variant_test.txt").write_text("0005 A300B4\n")

    [found] = discover(tmp_path, ["fgvc_aircraft"], tmp_path / "splits")

    split = json.loads(found.split_json.read_text())
    assert split["train"] == [
        ["0001.jpg", 0, "707-320"],
        ["0002.jpg", 1, "A300B4"],
        ["0003.jpg", 1, "A300B4"],
    ]
    assert split["test"] == [["0005.jpg", 1, "A300B4"]]
    assert found.image_root == (folder / "images").resolve()
    one_shot = load_coop("air", found.split_json, found.image_root, shots=1, seed=1)
    assert one_shot.class_names == ["707-320", "A300B4"]
    assert sorted(one_shot.splits["train"].labels) == [0, 1]


def test_imagenet_uses_sorted_folders_for_labels_and_val_as_test(tmp_path: Path) -> None:
    folder = tmp_path / "imagenet"
    for split, wnid, files in (
        ("train", "n02", ["b.JPEG", "a.JPEG"]),
        ("train", "n01", ["c.JPEG"]),
        ("val", "n01", ["v.JPEG"]),
    ):
        (folder / "images" / split / wnid).mkdir(parents=True, exist_ok=True)
        for f in files:
            (folder / "images" / split / wnid / f).write_bytes(b"")
    (folder / "images" / "val" / "n02").mkdir()
    (folder / "classnames.txt").write_text("n01 tench\nn02 great white shark\n")

    [found] = discover(tmp_path, ["imagenet"], tmp_path / "splits")

    split = json.loads(found.split_json.read_text())
    assert split["train"] == [
        ["train/n01/c.JPEG", 0, "tench"],
        ["train/n02/a.JPEG", 1, "great white shark"],
        ["train/n02/b.JPEG", 1, "great white shark"],
    ]
    assert split["test"] == [["val/n01/v.JPEG", 0, "tench"]]
    assert split["val"] == []


def test_store_keeps_finished_cells_and_ignores_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "cells.jsonl"
    store = ResultsStore(path)
    store.add({"key": "a", "kind": "search", "found_test": 0.5})
    with path.open("a") as f:
        f.write('{"key": "b", "kind": "sea')  # killed mid-write
    reopened = ResultsStore(path)
    assert "a" in reopened and "b" not in reopened
    reopened.add({"key": "b", "kind": "search", "found_test": 0.25})
    assert ResultsStore(path).get("b") == {"key": "b", "kind": "search", "found_test": 0.25}


def test_request_ids_are_stable_per_cell_and_differ_between_cells() -> None:
    a = Cell("paper", 1, "oxford_pets", 1, "RN50")
    assert a.request_id() == Cell("paper", 1, "oxford_pets", 1, "RN50").request_id()
    assert a.request_id() != Cell("paper", 1, "oxford_pets", 2, "RN50").request_id()
    assert a.request_id() != a.request_id(1)
    # The models are part of the key: a coordinator answers a known key with its search, whatever the spec.
    assert a.request_id(0, ["rn50", "vit-b-16"]) == a.request_id(0, ["rn50", "vit-b-16"])
    assert a.request_id(0, ["rn50", "vit-b-16"]) != a.request_id(0, ["rn50"]) != a.request_id()
    assert a.dataset_id == "oxford_pets-1shot-seed1"


def _search(
    dataset: str, seed: int, backbone: str, found: float, hand: float, ens: float, calls: int
) -> dict:
    return {
        "key": f"{dataset}/{seed}/{backbone}", "kind": "search", "profile": "paper", "shots": 1,
        "dataset": dataset, "seed": seed, "backbone": backbone, "search": f"searches/{dataset}{seed}",
        "best_template": "a {}.", "ensemble_templates": ["a {}.", "the {}."], "found_test": found,
        "handwritten_test": hand, "ensemble_test": ens, "llm_calls": calls, "prompt_tokens": 10 * calls,
        "completion_tokens": calls, "selection_accuracy": 1.0, "evaluations": 5, "wall_seconds": 1.0,
    }  # fmt: skip


RECORDS = [
    {**_search("oxford_pets", 1, "RN50", 0.80, 0.70, 0.82, 10),
     "transfer": {"ViT-B-16": {"model": "vit-b-16", "found_test": 0.6, "ensemble_test": 0.7,
                               "plain_template": "a {}.", "plain_test": 0.5}}},
    _search("oxford_pets", 2, "RN50", 0.90, 0.70, 0.84, 10),
    _search("eurosat", 1, "RN50", 0.40, 0.30, 0.42, 20),
    _search("eurosat", 2, "RN50", 0.50, 0.30, 0.44, 20),
    # A transfer record of an earlier version (scored apart from the search) still counts.
    {"key": "t2", "kind": "transfer", "dataset": "oxford_pets", "seed": 2, "source": "RN50",
     "target": "ViT-B-16", "found_test": 0.8, "ensemble_test": 0.9},
]  # fmt: skip


def test_results_rows_give_mean_std_over_seeds_and_the_average_over_datasets() -> None:
    rows = {r["dataset"]: r for r in results_rows(RECORDS, ["oxford_pets", "eurosat"], ["RN50"])}
    pets, avg = rows["oxford_pets"], rows["Average"]
    assert pets["found_mean"] == pytest.approx(0.85) and pets["found_std"] == pytest.approx(0.05)
    assert pets["handwritten_mean"] == pytest.approx(0.70) and pets["handwritten_std"] == pytest.approx(0.0)
    assert pets["ensemble_mean"] == pytest.approx(0.83)
    assert pets["llm_calls"] == 10 and pets["tokens"] == 110
    # Per seed the average over datasets is 0.60 and 0.70: mean 0.65, std 0.05.
    assert avg["found_mean"] == pytest.approx(0.65) and avg["found_std"] == pytest.approx(0.05)
    assert avg["llm_calls"] == 15


def test_transfer_rows_hold_the_diagonal_and_the_other_backbone() -> None:
    rows = transfer_rows(RECORDS, ["oxford_pets", "eurosat"], ["RN50", "ViT-B-16"])
    got = {(r["source"], r["target"], r["dataset"]): r for r in rows}
    assert got[("RN50", "RN50", "oxford_pets")]["found_mean"] == pytest.approx(0.85)
    assert got[("RN50", "ViT-B-16", "oxford_pets")]["found_mean"] == pytest.approx(0.7)
    assert got[("RN50", "ViT-B-16", "oxford_pets")]["ensemble_std"] == pytest.approx(0.1)
    assert got[("RN50", "ViT-B-16", "oxford_pets")]["seeds"] == 2
    assert ("RN50", "ViT-B-16", "eurosat") not in got  # no transfer recorded for it
    assert ("ViT-B-16", "RN50", "oxford_pets") not in got  # nothing was found with ViT-B-16


def test_write_tables_writes_csv_and_markdown(tmp_path: Path) -> None:
    write_tables(
        tmp_path, RECORDS, ["oxford_pets", "eurosat"], ["RN50", "ViT-B-16"], PROFILES["released"], 1, [1, 2]
    )
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["dataset"] for r in rows] == ["oxford_pets", "eurosat", "Average"]
    assert float(rows[0]["found_mean"]) == pytest.approx(0.85)
    md = (tmp_path / "results.md").read_text()
    assert "| OxfordPets | 2 | 70.0 ± 0.0 | 85.0 ± 5.0 | 83.0 ± 1.0 | 10 | 110 |" in md
    assert "## Transfer across backbones" in md
    with (tmp_path / "cells.csv").open() as f:
        cells = list(csv.DictReader(f))
    assert [(c["dataset"], c["seed"]) for c in cells] == [
        ("oxford_pets", "1"),
        ("oxford_pets", "2"),
        ("eurosat", "1"),
        ("eurosat", "2"),
    ]
    assert cells[0]["ensemble_templates"] == "a {}.|the {}."


def test_started_scorers_serve_each_backbone_under_a_model_id_the_coordinator_accepts() -> None:
    assert [model_slug(b) for b in ("RN50", "ViT-B/16", "ViT-L-14@336px")] == [
        "rn50",
        "vit-b-16",
        "vit-l-14-336px",
    ]
    with pytest.raises(ReproduceError, match="gives no valid model id"):
        model_slug("//")
