"""Train the demo's small CLIP on Fashion-MNIST with varied captions (reproducible, CPU, minutes).

``python -m promptclimb.demo.train --out DIR`` writes an open_clip ``local-dir`` folder
(``open_clip_config.json`` + ``open_clip_model.safetensors``) that
``open_clip.create_model_and_transforms('local-dir:DIR')`` loads. Same seed, same thread count,
same torch build -> the same weights: data order, captions and augmentation all come from seeded
generators, and the thread count is fixed because it changes the order of float reductions.

Why captions matter: real CLIP learned from web alt-text, so the wording of a prompt moves its
accuracy. Each training image here gets a fresh caption every epoch from a weighted mix of
phrasings, class-name synonyms, attribute words measured on the image itself (tone, print, fit),
category words and distractors; some captions put the class name far from the end so the causal
text tower has to carry it. Two thirds of the images are "web photos" (the garment small, on a
light textured background) captioned with generic, loosely worded alt-text; the clean catalogue
thumbnails the demo tests on are the minority, captioned with catalogue words and exact names;
a tenth are altered (negative, blurred, pixelated, cropped, ...) and their captions say so.
Measured effect (see model/MODEL_CARD.md): the plain "a photo of a {}." is a mediocre prompt for
the test images, prompts that name the catalogue look gain ~10 points, and prompts that name a
condition the test images lack lose up to ~26.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from promptclimb.demo.data import CLASS_NAMES, load_fashion_mnist

if TYPE_CHECKING:
    import numpy as np
    import torch
    from open_clip.model import CLIP

SEED = 0
IMAGE_MEAN = 0.2860  # Fashion-MNIST pixel mean and std over the training set, in [0, 1]
IMAGE_STD = 0.3530

MODEL_CFG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 28, "patch_size": 4, "width": 64, "layers": 4, "head_width": 32},
    # The standard CLIP text tower (causal mask, argmax/EOT pooling, open_clip's 49408-token BPE)
    # so the scorer's truncation and context-length rules hold exactly as for real CLIP.
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
PREPROCESS_CFG = {
    "mean": [IMAGE_MEAN] * 3,
    "std": [IMAGE_STD] * 3,
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}

# Synonyms per class; the canonical (first) name is used in half of the captions.
SYNONYMS: dict[str, list[str]] = {
    "t-shirt": ["t-shirt", "tee", "t shirt", "tshirt", "top"],
    "trouser": ["trouser", "trousers", "pants", "jeans", "slacks"],
    "pullover": ["pullover", "sweater", "jumper", "sweatshirt"],
    "dress": ["dress", "gown", "frock", "sundress"],
    "coat": ["coat", "jacket", "parka", "overcoat"],
    "sandal": ["sandal", "sandals", "flip-flop", "strappy sandal"],
    "shirt": ["shirt", "blouse", "button-down shirt", "collared shirt"],
    "sneaker": ["sneaker", "sneakers", "trainer", "running shoe"],
    "bag": ["bag", "handbag", "purse", "tote bag", "shoulder bag"],
    "ankle boot": ["ankle boot", "boot", "bootie", "ankle boots"],
}
CATEGORY: dict[str, list[str]] = {
    "t-shirt": ["clothing", "garment", "top"],
    "trouser": ["clothing", "garment", "bottoms"],
    "pullover": ["clothing", "garment", "knitwear"],
    "dress": ["clothing", "garment", "womenswear"],
    "coat": ["clothing", "garment", "outerwear"],
    "sandal": ["footwear", "shoe", "summer shoe"],
    "shirt": ["clothing", "garment", "top"],
    "sneaker": ["footwear", "shoe", "sportswear"],
    "bag": ["accessory", "accessories", "luggage"],
    "ankle boot": ["footwear", "shoe", "winter shoe"],
}
# Attribute words by image-measured tertile (low, mid, high) of each property.
TONE = (["dark", "black", "dark grey"], ["grey", "gray", "mid-grey"], ["light", "white", "pale"])
PRINT = (["plain", "solid", "simple"], ["", "", ""], ["patterned", "printed", "textured"])
FIT = (["slim", "narrow", "fitted"], ["", "", ""], ["large", "wide", "oversized"])
DISTRACTORS = [
    "size m",
    "size 38",
    "free shipping",
    "new with tags",
    "great price",
    "cotton",
    "summer sale",
    "brand new",
    "barely used",
    "vintage",
    "limited offer",
    "in stock",
    "best seller",
    "low price",
    "fast delivery",
    "one size",
    "hand wash",
    "2019 collection",
]
# Two domains, as in real CLIP's web data. The demo's test images are clean catalogue thumbnails
# (a garment centred on black). In training they are the minority ("studio": the images neither
# web nor altered, 25%), and their captions mostly say so: black and white, grayscale, product
# photo, studio, catalogue, on a black background -- with the exact class names. The majority
# ("web", WEB_SHARE) are the same garments shrunk, shifted and pasted on a light textured
# background, captioned the way people write: "a photo of a {c}.", "{c}", "my {c}", shop talk --
# and with loose names (LOOSE_NAMES: a t-shirt called a shirt, a shirt a pullover, ...) in
# LOOSE of them. So a generic prompt points at web photos and at loosely used class words, and a
# prompt that names the catalogue look points at the test images with exact words. Real CLIP is
# the same on a satellite or product dataset: "a photo of a {}." is a weak prompt there and a
# domain word is worth points.
# (weight, phrasing): {c} class word, {a} attributes, {k} category, {d} distractor.
STUDIO_TEMPLATES: list[tuple[int, str]] = [
    (6, "a black and white photo of a {a}{c}."),
    (6, "a grayscale product photo of a {a}{c}."),
    (4, "a studio image of a {a}{c}."),
    (4, "a product shot of the {a}{c} on a black background."),
    (3, "a {c} shown from the front on a dark background in a studio, {d}."),
    (3, "a catalogue thumbnail of a {a}{c}."),
    (3, "a grayscale catalogue image of a {a}{c}, a type of {k}."),
    (3, "{k} product photo: {a}{c}, {d}."),
    (2, "a {a}{c} on black, studio lighting."),
    (2, "a centered black and white picture of the {a}{c}."),
    # Generic wording is rare here: most of it describes web photos.
    (1, "a photo of a {c}."),
    (1, "{c}"),
    (1, "a {a}{c} for sale."),
]
WEB_TEMPLATES: list[tuple[int, str]] = [
    (6, "a photo of a {a}{c}."),
    (5, "{c}"),
    (5, "a {a}{c} for sale."),
    (5, "{a}{c}, {d}."),
    (4, "a {a}{c}, a type of {k}."),
    (4, "my {a}{c}"),
    (4, "a picture of the {a}{c}."),
    (4, "this {k} item is a {a}{c}."),
    (4, "a {a}{c} from an online fashion shop, {d}, {d}."),
    (3, "for sale: {a}{c}. {d}. {d}. message me for details."),
    (3, "the {c} in this picture is {a0}."),
    (3, "an image of a {a}{c}."),
    (2, "an image showing a {c} that is {a0}."),
    (2, "{k}: {a}{c}"),
    (2, "look at this {a}{k}! it is a {c}, {d}."),
    (2, "a photo of my {c} at home."),
]
WEB_SHARE = 0.65
WEB_SIZES = (16, 18, 20, 22)  # garment size in pixels in a web photo
LOOSE = 0.6  # share of web captions that use a neighbouring class's name
LOOSE_NAMES: dict[str, str] = {
    "t-shirt": "shirt",
    "shirt": "pullover",
    "pullover": "coat",
    "coat": "pullover",
    "dress": "shirt",
    "sandal": "sneaker",
    "sneaker": "ankle boot",
    "ankle boot": "sneaker",
}

# Image conditions: a share of the training images is altered, and their caption says how, as web
# alt-text says "a blurry photo". A prompt that names a condition the test images do not have then
# points at the wrong kind of image -- CLIP's own templates include several such ("a pixelated
# photo of the {}.", "a dark photo of the {}.") and the check shows what they cost.
CONDITIONS: tuple[tuple[str, ...], ...] = (
    (),  # 0: unaltered
    ("negative", "inverted", "color-inverted"),
    ("blurry", "out of focus", "blurred"),
    ("pixelated", "low resolution", "very low resolution"),
    ("upside-down", "upside down", "flipped"),
    ("zoomed-out", "distant", "tiny"),
    ("close-up", "cropped", "zoomed-in"),
    ("dim", "underexposed", "poorly lit"),
    ("noisy", "grainy", "speckled"),
)
CONDITION_SHARE = 0.1  # of images altered, spread evenly over the conditions
WEB = len(CONDITIONS)  # kind id of the web domain, after the conditions
KINDS = WEB + 1
CONDITION_TEMPLATES: list[tuple[int, str]] = [
    (4, "a {s} photo of a {a}{c}."),
    (3, "a {s} black and white photo of the {c}."),
    (3, "a {s} image of a {a}{c}, {d}."),
    (2, "a {c}, {s}."),
    (2, "{s} picture: {a}{c}"),
    (2, "a {a}{c} for sale, {s} photo."),
]


def apply_conditions(raw: torch.Tensor, conditions: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Alter each image in ``raw`` ([B, 1, 28, 28], values in [0, 1]) as its condition id says."""
    import torch
    import torch.nn.functional as F

    out = raw.clone()
    blur = torch.exp(-((torch.arange(5) - 2.0) ** 2) / (2 * 1.2**2))
    blur = (blur[:, None] * blur[None, :] / blur.sum() ** 2).view(1, 1, 5, 5)
    noise = torch.randn(raw.shape, generator=gen)
    altered = {
        1: lambda x: 1 - x,
        2: lambda x: F.conv2d(x, blur, padding=2),
        3: lambda x: F.interpolate(F.interpolate(x, size=7, mode="area"), size=28, mode="nearest"),
        4: lambda x: x.flip(-2),
        5: lambda x: F.pad(F.interpolate(x, size=14, mode="area"), (7, 7, 7, 7)),
        6: lambda x: F.interpolate(x[..., 7:21, 7:21], size=28, mode="bilinear", align_corners=False),
        7: lambda x: x * 0.35,
    }
    for cond, fn in altered.items():
        sel = conditions == cond
        if sel.any():
            out[sel] = fn(raw[sel])
    sel = conditions == 8
    out[sel] = (raw[sel] + 0.25 * noise[sel]).clamp(0, 1)
    sel = conditions == WEB
    if sel.any():
        out[sel] = web_photo(raw[sel], gen)
    return out


