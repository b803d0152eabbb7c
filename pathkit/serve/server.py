"""``pathkit serve``: an OpenAI-compatible HTTP server (FastAPI + uvicorn) in front of :class:`Engine`.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream`` true or false), ``GET /health``.
A chat request is the OpenAI one: ``messages`` with ``system`` / ``user`` / ``assistant`` roles, user content a
string or ``text`` and ``image_url`` parts; ``max_tokens`` (or ``max_completion_tokens``), ``temperature``
(OpenAI's default 1; 0 is greedy), ``top_p``, ``seed``, ``stop``, ``n`` (1 only). The conversation is written
in the model's chat template exactly as training wrote it (:mod:`pathkit.models.conversation`); a system message
is put in front of the first user message, since pathkit's templates carry their own system prompt. An image
goes where LLaVA puts it: ``<image>\\n`` before the text of its message.

Every bad request gets HTTP 400 and an OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``;
nothing a request sends can stop the server.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pathkit.io import PathkitError
from pathkit.models.conversation import get_template, tokenize_prompt
from pathkit.serve.engine import Engine, Generation, ServedModel
from pathkit.serve.images import ImageLimits, RequestError, load_visual

# Lazy imports: uvicorn (uvicorn, only when serving). They load inside the functions that need them, not when
# this module is imported.


@dataclass
class ServerSettings:
    """What the server accepts; the defaults suit one user on one machine."""

    model_id: str
    image_root: Path | None = None
    limits: ImageLimits = field(default_factory=ImageLimits)
    default_max_tokens: int = 256
    max_tokens_limit: int = 4096


@dataclass
class ParsedChat:
    """A validated chat request, ready for the engine."""

    question: str
    history: list[dict[str, str]]
    kind: str
    visual: Any
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    stream: bool
    include_usage: bool


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(f"{key}: must be a number in [{low}, {high}], got {value!r}", key, "invalid_value")
    return float(value)


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise RequestError(f"{where}.content: must be a string or a list of content parts", f"{where}.content")
    for k, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
            raise RequestError(f"{where}.content[{k}]: a part must be {{'type': 'text'|'image_url', ...}}",
                               f"{where}.content[{k}]")
    return content


def parse_chat(body: Any, served: ServedModel, settings: ServerSettings) -> ParsedChat:
    """Validate an OpenAI chat-completions body; :class:`RequestError` names the first bad field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: must be a non-empty list", "messages")
    if body.get("n", 1) not in (1, None):
        raise RequestError("n: only 1 completion per request", "n", "invalid_value")
    system: list[str] = []
    turns: list[dict[str, str]] = []
    visuals: list[tuple[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            raise RequestError(f"{where}.role: must be system, user or assistant", f"{where}.role")
        role = message["role"]
        parts = _parts(message.get("content"), where)
        text = "".join(p.get("text") or "" for p in parts if p["type"] == "text")
        if role in ("system", "developer"):
            if turns:
                raise RequestError(f"{where}: a system message must come before the conversation", where)
            system.append(text)
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise RequestError(f"{where}.role: expected {expected} (turns alternate, starting with user)",
                               f"{where}.role")
        images = [p for p in parts if p["type"] == "image_url"]
        if images and role == "assistant":
            raise RequestError(f"{where}: an assistant message cannot carry an image", where)
        if images:
            if served.vision == "none":
                raise RequestError("this model takes no images", f"{where}.content", "images_not_supported")
            if visuals or len(images) > 1:
                raise RequestError("at most one image per request", f"{where}.content", "too_many_images")
            spec = images[0].get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str) or not url:
                raise RequestError(f"{where}.content: image_url needs a 'url'", f"{where}.content")
            visuals.append(load_visual(url, settings.image_root, served.vision, f"{where}.content",
                                       settings.limits))
            text = "<image>\n" + text
        elif "<image>" in text:
            raise RequestError(f"{where}.content: the text contains '<image>'; send images as image_url parts",
                               f"{where}.content")
        turns.append({"from": "human" if role == "user" else "gpt", "value": text})
    if not turns or turns[-1]["from"] != "human":
        raise RequestError("messages: the last message must be from the user", "messages")
    if system:
        turns[0] = {**turns[0], "value": "\n".join(system) + "\n\n" + turns[0]["value"]}
    if served.vision != "none" and not visuals:
        what = "an image" if served.vision == "image" else "a slide feature file (.h5 path under --image-root)"
        raise RequestError(f"this model needs {what} in a user message's image_url part", "messages",
                           "image_required")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = settings.default_max_tokens if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= settings.max_tokens_limit:
        raise RequestError(f"max_tokens: must be an integer in [1, {settings.max_tokens_limit}], got {max_tokens!r}",
                           "max_tokens", "invalid_value")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop: a string or a list of up to 4 non-empty strings", "stop", "invalid_value")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("seed: must be an integer", "seed", "invalid_value")
    options = body.get("stream_options") or {}
    kind, visual = visuals[0] if visuals else ("none", None)
    return ParsedChat(
        question=turns[-1]["value"], history=turns[:-1], kind=kind, visual=visual, max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
        seed=seed, stop=stop, stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")))


class _Stream:
    """Turns the worker's token events into cleaned text deltas on an asyncio queue.

    The text so far is cut at the template's stop strings and the request's ``stop``; what could still be the
    start of a stop string, trailing whitespace and half a UTF-8 character are held back, so the deltas always
    join up to exactly the final, cleaned answer."""

    def __init__(self, served: ServedModel, stop: list[str], loop: asyncio.AbstractEventLoop):
        self.served = served
        self.stops = list(get_template(served.template).stop_strings) + stop
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.tokens: list[int] = []
        self.sent = ""
        self.prompt_tokens = 0
        self.cancelled = False

    def text(self, final: bool) -> tuple[str, bool]:
        """(cleaned text safe to show, whether a stop string was met)."""
        text = self.served.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        hit = False
        for s in self.stops:
            cut = text.find(s)
            if cut >= 0:
                text, hit = text[:cut], True
        if final or hit:
            return text.strip(), hit
        if text.endswith("\ufffd"):
            text = text.rstrip("\ufffd")
        for s in self.stops:  # hold back a suffix that may grow into a stop string
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    text = text[:-k]
                    break
        return text.rstrip(), False

    def on_event(self, kind: str, value: Any) -> Any:  # worker thread
        if kind == "token":
            self.tokens.append(value)
            safe, hit = self.text(final=False)
            if safe.startswith(self.sent) and len(safe) > len(self.sent):
                delta, self.sent = safe[len(self.sent):], safe
                self.loop.call_soon_threadsafe(self.queue.put_nowait, ("delta", delta))
            return not (hit or self.cancelled)
        if kind == "start":
            self.prompt_tokens = value
        if kind == "done":
            final, _ = self.text(final=True)
            if final.startswith(self.sent) and len(final) > len(self.sent):
                self.loop.call_soon_threadsafe(self.queue.put_nowait, ("delta", final[len(self.sent):]))
                self.sent = final
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        return None


def create_app(engine: Engine, settings: ServerSettings):
    """The FastAPI application (``uvicorn.run(create_app(...))``)."""
    served = engine.model
    app = FastAPI(title="pathkit serve", docs_url=None, redoc_url=None)
    created = int(time.time())

    def error(err: RequestError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error(RequestError(str(exc.detail), code="not_found" if exc.status_code == 404 else None,
                                  status=exc.status_code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error(RequestError(f"invalid request: {exc.errors()[:1]}"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_id, "batches": engine.batches}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_id, "object": "model", "created": created,
                                            "owned_by": "pathkit"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(RequestError("the request body is not valid JSON"))
        model_name = body.get("model") if isinstance(body, dict) else None
        if model_name not in (None, settings.model_id):
            return error(RequestError(f"model {model_name!r} is not served here; GET /v1/models lists "
                                      f"{settings.model_id!r}", "model", "model_not_found", status=404))
        try:
            chat = await asyncio.to_thread(parse_chat, body, served, settings)  # image decoding off the loop
            prompt = tokenize_prompt(chat.question, served.tokenizer, served.template, history=chat.history)
        except RequestError as err:
            return error(err)
        stream = _Stream(served, chat.stop, asyncio.get_running_loop())
        engine.submit(Generation(prompt, chat.kind, chat.visual, chat.max_tokens, chat.temperature, chat.top_p,
                                 chat.seed, stream.on_event))
        kind, value = await stream.queue.get()  # "start" or "error": the status is known before any byte
        if kind == "error":
            return error(value)
        cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not chat.stream:
            finish = "stop"
            while True:
                kind, value = await stream.queue.get()
                if kind == "error":
                    return error(value)
                if kind == "done":
                    finish = value
                    break
            usage = {"prompt_tokens": stream.prompt_tokens, "completion_tokens": len(stream.tokens),
                     "total_tokens": stream.prompt_tokens + len(stream.tokens)}
            return {"id": cid, "object": "chat.completion", "created": now, "model": settings.model_id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": stream.sent},
                                 "finish_reason": finish, "logprobs": None}], "usage": usage}

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict | None = None) -> str:
            payload = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": settings.model_id,
                       "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish,
                                                     "logprobs": None}]}
            if usage:
                payload["usage"] = usage
            return f"data: {json.dumps(payload)}\n\n"

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    kind, value = await stream.queue.get()
                    if kind == "delta":
                        yield chunk({"content": value})
                    elif kind == "error":
                        yield f"data: {json.dumps(value.body())}\n\n"
                        break
                    elif kind == "done":
                        yield chunk({}, finish=value)
                        if chat.include_usage:
                            yield chunk({}, usage={"prompt_tokens": stream.prompt_tokens,
                                                   "completion_tokens": len(stream.tokens),
                                                   "total_tokens": stream.prompt_tokens + len(stream.tokens)})
                        break
                yield "data: [DONE]\n\n"
            finally:
                stream.cancelled = True  # a client that went away frees its batch row at the next token

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 8000, image_root: str | Path | None = None,
          max_batch: int = 8, model_id: str | None = None, template: str | None = None, device: str = "cpu",
          dtype: str | None = None, max_image_bytes: int = 20 * 1024 * 1024, log_level: str = "warning") -> None:
    """Load ``model`` and serve it until interrupted (see the module docstring)."""
    import uvicorn

    root = None
    if image_root is not None:
        root = Path(image_root).expanduser().resolve()
        if not root.is_dir():
            raise PathkitError(f"--image-root {image_root}: not a folder")
    served = ServedModel(model, template=template, device=device, dtype=dtype)
    engine = Engine(served, max_batch=max_batch)
    settings = ServerSettings(model_id=model_id or Path(str(model)).name, image_root=root,
                              limits=ImageLimits(max_bytes=max_image_bytes))
    print(f"pathkit serve: {settings.model_id} ({served.vision} model, template {served.template}) on "
          f"http://{host}:{port}/v1", flush=True)
    try:
        uvicorn.run(create_app(engine, settings), host=host, port=port, log_level=log_level)
    finally:
        engine.close()
