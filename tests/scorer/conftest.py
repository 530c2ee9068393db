"""Fixtures of the scorer tests: a tiny random CLIP, small image trees, and the paper's way."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # two shared cores: keep each test process to one


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny CLIP (causal text tower, argmax pooling) as a local-dir folder."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def bidirectional_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny CLIP but with a bidirectional (non-causal) text tower: truncation is not exact."""
    path = make_tiny_model_dir(tmp_path_factory.mktemp("bidir_model"), seed=1)
    cfg = json.loads((path / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["no_causal_mask"] = True
    (path / "open_clip_config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder tree: 5 classes, train 2 and test 4 images per class."""
    return make_image_folder(tmp_path_factory.mktemp("images"))


TEMPLATES = [
    "a photo of a {}.",
    "{}",
    "a blurry picture of the {}, seen from far away in bad light.",
    "itap of a {}",
    "{}{}{",
    "art of {}s",
    "A {} IN CAPITALS!",
    "a photo of a {}, a type of object. it is very clearly visible in this picture of the {}.",
]


def paper_scores(
    model_dir: Path, image_root: Path, split: str, templates: Sequence[str]
) -> tuple[list[str], list[list[int]]]:
    """The paper's computation, written independently with plain open_clip.

    Per template: fill the slot, tokenize at the full 77-token context, encode_text, L2-normalise,
    argmax of cosine similarity with the L2-normalised image features. Returns the class names
    and, per template, the correct-prediction flags (0/1) per image in class-folder order.
    """
    classes, flags, _ = paper_scores_and_losses(model_dir, image_root, split, templates)
    return classes, flags


def paper_scores_and_losses(
    model_dir: Path, image_root: Path, split: str, templates: Sequence[str]
) -> tuple[list[str], list[list[int]], list[float]]:
    """:func:`paper_scores` plus, per template, CLIP's zero-shot cross-entropy: the mean over
    images of -log softmax(logit_scale * cosine)[true class]."""
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    folders = sorted(p.name for p in (image_root / split).iterdir())
    classes = [f.replace("_", " ") for f in folders]
    pixels, labels = [], []
    for label, folder in enumerate(folders):
        for f in sorted((image_root / split / folder).glob("*.png")):
            pixels.append(preprocess(Image.open(f).convert("RGB")))
            labels.append(label)
    with torch.no_grad():
        img = model.encode_image(torch.stack(pixels))
        img = img / img.norm(dim=-1, keepdim=True)
        flags, losses = [], []
        for template in templates:
            texts = [template.replace("{}", c) for c in classes]
            txt = model.encode_text(tokenizer(texts))
            txt = txt / txt.norm(dim=-1, keepdim=True)
            pred = (img @ txt.T).argmax(dim=-1)
            flags.append([int(p == y) for p, y in zip(pred.tolist(), labels, strict=True)])
            logits = model.logit_scale.exp() * img @ txt.T
            losses.append(float(torch.nn.functional.cross_entropy(logits, torch.tensor(labels))))
    return classes, flags, losses


def paper_ensemble_correct(model_dir: Path, image_root: Path, split: str, templates: Sequence[str]) -> int:
    """CLIP's prompt ensemble, independently: mean of normalised text features per class, renormalised."""
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    folders = sorted(p.name for p in (image_root / split).iterdir())
    correct = 0
    with torch.no_grad():
        weights = []
        for folder in folders:
            name = folder.replace("_", " ")
            t = model.encode_text(tokenizer([tp.replace("{}", name) for tp in templates]))
            t = t / t.norm(dim=-1, keepdim=True)
            mean = t.mean(dim=0)
            weights.append(mean / mean.norm())
        w = torch.stack(weights)
        for label, folder in enumerate(folders):
            for f in sorted((image_root / split / folder).glob("*.png")):
                x = model.encode_image(preprocess(Image.open(f).convert("RGB"))[None])
                x = x / x.norm(dim=-1, keepdim=True)
                correct += int((x @ w.T).argmax().item() == label)
    return correct
