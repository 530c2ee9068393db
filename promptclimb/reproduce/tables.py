"""The tables of the finished cells: ``cells.csv``, ``results.csv``, ``transfer.csv`` and ``results.md``."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from promptclimb.reproduce.catalogue import COOP_DATASETS
from promptclimb.reproduce.profiles import Profile

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

    The diagonal (source = target) is the backbone's own result, for comparison. The others come
    from each search's own transfer scores (its record's ``transfer``), or from the separate
    transfer records of earlier versions.
    """
    records = list(records)
    scored: dict[tuple[str, str, str], dict[int, tuple[float, float]]] = {}
    for r in records:
        if r.get("kind") == "search":
            scored.setdefault((r["backbone"], r["backbone"], r["dataset"]), {})[r["seed"]] = (
                r["found_test"],
                r["ensemble_test"],
            )
            for target, t in r.get("transfer", {}).items():
                scored.setdefault((r["backbone"], target, r["dataset"]), {})[r["seed"]] = (
                    t["found_test"],
                    t["ensemble_test"],
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
    "profile", "shots", "dataset", "seed", "backbone", "model", "search", "best_template",
    "selection_accuracy", "found_test", "ensemble_test", "ensemble_templates", "handwritten_template",
    "handwritten_test", "llm_calls", "prompt_tokens", "completion_tokens", "evaluations", "wall_seconds",
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
