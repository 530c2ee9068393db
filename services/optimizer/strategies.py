"""Meta-prompt strategies: how the scored history is shown to the LLM (and the baseline without one).

Each strategy is a small object with one method that turns a :class:`ProposalRequest` into the chat
messages sent to the model. All the wording lives in this file, one block per strategy, so it
can be read (and changed) in one place; tests pin the exact messages. A strategy with no LLM
(``edit``) has a ``templates`` method instead and the optimizer calls that.
"""

from __future__ import annotations

import random
from typing import Protocol, runtime_checkable

from promptclimb.common.ranking import rank_key
from services.optimizer.domain import ChatMessage, InvalidRequest, ProposalRequest, ScoredTemplate, Strategy
from services.optimizer.edits import edit_children, vocabulary
from services.optimizer.parsing import dedupe_key, parse_reply

# Class names shown as context; more would only lengthen the prompt.
MAX_CLASS_NAMES_SHOWN = 30
# Templates of folded conversation turns listed in the opening (best first; at most best_k).
MAX_FOLDED_SHOWN = 10

SYSTEM_PROMPT = (
    "You write text prompts for CLIP, a vision-language model that classifies an image by comparing "
    "it with one sentence per class. A prompt template is such a sentence with {} where the class "
    'name goes, for example "a photo of a {}.". You improve templates from the accuracy they '
    "reached. Answer only with templates."
)


class ProposalStrategy(Protocol):
    """Builds the chat messages that ask the LLM for new templates."""

    name: Strategy

    def messages(self, request: ProposalRequest) -> list[ChatMessage]:
        """The full list of messages to send, system message first."""
        ...


@runtime_checkable
class LocalStrategy(Protocol):
    """Proposes templates itself, with no LLM: no messages, no tokens, no HTTP call."""

    name: Strategy

    def templates(self, request: ProposalRequest, *, max_chars: int) -> list[str]:
        """``request.num_templates`` new templates at most, none in the history."""
        ...


# --- shared wording -----------------------------------------------------------------------------


def percent(accuracy: float) -> str:
    """An accuracy as the LLM reads it: ``0.8667`` -> ``86.7%``."""
    return f"{accuracy * 100:.1f}%"


def answer_format(n: int) -> str:
    """The closing instruction every strategy ends its user turn with."""
    noun = "template" if n == 1 else "templates"
    return (
        f'Answer with a JSON object only, of the form {{"templates": ["..."]}}, holding exactly {n} '
        f"new {noun}, each with {{}} exactly once where the class name goes."
    )


def task_lines(request: ProposalRequest) -> list[str]:
    """What the images are and a few class names, when the request says (then a blank line)."""
    lines = []
    if request.task_description.strip():
        lines.append(f"Task: classify {request.task_description.strip()}.")
    names = [n.strip() for n in request.class_names if n.strip()][:MAX_CLASS_NAMES_SHOWN]
    if names:
        lines.append(f"Some class names: {', '.join(names)}.")
    return [*lines, ""] if lines else lines


def ranked(history: list[ScoredTemplate]) -> list[ScoredTemplate]:
    """History without repeats (best score kept), best first, as the coordinator ranks: accuracy,
    then the lower loss (unknown last); remaining ties keep their history order."""
    best: dict[str, ScoredTemplate] = {}
    for scored in history:
        key = dedupe_key(scored.template)
        if key not in best or _rank(scored) < _rank(best[key]):
            best[key] = scored
    return sorted(best.values(), key=_rank)


def _rank(s: ScoredTemplate) -> tuple[float, float]:
    return rank_key(s.accuracy, s.loss)


def best_and_worst(request: ProposalRequest) -> tuple[list[ScoredTemplate], list[ScoredTemplate]]:
    """The best ``best_k`` and the worst ``worst_k`` templates, never overlapping, best first."""
    order = ranked(request.history)
    best = order[: request.best_k]
    worst = order[max(request.best_k, len(order) - request.worst_k) :] if request.worst_k else []
    return best, worst


