"""The request bodies of the API, as pydantic models (validated after the caps, see capped.py). Extra
fields are allowed: OpenAI clients send fields this server ignores."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we ignore


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class GenBody(_Body):  # what chat and text completions share (no docstring: it would enter the schemas)
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=1)


class ChatRequest(GenBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(GenBody):
    prompt: str | list[str]


class EmbeddingsRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = Field(None, ge=1)


class ClassifyRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str]


class RagRequest(_Body):
    model: str = Field(min_length=1)
    question: str = Field(min_length=1)
    k: int | None = Field(None, ge=1, le=50)  # None: the index's calibrated k, else 4
    max_tokens: int | None = Field(None, ge=1)
    mode: Literal["hybrid", "vector", "bm25"] = "hybrid"


class PipelineRequest(_Body):
    input: str = Field(min_length=1)
