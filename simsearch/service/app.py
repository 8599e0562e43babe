"""The FastAPI application behind ``simsearch serve``.

``Service`` holds what is kept warm: a ``Searcher`` per collection (loaded once; ``reload_if_newer`` before each
request picks up what ``index`` committed since, for the price of one ``stat``) and the encoders of the model
folders named at start. ``create_app`` puts the HTTP API and the web page over it.

Requests run on the server's thread pool: receiving uploads, reading thumbnails and writing answers run in
parallel; what uses an encoder (decoding the uploads, the forward pass, the FAISS search) takes turns under one
lock — one copy of each model, never one per thread, and a GPU that serves one batch at a time.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import os
import queue
import re
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simsearch import __version__
from simsearch.errors import CollectionNotFound, ImageError, SimsearchError, UsageError, option
from simsearch.io import ChannelTally, channel_rule, check_rule
from simsearch.models.encoder import Encoder
from simsearch.search import QueryResult, Searcher
from simsearch.store.collection import NAME_PATTERN, Collection
from simsearch.verification import Verifier, load_encoder, operating_point, verdict_json

log = logging.getLogger("simsearch.serve")

STATIC = Path(__file__).with_name("static")
#: The most a request body may hold (all its images and the multipart framing), unless the server says otherwise.
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: The most images one request may upload.
MAX_FILES = 64
#: The most neighbours one query may ask for.
MAX_K = 1000
#: The longer side of a thumbnail, in pixels.
THUMB_SIDE = 160
#: Paths open without the token: the health check and the page's own files (which hold no data).
OPEN_PATHS = ("/health", "/")
#: The ``channels`` field of the endpoints that embed uploads (``io.channels``), as the command line's ``--channels``.
CHANNELS_DESCRIPTION = (
    "An image whose colour differs from the model's input: convert (colour to grey by luminance, grey to colour by "
    "repeating its channel) or strict (refuse it: 415)."
)


def _channels_json(tally: ChannelTally) -> dict[str, Any]:
    """What the channel rule did to a request's images (``ChannelTally.to_json``), as ``verify --json`` says it."""
    return tally.to_json()