def starters(request: ProposalRequest) -> list[ChatMessage]:
    """Empty history: ask for diverse starting templates (a search seeded by the LLM)."""
    lines = task_lines(request)
    lines += [
        f"Write {request.num_templates} diverse templates for this task: vary the wording, the kind of "
        "image they describe and the context words around the class name.",
        answer_format(request.num_templates),
    ]
    return [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", "\n".join(lines))]


def bullet_list(templates: list[ScoredTemplate]) -> list[str]:
    """``- "a photo of a {}." (86.7%)`` lines."""
    return [f'- "{s.template}" ({percent(s.accuracy)})' for s in templates]


# --- contrast: the released code's single turn ---------------------------------------------------


class Contrast:
    """Single turn: the best-k and the worst-k templates, ask for n better ones."""

    name = Strategy.CONTRAST

    def messages(self, request: ProposalRequest) -> list[ChatMessage]:
        """System message and one user turn with good and bad examples."""
        if not request.history:
            return starters(request)
        best, worst = best_and_worst(request)
        lines = task_lines(request)
        lines += ["Here are templates with the accuracy CLIP reached with them.", "", "Good templates:"]
        lines += bullet_list(best)
        if worst:
            lines += ["", "Bad templates:", *bullet_list(worst)]
        lines += [
            "",
            f"Write {request.num_templates} new templates that are likely to score higher than all the good "
            "ones: keep what the good ones share, avoid what the bad ones share.",
            answer_format(request.num_templates),
        ]
        return [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", "\n".join(lines))]


class Released:
    """What the released code showed: good and bad templates as two bare lists, one user turn.

    No accuracies, no class names, no system message (our wording, the released code's content).
    """

    name = Strategy.RELEASED

    def messages(self, request: ProposalRequest) -> list[ChatMessage]:
        """One user turn: the good list, the bad list, the request."""
        if not request.history:
            return starters(request)
        best, worst = best_and_worst(request)
        lines = ["Below are prompt templates; {} marks where a class name goes.", "", "Good templates:"]
        lines += [f'- "{s.template}"' for s in best]
        if worst:
            lines += ["", "Bad templates:", *(f'- "{s.template}"' for s in worst)]
        noun = "template" if request.num_templates == 1 else f"{request.num_templates} templates"
        lines += ["", f"Write a new {noun} like the good ones and unlike the bad ones."]
        lines.append(answer_format(request.num_templates))
        return [ChatMessage("user", "\n".join(lines))]


# --- trajectory: OPRO-style ascending history ---------------------------------------------------


class Trajectory:
    """Single turn: the top ``best_k`` of the history in ascending order of accuracy (OPRO)."""

    name = Strategy.TRAJECTORY

    def messages(self, request: ProposalRequest) -> list[ChatMessage]:
        """System message and one user turn listing templates from worst to best."""
        if not request.history:
            return starters(request)
        shown = list(reversed(ranked(request.history)[: request.best_k]))
        lines = task_lines(request)
        lines += [
            "Below are templates with the accuracy CLIP reached with them, in ascending order of accuracy.",
            "",
        ]
        for scored in shown:
            lines += [f'template: "{scored.template}"', f"accuracy: {percent(scored.accuracy)}", ""]
        lines += [
            f"Write {request.num_templates} new templates that differ from all of the above and reach a "
            "higher accuracy than all of them.",
            answer_format(request.num_templates),
        ]
        return [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", "\n".join(lines))]


# --- conversation: the paper's multi-turn protocol ----------------------------------------------


class Conversation:
    """Multi-turn: open with good and bad examples, then report each proposal's accuracy back.

    Stateless: the previous call's conversation comes back in the request, and the templates the
    model proposed in its last reply are looked up in the history to report their accuracy.
    """

    name = Strategy.CONVERSATION

    def messages(self, request: ProposalRequest) -> list[ChatMessage]:
        """The conversation so far plus the next user turn (the opening one when it is empty)."""
        if not request.history:
            return starters(request)
        if not request.conversation:
            return [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", self.opening(request))]
        return [*request.conversation, ChatMessage("user", self.feedback(request))]

    def opening(self, request: ProposalRequest) -> str:
        """First user turn: the task, good and bad examples, the request for templates."""
        best, worst = best_and_worst(request)
        lines = task_lines(request)
        lines += [
            "We will improve the template step by step: I will tell you the accuracy of every template "
            "you write.",
            "",
            "Templates that scored well:",
            *bullet_list(best),
        ]
        if worst:
            lines += ["", "Templates that scored badly:", *bullet_list(worst)]
        lines += [
            "",
            f"Write {request.num_templates} new templates that score higher than all of these.",
            answer_format(request.num_templates),
        ]
        return "\n".join(lines)

    def fold(self, request: ProposalRequest, messages: list[ChatMessage], keep: int) -> list[ChatMessage]:
        """``messages`` with all but the newest ``keep`` feedback turns folded into the opening.

        ``messages`` is what :meth:`messages` built: system, opening, (reply, feedback) pairs, the
        last reply and the new feedback. The folded replies' templates, with their accuracy, join
        the opening as one short list, so the chat stays within the endpoint's window and the LLM
        still sees what it tried.
        """
        system, opening, rest = messages[0], messages[1], messages[2:]
        folded_turns = max(0, (len(rest) - 2) // 2 - keep)
        folded, kept = rest[: 2 * folded_turns], rest[2 * folded_turns :]
        scores = {dedupe_key(s.template): s for s in ranked(request.history)}
        tried: dict[str, ScoredTemplate] = {}
        for reply in folded[::2]:
            for template in parse_reply(reply.content).templates:
                if (key := dedupe_key(template)) in scores:
                    tried[key] = scores[key]
        shown = sorted(tried.values(), key=_rank)[: min(MAX_FOLDED_SHOWN, request.best_k)]
        note = [
            "",
            "Earlier in this conversation you also wrote these templates (best first):",
            *bullet_list(shown),
        ]
        if not shown:
            note = ["", "(Earlier turns of this conversation are left out to keep it short.)"]
        head, sep, tail = opening.content.rpartition("\n\nWrite ")
        content = f"{head}\n" + "\n".join(note) + f"{sep}{tail}" if sep else opening.content + "\n".join(note)
        return [system, ChatMessage("user", content), *kept]

    def feedback(self, request: ProposalRequest) -> str:
        """Later user turn: the accuracy of each template of the last reply, then try again."""
        scores = {dedupe_key(s.template): s for s in ranked(request.history)}
        last_reply = request.conversation[-1].content
        proposed = [t for t in parse_reply(last_reply).templates if dedupe_key(t) in scores]
        proposed_keys = {dedupe_key(t) for t in proposed}
        before = [s.accuracy for k, s in scores.items() if k not in proposed_keys]
        best_before = max(before, default=-1.0)
        lines = []
        if proposed:
            lines.append("Accuracy of your last templates:")
            for template in proposed:
                accuracy = scores[dedupe_key(template)].accuracy
                verdict = (
                    "better than all before."
                    if accuracy > best_before
                    else f"worse than the best so far ({percent(best_before)})."
                )
                lines.append(f'- "{template}" scored {percent(accuracy)}, {verdict}')
        else:
            lines.append("None of your last templates could be scored: each needs {} exactly once.")
        overall = ranked(request.history)[0]
        lines += [
            f'The best so far is "{overall.template}" at {percent(overall.accuracy)}. Try again: write '
            f"{request.num_templates} new templates that score higher.",
            answer_format(request.num_templates),
        ]
        return "\n".join(lines)


# --- evolve: EvoPrompt-style crossover and mutation ------------------------------------------------

# EvoPrompt's population: the best this many templates of the history take part in selection.
POPULATION = 10
# Binary tournament: the better of two random members wins (so the worst member is never a parent).
TOURNAMENT_SIZE = 2


def tournament(population: list[ScoredTemplate], rng: random.Random) -> ScoredTemplate:
    """The best of ``TOURNAMENT_SIZE`` distinct members drawn at random (ranked: best first)."""
    drawn = rng.sample(range(len(population)), min(TOURNAMENT_SIZE, len(population)))
    return population[min(drawn)]


class Evolve:
    """Single turn, EvoPrompt-style: two parents by tournament selection, the LLM crosses them over
    and mutates the child. The tournament is seeded by ``request.seed``, so a replay shows the same
    parents."""

    name = Strategy.EVOLVE

    def parents(self, request: ProposalRequest) -> list[ScoredTemplate]:
        """Two distinct parents (one when the history holds one template), each a tournament winner."""
        population = ranked(request.history)[:POPULATION]
        rng = random.Random(request.seed)
        first = tournament(population, rng)
        rest = [s for s in population if s is not first]
        return [first, tournament(rest, rng)] if rest else [first]

    def messages(self, request: ProposalRequest) -> list[ChatMessage]:
        """System message and one user turn with the parents and how to breed from them."""
        if not request.history:
            return starters(request)
        parents = self.parents(request)
        n = request.num_templates
        lines = task_lines(request)
        if len(parents) == 1:
            lines += [
                "A parent template, with the accuracy CLIP reached with it:",
                f'Parent: "{parents[0].template}" ({percent(parents[0].accuracy)})',
                "",
                f"Write {n} child {'template' if n == 1 else 'templates'}, each a mutation of the parent: "
                "change, add or drop a word or two, so that the child is likely to score higher.",
            ]
        else:
            lines += ["Two parent templates, with the accuracy CLIP reached with them:"]
            lines += [f'Parent {i}: "{p.template}" ({percent(p.accuracy)})' for i, p in enumerate(parents, 1)]
            lines += [
                "",
                f"Write {n} child {'template' if n == 1 else 'templates'}. For each child, first cross the "
                "parents over (combine parts of both into one template), then mutate the result (change, "
                "add or drop a word or two), so that the child is likely to score higher than both parents.",
            ]
        lines.append(answer_format(n))
        return [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", "\n".join(lines))]


# --- edit: the no-LLM baseline ---------------------------------------------------------------------


class Edit:
    """No LLM: random word edits (swap, insert, delete, replace) of the ``best_k`` best templates,
    with words of the history and of the task description; seeded by ``request.seed``."""

    name = Strategy.EDIT

    def templates(self, request: ProposalRequest, *, max_chars: int) -> list[str]:
        """New templates, each one edit of a best one; fewer when the edits run out of new ones."""
        if not request.history:
            raise InvalidRequest(
                "history", "the edit strategy needs a scored history: it edits the best templates"
            )
        parents = [s.template for s in ranked(request.history)[: request.best_k]]
        vocab = vocabulary((s.template for s in request.history), request.task_description)
        return edit_children(
            parents,
            request.num_templates,
            vocab,
            random.Random(request.seed),
            known=(s.template for s in request.history),
            max_chars=max_chars,
        )


STRATEGIES: dict[Strategy, ProposalStrategy | LocalStrategy] = {
    s.name: s for s in (Conversation(), Contrast(), Trajectory(), Evolve(), Edit(), Released())
}
