"""Zero-shot check of the bundled demo model: does it work, and does the wording of a prompt matter?

``python -m promptclimb.demo.check`` prints the test accuracy of the plain template
``a photo of a {}.`` and the best and worst test accuracy over :data:`CHECK_TEMPLATES` (30 varied
templates: plain ones, shop-style ones, a wrong category hint, and many of CLIP's own 80
ImageNet templates, including those that name an image condition). The test images are the demo set's
``test`` split (Fashion-MNIST *test* set, never seen in training), read through the model's own
eval transform, exactly as the scorer reads them.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from promptclimb.demo.data import CLASS_NAMES, TEST_PER_CLASS, TEST_SEED, load_fashion_mnist, pick_per_class

if TYPE_CHECKING:
    import torch

MODEL_DIR = Path(__file__).parent / "model"
PLAIN_TEMPLATE = "a photo of a {}."

CHECK_TEMPLATES: tuple[str, ...] = (
    PLAIN_TEMPLATE,
    "{}",
    "a {}.",
    "a photo of the {}.",
    "a black and white photo of a {}.",
    "a black and white picture of the {}.",
    "a grayscale photo of a {}.",
    "a {} for sale.",
    "a product photo of a {}.",
    "a low resolution photo of a {}.",
    "a bad photo of a {}.",
    "a blurry photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of my {}.",
    "itap of a {}.",
    "a drawing of a {}.",
    "a sketch of the {}.",
    "art of the {}.",
    "a plastic {}.",
    "a toy {}.",
    "a {} in a video game.",
    "an origami {}.",
    "a pixelated photo of the {}.",
    "a photo of a {}, a type of clothing.",
    "a photo of a {}, a type of footwear.",
    "a cropped photo of the {}.",
    "a photo of the large {}.",
    "a dark photo of the {}.",
    "the {} on a black background, free shipping.",
    "there is a {} in the middle of this picture.",
)


@dataclass(frozen=True)
class TemplateAccuracy:
    """Zero-shot accuracy of one template on the check images."""

    template: str
    accuracy: float


def fill(template: str, class_name: str) -> str:
    """Put the class name into the slot literally (never ``str.format`` on template text)."""
    return template.replace("{}", class_name)


def load_demo_model(model_dir: Path = MODEL_DIR) -> tuple[torch.nn.Module, object, object]:
    """``(model, eval_transform, tokenizer)`` of a ``local-dir`` model, in eval mode on CPU."""
    import open_clip

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    return model, preprocess, tokenizer


def test_images(per_class: int = TEST_PER_CLASS) -> tuple[list, list[int]]:
    """PIL images and labels of the demo ``test`` split (or its first ``per_class`` per class)."""
    from PIL import Image

    images, labels = load_fashion_mnist("test")
    idx = pick_per_class(labels, TEST_PER_CLASS, TEST_SEED)
    by_class: dict[int, list[int]] = {}
    for i in idx:
        by_class.setdefault(int(labels[i]), []).append(i)
    chosen = [i for label in sorted(by_class) for i in by_class[label][:per_class]]
    return [Image.fromarray(images[i], mode="L") for i in chosen], [int(labels[i]) for i in chosen]


def zero_shot_accuracies(
    templates: tuple[str, ...] | list[str],
    per_class: int = TEST_PER_CLASS,
    model_dir: Path = MODEL_DIR,
) -> list[TemplateAccuracy]:
    """Zero-shot test accuracy of every template (CLIP's recipe: normalised features, argmax)."""
    import torch

    model, preprocess, tokenizer = load_demo_model(model_dir)
    pil_images, labels = test_images(per_class)
    with torch.no_grad():
        pixels = torch.stack([preprocess(im) for im in pil_images])  # type: ignore[operator]
        image_features = model.encode_image(pixels, normalize=True)  # type: ignore[operator]
        texts = [fill(t, name) for t in templates for name in CLASS_NAMES]
        text_features = model.encode_text(tokenizer(texts), normalize=True)  # type: ignore[operator]
    text_features = text_features.view(len(templates), len(CLASS_NAMES), -1)
    target = torch.tensor(labels)
    results = []
    for template, weights in zip(templates, text_features, strict=True):
        predicted = (image_features @ weights.t()).argmax(1)
        results.append(TemplateAccuracy(template, float((predicted == target).float().mean())))
    return results


def main(argv: list[str] | None = None) -> int:
    """Print the plain template's accuracy and the best/worst over the 30 check templates."""
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--per-class", type=int, default=TEST_PER_CLASS, help="test images per class")
    parser.add_argument("--all", action="store_true", help="print every template's accuracy")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    results = zero_shot_accuracies(CHECK_TEMPLATES, args.per_class, args.model_dir)
    ranked = sorted(results, key=lambda r: r.accuracy, reverse=True)
    if args.all:
        for r in ranked:
            print(f"{r.accuracy:7.2%}  {r.template}")
    plain = results[0].accuracy
    best, worst = ranked[0], ranked[-1]
    n = args.per_class * len(CLASS_NAMES)
    print(f"test images: {n} (Fashion-MNIST test set, {len(CLASS_NAMES)} classes)")
    print(f"plain template {PLAIN_TEMPLATE!r}: {plain:.2%}")
    print(f"best of {len(results)} templates:  {best.accuracy:.2%}  {best.template!r}")
    print(f"worst of {len(results)} templates: {worst.accuracy:.2%}  {worst.template!r}")
    print(f"spread: {100 * (best.accuracy - worst.accuracy):.1f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
