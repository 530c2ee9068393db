"""Scorer settings: environment prefix ``PROMPTCLIMB_SCORER_``, flags override."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from promptclimb.common.settings import ServerSettings

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


def default_model_id(model: str, pretrained: str | None) -> str:
    """A model id from the open_clip model name and pretrained tag: ``RN50`` + ``openai`` -> ``rn50-openai``.

    A ``local-dir:``/``hf-hub:`` model contributes its last path part, a weights file its stem;
    lower case, every other character than ``[a-z0-9._-]`` becomes ``-``, at most 63 characters.
    """
    name = model.split(":", 1)[1] if model.startswith(("local-dir:", "hf-hub:")) else model
    parts = [Path(name.rstrip("/")).name or name]
    if pretrained:
        parts.append(Path(pretrained).stem if "/" in pretrained or "." in pretrained else pretrained)
    text = re.sub(r"[^a-z0-9._-]+", "-", "-".join(parts).lower()).strip("-._")
    return (text or "model")[:63].rstrip("-._") or "model"


class ScorerSettings(ServerSettings):
    """How the scorer loads its CLIP model, which datasets it serves and how it batches."""

    model_config = SettingsConfigDict(env_prefix="PROMPTCLIMB_SCORER_", extra="ignore")

    model: str = Field("RN50", description="open_clip model name, local-dir:PATH or hf-hub:ORG/REPO")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or a weights file")
    model_id: str | None = Field(
        None,
        pattern=MODEL_ID_PATTERN,
        description="stable id of the served model (GetModelInfo, the `model` metric label, the "
        "coordinator's --scorer MODEL_ID=TARGET); unset = derived from model and pretrained, "
        "e.g. rn50-openai",
    )
    device: str = Field("cpu", description="torch device, e.g. cpu, cuda, cuda:1")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="model precision")
    cache_dir: Path | None = Field(None, description="folder for cached image features; unset = no cache")
    datasets: list[str] = Field(
        default_factory=list,
        description="register a dataset (repeatable): ID=PATH (ImageFolder), ID=FILE.npz, "
        "ID=coop:split_json=FILE,root=DIR,shots=N,seed=S",
        json_schema_extra={"cli_flag": "--dataset"},
    )
    max_templates_per_request: int = Field(256, gt=0, description="most templates in one request")
    max_queue_templates: int = Field(4096, gt=0, description="templates waiting before RESOURCE_EXHAUSTED")
    max_batch_templates: int = Field(512, gt=0, description="most templates coalesced into one text pass")
    batch_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for concurrent requests")
    batch_wait_alone: bool = Field(
        False, description="also wait when a lone request meets an idle scorer (false: it runs at once)"
    )
    text_batch_size: int | None = Field(
        None, gt=0, description="texts per text-tower forward; unset = 512 on CPU, 2048 on an accelerator"
    )
    image_batch_size: int = Field(64, gt=0, description="images per image-tower forward")
    feature_chunk_images: int = Field(
        1024,
        gt=0,
        description="images per feature-cache chunk written while a split is encoded "
        "(a restarted scorer resumes from the last chunk written)",
    )
    text_cache_size: int = Field(100_000, ge=0, description="text embeddings kept in the LRU cache")
    text_truncation: Literal["auto", "off"] = Field(
        "auto", description="auto = cut padding after end-of-text where exact; off = full context"
    )
    prefix_sharing: Literal["on", "off"] = Field(
        "on",
        description="on = encode each template's common token prefix once (KV cache) where exact",
    )
    threads: int | None = Field(None, gt=0, description="torch CPU threads; unset = torch default")
    register_roots: list[Path] = Field(
        default_factory=list,
        description="folders RegisterDataset may read (JSON list); empty = any path the process can read",
    )
    max_datasets: int = Field(64, gt=0, description="most datasets registered at once")

    def resolved_model_id(self) -> str:
        """``model_id``, else :func:`default_model_id` of ``model`` and ``pretrained``."""
        return self.model_id or default_model_id(self.model, self.pretrained)
