"""Random word edits of templates: the no-LLM baseline every LLM strategy has to beat.

A template is split on whitespace into words; one edit swaps two neighbours, inserts a word of
the vocabulary, deletes a word or replaces one. The word holding the class-name slot is never
deleted or replaced, so every child keeps its slot. All randomness comes from the ``rng`` passed
in, so a seeded request proposes the same templates every time.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from services.optimizer.parsing import SLOT, dedupe_key

OPERATIONS = ("swap", "insert", "delete", "replace")
# Tries per requested template before giving up (a tiny vocabulary runs out of new children).
TRIES_PER_TEMPLATE = 200
_PUNCTUATION = ".,;:!?\"'()[]<>`"


def vocabulary(templates: Iterable[str], task_description: str = "") -> list[str]:
    """The words edits may insert: those of ``templates`` and of the task description.

    Punctuation is stripped and words with a brace are left out, so an inserted word never adds a
    slot; sorted, so the same seed picks the same words.
    """
    texts = [*templates, task_description]
    words = {w.strip(_PUNCTUATION) for text in texts for w in text.split()}
    return sorted(w for w in words if w and "{" not in w and "}" not in w and w.isprintable())


def random_edit(template: str, vocab: Sequence[str], rng: random.Random) -> str:
    """One random word edit of ``template``; the word holding the slot is never deleted or replaced.

    An edit that cannot apply (a swap of a one-word template, an insert with no vocabulary)
    returns the template unchanged; the caller drops it as a repeat.
    """
    words = template.split()
    free = [i for i, w in enumerate(words) if SLOT not in w]
    op = rng.choice(OPERATIONS)
    if op == "swap" and len(words) > 1:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif op == "insert" and vocab:
        words.insert(rng.randrange(len(words) + 1), rng.choice(vocab))
    elif op == "delete" and free:
        del words[rng.choice(free)]
    elif op == "replace" and free and vocab:
        words[rng.choice(free)] = rng.choice(vocab)
    return " ".join(words)


def edit_children(
    parents: Sequence[str],
    n: int,
    vocab: Sequence[str],
    rng: random.Random,
    *,
    known: Iterable[str] = (),
    max_chars: int | None = None,
) -> list[str]:
    """Up to ``n`` new templates, each one edit of a parent chosen at random.

    Every child has exactly one slot, is at most ``max_chars`` long, and differs (as CLIP's
    tokenizer reads it: case and spacing aside) from ``known`` and from the other children.
    """
    seen = {dedupe_key(t) for t in known}
    out: list[str] = []
    for _ in range(TRIES_PER_TEMPLATE * n):
        if len(out) == n or not parents:
            break
        child = random_edit(rng.choice(parents), vocab, rng)
        key = dedupe_key(child)
        if child.count(SLOT) == 1 and key not in seen and (max_chars is None or len(child) <= max_chars):
            seen.add(key)
            out.append(child)
    return out
