"""The request bodies of the API, as pydantic models (validated after the caps, see capped.py). Extra
fields are allowed: OpenAI clients send fields this server ignores."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we ignore


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's calls, OpenAI's shape
    tool_call_id: str | None = None  # the call a tool message answers


class FunctionName(_Body):
    name: str = Field(min_length=1)


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: FunctionName


class ResponseFormat(_Body):
    type: str  # text, json_object or json_schema (others: a 400 naming them)
    json_schema: dict[str, Any] | None = None


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
    response_format: ResponseFormat | None = None


class ChatRequest(GenBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None  # OpenAI's function tools
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # accepted; a forced reply holds one call


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
