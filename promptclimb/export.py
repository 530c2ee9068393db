"""Exporting a search: JSON of the full resource, and a PNG plot of accuracy per iteration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from promptclimb.api.v1 import coordinator_pb2


def search_to_dict(search: coordinator_pb2.Search) -> dict[str, Any]:
    """The search as plain JSON-able data (proto3 JSON mapping, field names as in the proto)."""
    return MessageToDict(search, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def export_json(search: coordinator_pb2.Search, path: Path) -> Path:
    """Write the search (FULL view gives the whole history) as indented JSON."""
    path.write_text(json.dumps(search_to_dict(search), indent=2, ensure_ascii=False) + "\n")
    return path


def plot_progress(search: coordinator_pb2.Search, path: Path) -> Path:
    """Best and mean selection accuracy of the pool after each iteration, restarts marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    steps = list(range(len(search.iterations)))
    best = [i.best_accuracy * 100 for i in search.iterations]
    mean = [i.mean_accuracy * 100 for i in search.iterations]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, best, marker="o", label="best")
    ax.plot(steps, mean, marker=".", linestyle="--", label="mean of pool")
    for x, i in enumerate(search.iterations):
        if i.restart > 0 and i.iteration == 1:
            ax.axvline(x - 0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(steps, [f"{i.restart}.{i.iteration}" for i in search.iterations], rotation=45, fontsize=7)
    ax.set_xlabel("restart.iteration")
    ax.set_ylabel(f"accuracy on {search.spec.selection_split or 'train'} (%)")
    ax.set_title(search.spec.display_name or f"{search.name} ({search.spec.dataset})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
