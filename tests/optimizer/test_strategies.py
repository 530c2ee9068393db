"""The exact messages each strategy sends for a fixed history."""

from __future__ import annotations

import pytest

from services.optimizer.domain import ChatMessage, Strategy
from services.optimizer.strategies import STRATEGIES, SYSTEM_PROMPT
from tests.optimizer.conftest import HISTORY, make_request

TASK = (
    "Task: classify photos of clothing items (Fashion-MNIST).\nSome class names: T-shirt, Trouser, Bag.\n\n"
)
ANSWER = (
    'Answer with a JSON object only, of the form {"templates": ["..."]}, holding exactly 2 new templates, '
    "each with {} exactly once where the class name goes."
)

CONTRAST = (
    TASK + "Here are templates with the accuracy CLIP reached with them.\n"
    "\n"
    "Good templates:\n"
    '- "a close-up photo of the {}." (70.0%)\n'
    '- "a photo of a {}." (62.0%)\n'
    "\n"
    "Bad templates:\n"
    '- "a drawing of a {}." (41.0%)\n'
    '- "a blurry photo of a {}." (38.0%)\n'
    "\n"
    "Write 2 new templates that are likely to score higher than all the good ones: keep what the good "
    "ones share, avoid what the bad ones share.\n" + ANSWER
)

TRAJECTORY = (
    TASK + "Below are templates with the accuracy CLIP reached with them, in ascending order of accuracy.\n"
    "\n"
    'template: "itap of a {}."\n'
    "accuracy: 55.0%\n"
    "\n"
    'template: "a photo of a {}."\n'
    "accuracy: 62.0%\n"
    "\n"
    'template: "a close-up photo of the {}."\n'
    "accuracy: 70.0%\n"
    "\n"
    "Write 2 new templates that differ from all of the above and reach a higher accuracy than all of them.\n"
    + ANSWER
)

OPENING = (
    TASK + "We will improve the template step by step: I will tell you the accuracy of every template you "
    "write.\n"
    "\n"
    "Templates that scored well:\n"
    '- "a close-up photo of the {}." (70.0%)\n'
    '- "a photo of a {}." (62.0%)\n'
    "\n"
    "Templates that scored badly:\n"
    '- "a drawing of a {}." (41.0%)\n'
    '- "a blurry photo of a {}." (38.0%)\n'
    "\n"
    "Write 2 new templates that score higher than all of these.\n" + ANSWER
)

FEEDBACK = (
    "Accuracy of your last templates:\n"
    '- "a close-up photo of the {}." scored 70.0%, better than all before.\n'
    '- "a blurry photo of a {}." scored 38.0%, worse than the best so far (62.0%).\n'
    'The best so far is "a close-up photo of the {}." at 70.0%. Try again: write 2 new templates that '
    "score higher.\n" + ANSWER
)


