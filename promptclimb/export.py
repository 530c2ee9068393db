"""Exporting a search: JSON of the full resource, and a PNG plot of accuracy per iteration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from promptclimb.api.v1 import coordinator_pb2


def message_to_dict(message: Message) -> dict[str, Any]:
    """A message as plain JSON-able data (proto3 JSON mapping, field names as in the proto, fields
    without presence printed even at their default)."""
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def search_to_dict(search: coordinator_pb2.Search) -> dict[str, Any]:
    """The search as plain JSON-able data; a description search's result has ``descriptions``."""
    return message_to_dict(search)


def export_json(search: coordinator_pb2.Search, path: Path) -> Path:
    """Write the search (FULL view gives the whole history) as indented JSON."""
    path.write_text(json.dumps(search_to_dict(search), indent=2, ensure_ascii=False) + "\n")
    return path


def plot_progress(search: coordinator_pb2.Search, path: Path) -> Path:
    """Best and mean selection accuracy of the pool after each iteration, restarts marked; for a
    description search the kept set and each round's rewritten set per refine round."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    steps = list(range(len(search.iterations)))
    best = [i.best_accuracy * 100 for i in search.iterations]
    mean = [i.mean_accuracy * 100 for i in search.iterations]
    described = search.spec.HasField("descriptions")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    # A description search: best = the kept set, mean = the set that round tried (round 0: the first).
    ax.plot(steps, best, marker="o", label="kept descriptions" if described else "best")
    ax.plot(
        steps, mean, marker=".", linestyle="--", label="this round's set" if described else "mean of pool"
    )
    if described:
        ax.set_xticks(steps, [str(i.iteration) for i in search.iterations], fontsize=7)
        ax.set_xlabel("refine round (0 = the first descriptions)")
    else:
        for x, i in enumerate(search.iterations):
            if i.restart > 0 and i.iteration == 1:
                ax.axvline(x - 0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xticks(
            steps, [f"{i.restart}.{i.iteration}" for i in search.iterations], rotation=45, fontsize=7
        )
        ax.set_xlabel("restart.iteration")
    ax.set_ylabel(f"accuracy on {search.spec.selection_split or 'train'} (%)")
    title = search.spec.display_name or f"{search.name} ({search.spec.dataset})"
    ax.set_title(f"{title}: description search" if described else title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
