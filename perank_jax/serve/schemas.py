"""The request and response shapes of the rerank API, and THE checks of a request's content.

`/v1/rerank` follows Cohere / Jina (query, documents as strings or {"text", "id"}, top_n,
return_documents); `/rerank` follows text-embeddings-inference (query, texts, return_text).
Types are checked by pydantic (strict: no "3" for 3); `check_documents` checks what depends on the
server (limits, the embedding cache) and is the one owner of those rules. Every problem is a
RequestError naming the field, answered as {"error": {"kind", "field", "message"}}.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from perank_jax.serve.settings import ServeSettings


class RequestError(ValueError):
    """A request the server refuses: HTTP status, error kind, the field at fault, a message."""

    def __init__(self, status: int, kind: str, field: str | None, message: str, headers: dict | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.status, self.kind, self.field, self.message = status, kind, field, message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"kind": self.kind, "field": self.field, "message": self.message}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)


class Document(_Strict):
    text: str | None = Field(None, description="the passage text (may be left out when `id` is in the "
                                                "server's embedding cache)")
    id: str | None = Field(None, description="document id: looked up in the embedding cache (--embeddings)")


class RerankRequest(_Strict):
    query: str
    documents: list[str | Document] = Field(description="candidates, in first-stage order")
    top_n: int | None = Field(None, ge=1, description="return only the best n (default: all)")
    return_documents: bool = Field(False, description="echo each document in its result")
    model: str | None = Field(None, description="accepted for client compatibility; the server has one model")


class RerankResult(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float = Field(description="(n - rank) / n: 1.0 for the best, monotone with the ranking")
    document: dict | None = None


class Usage(BaseModel):
    processed_tokens: int
    generated_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: Usage
    meta: dict = Field(description="latency_ms (queue, compute, total), batch_size, mode, window, stride")


class TEIRequest(_Strict):
    query: str
    texts: list[str]
    return_text: bool = False
    raw_scores: bool = False            # accepted (TEI clients send it); scores are always (n - rank) / n
    truncate: bool | None = None        # accepted; the encoder always truncates at its max_length


class TEIResult(BaseModel):
    index: int
    score: float
    text: str | None = None


FIELD_NAMES = {name for m in (Document, RerankRequest, TEIRequest) for name in m.model_fields}


def field_path(loc) -> str:
    """pydantic's error location -> "documents[2].text" (the body prefix and union tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in FIELD_NAMES:
            out += f".{part}" if out else part
    return out or "body"


def describe(errors) -> tuple[str, str]:
    """(field, message) for pydantic's errors: the deepest error under the first field at fault; a
    document that fits neither shape is told both."""
    top = field_path(errors[0]["loc"]).split("[")[0].split(".")[0]
    mine = [(field_path(e["loc"]), e["msg"]) for e in errors if field_path(e["loc"]).startswith(top)]
    field, msg = max(mine, key=lambda fm: fm[0].count(".") + fm[0].count("["))
    if sum(f == field for f, _ in mine) > 1:
        msg = 'must be a string or an object {"text": ..., "id": ...}'
    return field, msg


def check_query(query: str, tokenizer, settings: ServeSettings) -> None:
    if not query.strip():
        raise RequestError(422, "invalid_request", "query", "is empty")
    n = len(tokenizer(query, add_special_tokens=False)["input_ids"])
    if n > settings.max_query_tokens:
        raise RequestError(422, "invalid_request", "query",
                           f"has {n} tokens, more than this server's limit of {settings.max_query_tokens}")


def check_documents(documents, settings: ServeSettings, cache_index, field: str = "documents"):
    """[(text, docid or None)] for the ranker, or RequestError naming the first bad document.
    A document given by id alone must be in the embedding cache (`cache_index`: docid -> row)."""
    if not documents:
        raise RequestError(422, "invalid_request", field, "is empty: give at least one document")
    if len(documents) > settings.max_documents:
        raise RequestError(422, "too_many_documents", field,
                           f"has {len(documents)} documents, more than this server's limit of "
                           f"{settings.max_documents}")
    out = []
    for i, d in enumerate(documents):
        text, docid = (d, None) if isinstance(d, str) else (d.text, d.id)
        where = f"{field}[{i}]" if isinstance(d, str) else f"{field}[{i}].text"
        if text is None:
            if docid is None:
                raise RequestError(422, "invalid_request", f"{field}[{i}]", "needs a `text` or an `id`")
            if cache_index is None:
                raise RequestError(422, "invalid_request", where,
                                   "is missing, and the server has no embedding cache (--embeddings) to look "
                                   "the id up in")
            if docid not in cache_index:
                raise RequestError(422, "unknown_document", f"{field}[{i}].id",
                                   f"{docid!r} is not in the server's embedding cache; send its text")
            text = ""
        elif not text.strip():
            raise RequestError(422, "invalid_request", where, "is empty")
        elif len(text) > settings.max_text_chars:
            raise RequestError(422, "text_too_long", where,
                               f"has {len(text)} characters, more than this server's limit of "
                               f"{settings.max_text_chars}")
        out.append((text, docid))
    return out