def test_contrast_sends_best_and_worst_in_one_turn() -> None:
    messages = STRATEGIES[Strategy.CONTRAST].messages(make_request(Strategy.CONTRAST))
    assert messages == [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", CONTRAST)]


def test_trajectory_sends_top_k_in_ascending_order() -> None:
    request = make_request(Strategy.TRAJECTORY, best_k=3)
    messages = STRATEGIES[Strategy.TRAJECTORY].messages(request)
    assert messages == [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", TRAJECTORY)]


def test_conversation_opens_with_good_and_bad_examples() -> None:
    messages = STRATEGIES[Strategy.CONVERSATION].messages(make_request(Strategy.CONVERSATION))
    assert messages == [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", OPENING)]


def test_conversation_reports_each_proposal_accuracy_back() -> None:
    # The last reply proposed two templates that were then scored (they are in the history) and one
    # that was not; the feedback turn reports the scored two against the best of the others.
    so_far = [
        ChatMessage("system", SYSTEM_PROMPT),
        ChatMessage("user", OPENING),
        ChatMessage(
            "assistant",
            '{"templates": ["a close-up photo of the {}.", "a blurry photo of a {class}.", '
            '"never scored {}"]}',
        ),
    ]
    request = make_request(Strategy.CONVERSATION, conversation=so_far)
    messages = STRATEGIES[Strategy.CONVERSATION].messages(request)
    assert messages == [*so_far, ChatMessage("user", FEEDBACK)]


def test_conversation_says_so_when_nothing_could_be_scored() -> None:
    so_far = [ChatMessage("user", OPENING), ChatMessage("assistant", "I like cats.")]
    request = make_request(Strategy.CONVERSATION, conversation=so_far)
    last = STRATEGIES[Strategy.CONVERSATION].messages(request)[-1].content
    assert last.startswith("None of your last templates could be scored: each needs {} exactly once.\n")


@pytest.mark.parametrize("strategy", [s for s in Strategy if hasattr(STRATEGIES[s], "messages")])
def test_worst_k_zero_shows_no_bad_examples(strategy: Strategy) -> None:
    text = STRATEGIES[strategy].messages(make_request(strategy, worst_k=0))[-1].content
    assert "badly" not in text and "Bad templates" not in text
    assert "38.0%" not in text


def test_repeated_history_entries_are_shown_once_with_their_best_score() -> None:
    history = [*HISTORY, type(HISTORY[0])("A close-up photo of the {}.", 0.71)]
    text = STRATEGIES[Strategy.CONTRAST].messages(make_request(history=history))[-1].content
    assert text.count("close-up") == 1
    assert '"A close-up photo of the {}." (71.0%)' in text


def test_accuracy_ties_are_ranked_by_the_lower_loss_as_the_coordinator_does() -> None:
    scored = type(HISTORY[0])
    history = [
        scored("a photo of a {}.", 0.9, 0.8),
        scored("a {} in a shop.", 0.9),  # no loss recorded: after those with one
        scored("a grey photo of a {}.", 0.9, 0.4),
        scored("a drawing of a {}.", 0.5, 0.1),
    ]
    text = STRATEGIES[Strategy.CONTRAST].messages(make_request(history=history))[-1].content
    good = text.split("Good templates:\n")[1].split("\n\n")[0]
    assert good.splitlines() == ['- "a grey photo of a {}." (90.0%)', '- "a photo of a {}." (90.0%)']


def test_positive_only_contrast_differs_from_the_default_by_exactly_the_bad_block() -> None:
    # The paper's ablation: positive-only (worst_k = 0) against positive-and-negative examples.
    positive_only = STRATEGIES[Strategy.CONTRAST].messages(make_request(worst_k=0))
    bad_block = '\nBad templates:\n- "a drawing of a {}." (41.0%)\n- "a blurry photo of a {}." (38.0%)\n'
    assert positive_only == [
        ChatMessage("system", SYSTEM_PROMPT),
        ChatMessage("user", CONTRAST.replace(bad_block, "")),
    ]


def test_released_shows_two_bare_lists_and_nothing_else() -> None:
    # What the paper's released code showed: no accuracies, no class names, no system message.
    messages = STRATEGIES[Strategy.RELEASED].messages(make_request(Strategy.RELEASED, num_templates=1))
    assert messages == [
        ChatMessage(
            "user",
            "Below are prompt templates; {} marks where a class name goes.\n"
            "\n"
            "Good templates:\n"
            '- "a close-up photo of the {}."\n'
            '- "a photo of a {}."\n'
            "\n"
            "Bad templates:\n"
            '- "a drawing of a {}."\n'
            '- "a blurry photo of a {}."\n'
            "\n"
            "Write a new template like the good ones and unlike the bad ones.\n"
            'Answer with a JSON object only, of the form {"templates": ["..."]}, holding exactly 1 new '
            "template, each with {} exactly once where the class name goes.",
        )
    ]
    assert "%" not in messages[0].content and "T-shirt" not in messages[0].content
