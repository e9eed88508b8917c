"""The Groq and Ollama stand-ins, and a sizer pointed at them through the real SDK clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from serve.llm_sizer import LLMSizer
from serve.sizing import SizingConfig

from standins.groq_server import GroqStandIn
from standins.ollama_server import OllamaStandIn

GROQ_KEY = "gsk_test_sizing_key_7Hq2mZ9xW4"

SizerFactory = Callable[..., LLMSizer]


@pytest.fixture
def groq_standin() -> Iterator[GroqStandIn]:
    with GroqStandIn(GROQ_KEY) as standin:
        yield standin


@pytest.fixture
def ollama_standin() -> Iterator[OllamaStandIn]:
    with OllamaStandIn(models=("llama3.1:8b",)) as standin:
        yield standin


@pytest.fixture
def make_sizer(groq_standin: GroqStandIn, ollama_standin: OllamaStandIn) -> SizerFactory:
    """`make_sizer(env=..., **config)`: a sizer on both stand-ins; config keys as in sizing.yaml."""

    def make(env: dict[str, str] | None = None, **config: Any) -> LLMSizer:
        groq = {"base_url": groq_standin.url, "timeout_s": 5.0, **config.pop("groq", {})}
        ollama = {"host": ollama_standin.url, "timeout_s": 5.0, **config.pop("ollama", {})}
        settings = {"deadline_s": 3.0, **config, "groq": groq, "ollama": ollama}
        sizing = SizingConfig.model_validate(settings)
        return LLMSizer(sizing, env={"GROQ_API_KEY": GROQ_KEY} if env is None else env)

    return make
