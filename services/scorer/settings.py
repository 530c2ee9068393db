"""Scorer settings: environment prefix ``PROMPTCLIMB_SCORER_``, flags override."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from promptclimb.common.settings import ServerSettings


class ScorerSettings(ServerSettings):
    """How the scorer loads its CLIP model, which datasets it serves and how it batches."""

    model_config = SettingsConfigDict(env_prefix="PROMPTCLIMB_SCORER_", extra="ignore")

    model: str = Field("RN50", description="open_clip model name, local-dir:PATH or hf-hub:ORG/REPO")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or a weights file")
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