class HideTokens(logging.Filter):
    """Blanks ``token=…`` in the access log's request lines: the page puts the token on its image URLs."""

    PATTERN = re.compile(r"([?&])token=[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.PATTERN.sub(r"\1token=…", arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


class Unauthorized(SimsearchError):
    """A request without the server's token."""

    http_status = 401


@dataclass(eq=False)
class _Query:
    """Queries of one request, waiting for the inference thread."""

    name: str
    images: list[bytes]
    names: list[str]
    k: int
    future: Future[tuple[Searcher, list[QueryResult]]] = field(default_factory=Future)
    channels: str = "convert"  # the channel rule (``io.channels``) for its images


@dataclass(eq=False)
class _Call:
    """Other work that uses an encoder (verify, embed), waiting for the inference thread."""

    work: Callable[[], Any]
    future: Future[Any] = field(default_factory=Future)


class Inference:
    """The one thread that runs encoders: requests hand it their work and wait for the answer. Queries that are
    waiting together for the same collection and k are answered together — one decode pass, one forward pass and
    one FAISS search for up to ``max_images`` images — so concurrent clients share the work instead of queueing
    for it; each request still gets exactly its own answer, or its own error."""

    def __init__(self, service: Service, max_images: int = 256) -> None:
        self.service, self.max_images = service, max_images
        self.jobs: queue.SimpleQueue[_Query | _Call | None] = queue.SimpleQueue()
        self.batches = 0  # searches run (a batch that failed is run again request by request)
        self.thread = threading.Thread(target=self._loop, name="simsearch-inference", daemon=True)
        self.thread.start()

    async def query(
        self, name: str, images: list[bytes], names: list[str], k: int, channels: str = "convert"
    ) -> tuple[Searcher, list[QueryResult]]:
        job = _Query(name, images, names, k, channels=channels)
        self.jobs.put(job)
        return await asyncio.wrap_future(job.future)

    async def call(self, work: Callable[[], Any]) -> Any:
        job = _Call(work)
        self.jobs.put(job)
        return await asyncio.wrap_future(job.future)

    def close(self) -> None:
        self.jobs.put(None)

    def _loop(self) -> None:
        pending: deque[_Query | _Call | None] = deque()
        while True:
            job = pending.popleft() if pending else self.jobs.get()
            if job is None:
                return
            if isinstance(job, _Call):
                _settle(job.future, job.work)
                continue
            while True:  # everything waiting now
                try:
                    pending.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            batch, rest, count = [job], deque[_Query | _Call | None](), len(job.images)
            for other in pending:
                fits = (
                    isinstance(other, _Query)
                    and (other.name, other.k, other.channels) == (job.name, job.k, job.channels)
                    and count + len(other.images) <= self.max_images
                )
                if fits:
                    assert isinstance(other, _Query)
                    batch.append(other)
                    count += len(other.images)
                else:
                    rest.append(other)
            pending = rest
            self._answer(batch)

    def _answer(self, batch: list[_Query]) -> None:
        self.batches += 1
        first = batch[0]
        try:
            searcher = self.service.searcher(first.name)
            images = [image for job in batch for image in job.images]
            names = [name for job in batch for name in job.names]
            with channel_rule(first.channels):
                results = searcher.query_files(images, first.k, names=names)
        except Exception as exc:
            if len(batch) == 1:
                first.future.set_exception(exc)
                return
            for job in batch:  # one request's bad image fails that request only
                self._answer([job])
            return
        start = 0
        for job in batch:
            job.future.set_result((searcher, results[start : start + len(job.images)]))
            start += len(job.images)


def _settle(future: Future[Any], work: Callable[[], Any]) -> None:
    try:
        future.set_result(work())
    except Exception as exc:
        future.set_exception(exc)


class Service:
    """The collections under ``home`` (only ``names``, when given) and the model folders ``models``, kept warm.

    Every collection found at start is loaded then; one that appears under ``home`` later is loaded on its first
    request. A collection named in ``names`` that cannot be loaded fails the start; one found by looking under
    ``home`` is reported in the log and answers its error to each request until it can be loaded."""

    def __init__(
        self,
        home: Path,
        names: Sequence[str] | None = None,
        models: Sequence[Path] = (),
        device: str = "auto",
        use_gpu: bool = True,
    ) -> None:
        self.home = Path(home)
        self.names = None if names is None else list(dict.fromkeys(names))
        self.device, self.use_gpu = device, use_gpu
        for name in self.names or []:
            if not NAME_PATTERN.match(name):
                raise UsageError(
                    f"'{name}' is not a collection name under {self.home}",
                    remedy=f"name collections under {option('home')} (letters, digits, '.', '_', '-')",
                )
        self._searchers: dict[str, Searcher] = {}
        self._described: dict[str, tuple[int, dict[str, Any]]] = {}
        self._load_lock = threading.Lock()
        self.models: dict[str, Encoder] = {}
        for folder in models:
            key = Path(folder).name
            if key in self.models:
                raise UsageError(f"two model folders are named '{key}'", remedy="give each model folder its own name")
            self.models[key] = load_encoder(str(folder), None, self.home, device)[0]
        for name in self.collection_names():
            try:
                self.searcher(name)
            except SimsearchError as exc:
                if self.names is not None:
                    raise
                log.warning("collection %s is not served until it can be loaded: %s", name, exc)
        self.inference = Inference(self)

    def collection_names(self) -> list[str]:
        """The collections served: ``names``, or every collection under ``home`` now."""
        if self.names is not None:
            return list(self.names)
        try:
            entries = sorted(self.home.iterdir())
        except OSError:
            return []
        return [p.name for p in entries if NAME_PATTERN.match(p.name) and Collection(p).exists()]

    def _unknown(self, name: str) -> CollectionNotFound:
        served = ", ".join(self.collection_names()) or "none yet"
        return CollectionNotFound(f"no collection named '{name}' is served", remedy=f"ask for one of: {served}")

    def searcher(self, name: str) -> Searcher:
        """The warm searcher of collection ``name``, switched to its newest committed generation."""
        if not NAME_PATTERN.match(name) or (self.names is not None and name not in self.names):
            raise self._unknown(name)
        searcher = self._searchers.get(name)
        if searcher is None:
            with self._load_lock:
                searcher = self._searchers.get(name)
                if searcher is None:
                    collection = Collection(self.home / name)
                    if not collection.exists():
                        raise self._unknown(name)
                    searcher = Searcher(collection, use_gpu=self.use_gpu, device=self.device)
                    self._searchers[name] = searcher
            return searcher
        try:
            searcher.reload_if_newer()
        except (SimsearchError, OSError) as exc:  # keep answering from the generation held
            log.warning(
                "collection %s: kept generation %d, the newer one did not load: %s", name, searcher.generation, exc
            )
        return searcher

    def describe(self, name: str) -> dict[str, Any]:
        """What ``simsearch info --json`` prints for collection ``name`` (worked out once per generation)."""
        searcher = self.searcher(name)
        known = self._described.get(name)
        if known is None or known[0] != searcher.generation:
            manifest, skipped = searcher.collection.inspect()
            assert skipped is not None
            known = (int(manifest["generation"]), searcher.collection.describe(manifest, skipped.num_rows))
            self._described[name] = known
        return known[1]

    def encoder_for(self, model: str | None, name: str | None) -> tuple[Encoder, str]:
        """The encoder ``verify`` uses: a model folder named at start (``model``), or a collection's (``name``)."""
        if model is not None and name is not None:
            raise UsageError(f"give either {option('model')} or {option('name')}, not both")
        if model is not None:
            if model not in self.models:
                served = ", ".join(self.models) or "none (the server was started without model folders)"
                raise CollectionNotFound(f"no model named '{model}' is served", remedy=f"ask for one of: {served}")
            return self.models[model], f"model {model}"
        if name is None:
            raise UsageError(f"say which encoder decides: {option('name')} (a collection) or {option('model')}")
        return self.searcher(name).encoder, f"collection {name}"

    def indexed_file(self, name: str, image_id: int) -> Path:
        """The file collection ``name`` indexed as ``image_id``; never a path the collection did not index."""
        g = self.searcher(name).current
        rows = np.flatnonzero(g.ids == image_id)
        if rows.size == 0:
            raise CollectionNotFound(
                f"collection '{name}' has no image {image_id}", remedy="use an id a query returned"
            )
        row = int(rows[0])
        root, relative = (str(g.meta.column(c)[row].as_py()) for c in ("root", "path"))
        path = Path(root, relative)
        real_root, real_path = os.path.realpath(root), os.path.realpath(path)
        if os.path.commonpath([real_root, real_path]) != real_root:
            raise CollectionNotFound(
                f"image {image_id} now leads outside its folder", remedy=f"index the folder again ({relative})"
            )
        if not path.is_file():
            raise CollectionNotFound(
                f"image {image_id} ({relative}) is no longer on disk", remedy="index the folder again to forget it"
            )
        return path


async def _uploads(files: Sequence[UploadFile]) -> tuple[list[bytes], list[str]]:
    """The uploaded images' bytes (held in memory: the body limit bounds them) and their names."""
    return [await upload.read() for upload in files], [_upload_name(u.filename, n) for n, u in enumerate(files)]


def _upload_name(filename: str | None, n: int) -> str:
    """An upload's name as the client gave it, without any folders; ``upload-N`` when it gave none."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return base or f"upload-{n}"


@lru_cache(maxsize=2048)
def _thumbnail(path: str, mtime_ns: int, size: int) -> bytes:
    """A PNG thumbnail of ``path`` (cached while the file's modification time stays the same)."""
    from PIL import Image

    from simsearch.io.decode import decode_image, read_file

    image = decode_image(read_file(Path(path)), name=Path(path).name)
    image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _media_type(path: Path) -> str:
    """The MIME type of an image file, from its header."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return Image.MIME.get(image.format or "", "application/octet-stream")
    except Exception:  # an indexed file that no longer decodes: send its bytes as they are
        return "application/octet-stream"


def _error(status: int, error: str, remedy: str | None) -> JSONResponse:
    return JSONResponse({"error": error, "remedy": remedy}, status_code=status)


def _validation_text(exc: RequestValidationError) -> tuple[str, str]:
    problems = []
    for problem in exc.errors():
        where = [str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path")]
        field = ".".join(where) or "request"
        if problem.get("type") == "missing" and problem.get("loc", ("",))[0] == "body":
            problems.append(f"no '{field}' field: send each image as a multipart/form-data field named '{field}'")
        else:
            problems.append(f"{field}: {problem.get('msg', 'invalid')}")
    return "; ".join(problems), "fix the request as said and send it again (the API: GET /openapi.json)"


_HTTP_REMEDIES = {
    404: "see GET /openapi.json for the API, or open / for the page",
    405: "see GET /openapi.json for the methods of each path",
    413: "send fewer or smaller images per request (the limit is set when the server starts)",
}


class TokenGuard:
    """Refuses (401) every request without the token but those to ``OPEN_PATHS`` and ``/static/``: given as
    ``Authorization: Bearer TOKEN`` or as ``?token=TOKEN`` (for ``<img>`` sources), compared in constant time."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith("/static/"):
            await self.app(scope, receive, send)
            return
        if not self._authorised(scope):
            response = _error(
                401,
                "this server needs its access token",
                "send 'Authorization: Bearer TOKEN' (or ?token=TOKEN) with the token the server was started with",
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        given: list[bytes] = []
        for key, value in scope.get("headers", []):
            if key == b"authorization" and value[:7].lower() == b"bearer ":
                given.append(value[7:].strip())
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given += [value.encode("latin-1") for value in query.get("token", [])]
        return any(hmac.compare_digest(value, self.token) for value in given)


class BodyLimit:
    """Refuses (413) a request body over ``limit`` bytes: at once when its ``Content-Length`` says so (nothing of it
    is read), or as soon as the bytes received pass the limit (a body sent in chunks)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413)  # answered by the app's handler, as every error
            return message

        await self.app(scope, counted, send)


def _too_large(limit: int) -> JSONResponse:
    return _error(413, f"the request body is over the {limit:,}-byte limit", _HTTP_REMEDIES[413])


def create_app(
    home: Path,
    names: Sequence[str] | None = None,
    models: Sequence[Path] = (),
    token: str | None = None,
    device: str = "auto",
    use_gpu: bool = True,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The service's ASGI application over the collections under ``home`` (see ``Service``); ``token``: every
    request but the health check and the page's files must carry it."""
    service = Service(home, names, models, device=device, use_gpu=use_gpu)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.inference.close()  # the server stops: so does its inference thread

    app = FastAPI(
        lifespan=lifespan,
        title="simsearch",
        version=__version__,
        description="Offline image similarity search: query collections, verify pairs.",
        docs_url=None,  # the interactive docs load scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
        form_limits={"max_files": MAX_FILES, "max_fields": 16},
    )
    app.state.service = service

    @app.exception_handler(SimsearchError)
    async def library_error(request: Request, exc: SimsearchError) -> JSONResponse:
        return JSONResponse(exc.to_json(), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, *_validation_text(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            what = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 413:
            return _too_large(max_upload_bytes)
        else:
            what = str(exc.detail)
        remedy = _HTTP_REMEDIES.get(exc.status_code, f"send images as multipart/form-data fields, at most {MAX_FILES}")
        return _error(exc.status_code, what, remedy)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__})", "see the server's log; the server keeps serving")

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Whether the server answers (never needs the token)."""
        return {"status": "ok", "version": __version__, "collections": len(service.collection_names())}

    @app.get("/collections")
    def collections() -> dict[str, list[str]]:
        """The names of the collections served, and of the model folders ``verify`` may use."""
        return {"collections": service.collection_names(), "models": list(service.models)}

    @app.get("/collections/{name}")
    def info(name: str) -> dict[str, Any]:
        """What ``simsearch info --json`` prints for the collection."""
        return service.describe(name)

    @app.post("/collections/{name}/query")
    async def query(
        name: str,
        file: Annotated[list[UploadFile], File(description="One or more images, each a field named 'file'.")],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="Number of neighbours.")] = 9,
        open_set: Annotated[bool, Query(description="Answer 'unknown' beyond the threshold.")] = False,
        threshold: Annotated[str, Query(description="auto, or a distance (open set).")] = "auto",
        far: Annotated[float | None, Query(description="Open set: the false accept rate to hold.")] = None,
        channels: Annotated[str, Query(description=CHANNELS_DESCRIPTION)] = "convert",
    ) -> list[dict[str, Any]]:
        """What ``simsearch query --json`` prints for the uploaded images: one result per image, in order."""
        check_rule(channels)
        images, names = await _uploads(file)
        searcher, results = await service.inference.query(name, images, names, k, channels)
        if open_set:
            point = operating_point(searcher.encoder, threshold, far)
            for result in results:
                result.hold_to(point.threshold)
        return [result.to_json() for result in results]

    @app.post("/verify")
    async def verify(
        a: Annotated[UploadFile, File(description="The first image.")],
        b: Annotated[UploadFile, File(description="The second image.")],
        name: Annotated[str | None, Query(description="Decide with this collection's encoder.")] = None,
        model: Annotated[str | None, Query(description="Or with this model folder's (named at start).")] = None,
        threshold: Annotated[str, Query(description="auto, or a distance.")] = "auto",
        far: Annotated[float | None, Query(description="The false accept rate to hold.")] = None,
        channels: Annotated[str, Query(description=CHANNELS_DESCRIPTION)] = "convert",
        convert: Annotated[bool | None, Query(description="The older spelling: true is channels=convert.")] = None,
    ) -> dict[str, Any]:
        """What ``simsearch verify --json`` prints for the two uploaded images (``channels``: what the channel rule
        did to them)."""
        rule = check_rule("strict" if convert is False else channels)
        images, names = await _uploads([a, b])

        def decide() -> dict[str, Any]:
            encoder, source = service.encoder_for(model, name)
            point = operating_point(encoder, threshold, far)
            with channel_rule(rule) as tally:
                verdict = Verifier(encoder).verify(images[0], images[1], point, names=(names[0], names[1]))
            return verdict_json(verdict, point, source) | {"channels": _channels_json(tally)}

        return dict(await service.inference.call(decide))

    @app.post("/collections/{name}/embed")
    async def embed(
        name: str,
        file: Annotated[list[UploadFile], File(description="One or more images, each a field named 'file'.")],
        channels: Annotated[str, Query(description=CHANNELS_DESCRIPTION)] = "convert",
    ) -> dict[str, Any]:
        """The collection's encoder's embeddings of the uploaded images, for clients that keep their own index."""
        from simsearch.embedding import embed_files

        check_rule(channels)
        images, names = await _uploads(file)

        def run() -> dict[str, Any]:
            encoder = service.searcher(name).encoder
            with channel_rule(channels) as tally:
                embedded = embed_files(encoder, images, names=names, strict=True)
            flags, converted = embedded.unfamiliar, set(embedded.converted)
            rows = zip(embedded.kept, embedded.embeddings, strict=True)
            return {
                "collection": name,
                "encoder": encoder.fingerprint,
                "metric": encoder.metric,
                "dim": encoder.dim,
                "embeddings": [
                    {
                        "name": names[n],
                        "embedding": row.tolist(),
                        "unfamiliar": None if flags is None else bool(flags[i]),
                        "converted": n in converted,
                    }
                    for i, (n, row) in enumerate(rows)
                ],
                "channels": _channels_json(tally),
            }

        return dict(await service.inference.call(run))

    @app.get("/collections/{name}/images/{image_id}")
    def image(
        name: str,
        image_id: int,
        thumb: Annotated[bool, Query(description=f"A PNG at most {THUMB_SIDE} pixels on its longer side.")] = False,
    ) -> Response:
        """An image the collection indexed (by the id a query returned), or its thumbnail."""
        path = service.indexed_file(name, image_id)
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=60"}
        if thumb:
            try:
                data = _thumbnail(str(path), path.stat().st_mtime_ns, THUMB_SIDE)
            except ImageError as exc:
                raise ImageError(exc.what, file=f"image {image_id}", remedy="index the folder again") from None
            return Response(data, media_type="image/png", headers=headers)
        return FileResponse(path, media_type=_media_type(path), headers=headers)

    @app.api_route("/collections/{name}/map", methods=["GET", "HEAD"])
    def latent_map(name: str) -> FileResponse:
        """The collection's latent map, the page ``simsearch map --name C`` writes into the collection's folder."""
        from simsearch.latent.map import MAP_FILES, collection_map_dir
        from simsearch.latent.map_page import CSP

        folder = service.searcher(name).collection.path
        page = collection_map_dir(folder) / MAP_FILES["html"]
        inside = os.path.realpath(page) == os.path.join(os.path.realpath(folder), page.parent.name, page.name)
        if not (inside and page.is_file()):  # never another file, through a link or otherwise
            raise CollectionNotFound(
                f"no map built for collection '{name}'", remedy=f"build it with simsearch map {option('name', name)}"
            )
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache", "Content-Security-Policy": CSP}
        return FileResponse(page, media_type="text/html", headers=headers)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, limit=max_upload_bytes)
    if token:  # added last, so it runs first: nothing of a request without the token is read
        app.add_middleware(TokenGuard, token=token)
        access = logging.getLogger("uvicorn.access")
        if not any(isinstance(f, HideTokens) for f in access.filters):
            access.addFilter(HideTokens())
    return app
