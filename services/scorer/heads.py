"""The zero-shot head: class weights x image features -> counts, loss, per-class accuracy, confusions.

A head is one (C, D) matrix of L2-normalised class embeddings (one template's texts, an
ensemble's means, a description set's per-class means); the image features are L2-normalised
too, so the logits are cosine similarities and the prediction is their argmax (the paper's rule).
Several heads are scored at once on the same images, chunked to bound the logits' memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from promptclimb.common.per_image import pack_correct, pack_loss
from services.scorer.results import TemplateResult

# Logit entries (heads x images x classes) one chunk may hold.
MAX_CHUNK_LOGITS = 2**26


def score_heads(
    feats: Any,
    labels: Any,
    weights: Sequence[Any],
    results: Sequence[TemplateResult],
    scale: float,
    *,
    per_class: bool = False,
    per_image: bool = False,
    top_confusions: int = 0,
) -> None:
    """Fill ``results[i]`` with the score of head ``weights[i]`` on ``feats`` (N, D) / ``labels`` (N,).

    ``scale`` is the model's logit scale (the loss is CLIP's zero-shot cross-entropy of the true
    class). ``top_confusions``: that many of the most frequent (true, predicted) pairs among the
    wrong predictions, most frequent first, ties in class order.
    """
    import torch

    n = feats.shape[0]
    num_classes = weights[0].shape[0] if weights else 0
    chunk = max(1, int(MAX_CHUNK_LOGITS // max(1, n * num_classes)))
    for s in range(0, len(weights), chunk):
        w = torch.stack(list(weights[s : s + chunk]))
        logits = torch.einsum("nd,tcd->tnc", feats, w)
        predicted = logits.argmax(dim=-1)
        hit = predicted == labels
        correct = hit.sum(dim=1).tolist()
        log_probs = torch.log_softmax(logits.mul_(scale), dim=-1)
        nll = -log_probs.gather(-1, labels.expand(len(w), -1)[..., None])  # (T, N, 1)
        losses = nll.mean(dim=(1, 2))
        per_class_acc = None
        if per_class:
            totals = torch.bincount(labels, minlength=num_classes).clamp(min=1)
            per_class_acc = [
                (torch.bincount(labels[h], minlength=num_classes) / totals).tolist() for h in hit
            ]
        if per_image:  # one device-to-host copy per chunk
            hit_host, nll_host = hit.cpu().numpy(), nll[..., 0].float().cpu().numpy()
        for k, r in enumerate(results[s : s + chunk]):
            r.correct, r.total = int(correct[k]), n
            r.loss = float(losses[k])
            if per_class_acc is not None:
                r.per_class_accuracy = [float(x) for x in per_class_acc[k]]
            if per_image:
                r.per_image_correct = pack_correct(hit_host[k])
                r.per_image_loss = pack_loss(nll_host[k])
            if top_confusions > 0:
                r.confusions = confusions(labels, predicted[k], num_classes, top_confusions)


def confusions(labels: Any, predicted: Any, num_classes: int, top: int) -> list[tuple[int, int, int]]:
    """The ``top`` most frequent ``(true, predicted, count)`` among wrong predictions.

    Most frequent first; equal counts in (true, predicted) class order, so the answer is stable.
    """
    import torch

    wrong = predicted != labels
    pairs = labels[wrong] * num_classes + predicted[wrong]
    counts = torch.bincount(pairs, minlength=num_classes * num_classes)
    found = counts.nonzero().squeeze(1)
    ranked = sorted(zip(counts[found].tolist(), found.tolist(), strict=True), key=lambda c: (-c[0], c[1]))
    return [(pair // num_classes, pair % num_classes, count) for count, pair in ranked[:top]]