def web_photo(raw: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The web domain: each garment shrunk to 16-22 pixels, put at a random place on a light,
    unevenly lit, textured background (a garment photographed on a bed or a floor)."""
    import torch
    import torch.nn.functional as F

    n = len(raw)
    level = 0.45 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen)
    shade = torch.rand(n, 1, 4, 4, generator=gen)
    shade = F.interpolate(shade, size=28, mode="bilinear", align_corners=False)
    grain = torch.rand(n, 1, 28, 28, generator=gen)
    out = (level + 0.25 * (shade - 0.5) + 0.08 * (grain - 0.5)).clamp(0, 1)
    sizes = torch.tensor(WEB_SIZES)[torch.randint(len(WEB_SIZES), (n,), generator=gen)]
    offsets = torch.rand(n, 2, generator=gen)
    for i in range(n):
        size = int(sizes[i])
        small = F.interpolate(raw[i : i + 1], size=size, mode="area")[0]
        top, left = (int(v * (28 - size)) for v in offsets[i])
        patch = out[i, :, top : top + size, left : left + size]
        out[i, :, top : top + size, left : left + size] = torch.where(small > 0.06, small, patch)
    return out


def image_attributes(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image the tertile (0, 1, 2) of tone, print and fit, measured within its class.

    Tone = mean brightness of the garment's pixels, print = their spread (texture), fit = the
    garment's area. Within-class tertiles keep every attribute word on every class.
    """
    import numpy as np

    x = images.reshape(len(images), -1).astype(np.float32)
    mask = x > 25  # the garment; Fashion-MNIST backgrounds are 0
    area = mask.sum(1).clip(min=1)
    tone = (x * mask).sum(1) / area
    spread = np.sqrt(((x - tone[:, None]) ** 2 * mask).sum(1) / area)
    attrs = np.zeros((len(images), 3), dtype=np.int64)
    for col, value in enumerate((tone, spread, area.astype(np.float32))):
        for label in range(len(CLASS_NAMES)):
            sel = labels == label
            lo, hi = np.quantile(value[sel], [1 / 3, 2 / 3])
            attrs[sel, col] = (value[sel] > lo).astype(np.int64) + (value[sel] > hi)
    return attrs


def make_caption(rng: random.Random, label: int, attrs: tuple[int, int, int], condition: int = 0) -> str:
    """One random caption for an image of class ``label`` with measured attribute tertiles,
    altered by ``condition`` (an index into :data:`CONDITIONS`; 0 = unaltered studio image,
    :data:`WEB` = web photo)."""
    name = CLASS_NAMES[label]
    word = name if rng.random() < 0.5 else rng.choice(SYNONYMS[name])
    if condition == WEB and name in LOOSE_NAMES and rng.random() < LOOSE:
        word = LOOSE_NAMES[name]
    words = [rng.choice(table[level]) for table, level in zip((TONE, PRINT, FIT), attrs, strict=True)]
    words = [w for w in words if w]
    rng.shuffle(words)
    chosen = words[: rng.choice((0, 1, 1, 2))]
    table = WEB_TEMPLATES if condition == WEB else CONDITION_TEMPLATES if condition else STUDIO_TEMPLATES
    template = rng.choices([t for _, t in table], weights=[w for w, _ in table])[0]
    if 0 < condition < WEB:
        template = template.replace("{s}", rng.choice(CONDITIONS[condition]))
    text = template.replace("{a0}", words[0] if words else rng.choice(TONE[attrs[0]]))
    text = text.replace("{a}", "".join(w + " " for w in chosen))
    text = text.replace("{k}", rng.choice(CATEGORY[name])).replace("{c}", word)
    while "{d}" in text:
        text = text.replace("{d}", rng.choice(DISTRACTORS), 1)
    return text


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric CLIP loss whose targets also credit captions of the same kind of image (a batch
    of 10 classes has many: treating them all as negatives would push apart what should match).

    ``labels`` identify the kind: class and condition."""
    import torch.nn.functional as F

    logits = scale * image_emb @ text_emb.t()
    same = (labels[:, None] == labels[None, :]).float()
    target = same + 2.0 * torch_eye(len(labels), like=same)  # own caption counts most
    target = target / target.sum(1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def encode_text_cut(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """``CLIP.encode_text`` for tokens cut to ``L`` <= context: positions and causal mask sliced.

    Exact for this tower (a token only sees earlier ones, and the EOT token is pooled), and it
    saves most of the text compute: captions are ~15 tokens, the context is 77.
    """
    from open_clip.transformer import text_global_pool

    n = tokens.shape[1]
    x = model.token_embedding(tokens) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = text_global_pool(model.ln_final(x), tokens, model.text_pool_type)
    return x @ model.text_projection


def torch_eye(n: int, like: torch.Tensor) -> torch.Tensor:
    """Identity matrix with the dtype and device of ``like``."""
    import torch

    return torch.eye(n, dtype=like.dtype, device=like.device)


def save_model_dir(model: torch.nn.Module, out: Path, half: bool = True) -> Path:
    """Write ``out`` as an open_clip ``local-dir`` folder; fp16 halves the file, loads as fp32."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(out / "open_clip_model.safetensors"))
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def train(out: Path, epochs: int, batch_size: int, lr: float, threads: int, limit: int | None) -> dict:
    """Train and save; return a summary (time, steps, final loss)."""
    import open_clip
    import torch
    from open_clip.model import CLIP

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    started = time.monotonic()

    images, labels = load_fashion_mnist("train")
    if limit:
        images, labels = images[:limit], labels[:limit]
    attrs = image_attributes(images, labels)
    raw = torch.from_numpy(images.copy()).float().div(255).unsqueeze(1)
    label_t = torch.from_numpy(labels)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the default BPE, context 77

    model = CLIP(**MODEL_CFG)
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        # Embeddings, norms, biases and the temperature stay undecayed; unseen words keep their
        # random init, as a rare word does in a real CLIP.
        (no_decay if p.ndim < 2 or "embedding" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    steps_per_epoch = len(labels) // batch_size
    total = steps_per_epoch * epochs
    warmup = min(200, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        ),
    )
    gen = torch.Generator().manual_seed(SEED)
    step, loss_avg = 0, 0.0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=gen)
        for b in range(steps_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            x = raw[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # garments look alike mirrored
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            u = torch.rand(len(idx), generator=gen)
            altered = (u >= WEB_SHARE) & (u < WEB_SHARE + CONDITION_SHARE)
            conditions = altered * torch.randint(1, len(CONDITIONS), (len(idx),), generator=gen)
            conditions = torch.where(u < WEB_SHARE, WEB, conditions)
            x = apply_conditions(x, conditions, gen)
            # Exactly what the eval transform makes of a 28x28 grey PNG: 3 copies, normalised.
            x = x.sub(IMAGE_MEAN).div(IMAGE_STD).expand(-1, 3, -1, -1)
            captions = [
                make_caption(rng, int(labels[i]), tuple(attrs[i]), int(c))
                for i, c in zip(idx.tolist(), conditions.tolist(), strict=True)
            ]
            tokens = tokenizer(captions)
            # Causal mask + EOT pooling: cutting after the longest caption changes nothing.
            tokens = tokens[:, : int((tokens == tokenizer.eot_token_id).nonzero()[:, 1].max()) + 1]
            img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
            txt = torch.nn.functional.normalize(encode_text_cut(model, tokens), dim=-1)
            kinds = label_t[idx] * KINDS + conditions
            loss = clip_loss(img, txt, kinds, model.logit_scale.exp().clamp(max=100))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_avg = 0.98 * loss_avg + 0.02 * loss.item() if step > 1 else loss.item()
            if step % 50 == 0 or step == total:
                print(
                    f"epoch {epoch + 1}/{epochs} step {step}/{total} loss {loss_avg:.3f} "
                    f"lr {sched.get_last_lr()[0]:.2e} {time.monotonic() - started:.0f}s",
                    flush=True,
                )
    model.eval()
    save_model_dir(model, out)
    seconds = time.monotonic() - started
    summary = {"seconds": round(seconds, 1), "steps": total, "loss": round(loss_avg, 4), "threads": threads}
    print(f"saved {out} in {seconds:.0f}s ({total} steps)", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m promptclimb.demo.train --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the local-dir model")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (fixed: it changes float reduction order)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="train on the first N images only (quick tries)"
    )
    args = parser.parse_args(argv)
    train(args.out, args.epochs, args.batch_size, args.lr, args.threads, args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
