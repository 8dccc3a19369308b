"""The quickstart bookstore backend: a grpc.aio server over an in-memory store of shelves and books.

Run from anywhere: ``python examples/quickstart/server.py --port 0 --name backend-1``. Once serving it
prints exactly one line, ``bookstore listening on HOST:PORT``, to stdout; SIGTERM or SIGINT stops it
gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import csv
import importlib.util
import io
import logging
import re
import signal
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.protobuf import duration_pb2, empty_pb2, message, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

HERE = Path(__file__).resolve().parent
GENERATED = HERE / "generated"


def _ensure_generated() -> None:
    # Build the stubs on first run (or after the proto changed) so the example works without `make build`.
    pb2 = GENERATED / "bookstore" / "v1" / "bookstore_pb2.py"
    sources = [HERE.parent.parent / "protos/examples/bookstore/v1/bookstore.proto", HERE / "build.py"]
    if pb2.is_file() and all(pb2.stat().st_mtime >= src.stat().st_mtime for src in sources if src.is_file()):
        return
    spec = importlib.util.spec_from_file_location("bookstore_quickstart_build", HERE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(GENERATED)


_ensure_generated()
sys.path.insert(0, str(GENERATED))

from bookstore.v1 import bookstore_pb2 as pb  # noqa: E402
from bookstore.v1 import bookstore_pb2_grpc as pb_grpc  # noqa: E402

log = logging.getLogger("bookstore")

DOMAIN = "bookstore.example.com"
SERVED_BY_KEY = "x-bookstore-served-by"
TRAILER_KEY = "x-bookstore-trailer"
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
MAX_SLEEP_SECONDS = 60.0
MAX_STREAM_INTERVAL_MS = 60_000
MAX_SYNTHETIC_BOOKS = 10_000_000
MAX_COVER_BYTES = 4 * 1024 * 1024
MUTABLE_BOOK_FIELDS = ("author", "title", "genre", "tags", "pages")
OUTPUT_ONLY_BOOK_FIELDS = ("id", "create_time", "shelf", "publish_time", "publisher")
BOOK_NAME = re.compile(r"shelves/(?P<shelf>[1-9][0-9]{0,17}|-)/books/(?P<book>[1-9][0-9]{0,17})")


class BookstoreError(Exception):
    """A refusal with a gRPC code and google.rpc details, sent as grpc-status-details-bin."""

    def __init__(self, code: grpc.StatusCode, message: str, *details: message.Message) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details:
            status.details.add().Pack(detail)
        return (("grpc-status-details-bin", status.SerializeToString()),)

    @classmethod
    def invalid(cls, *violations: tuple[str, str]) -> BookstoreError:
        field_violations = [error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]
        message = "; ".join(f"{f}: {d}" for f, d in violations)
        return cls(
            grpc.StatusCode.INVALID_ARGUMENT, message, error_details_pb2.BadRequest(field_violations=field_violations)
        )

    @classmethod
    def not_found(cls, kind: str, name: str) -> BookstoreError:
        info = error_details_pb2.ResourceInfo(
            resource_type=f"{DOMAIN}/{kind}", resource_name=name, description=f"{kind.lower()} not found"
        )
        return cls(grpc.StatusCode.NOT_FOUND, f"{kind} {name!r} not found", info)


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def _now() -> timestamp_pb2.Timestamp:
    return _timestamp(datetime.now(UTC))


def _page_size(value: int) -> int:
    if value < 0:
        raise BookstoreError.invalid(("page_size", "must not be negative"))
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _page_scope(*parts: object) -> str:
    # Tokens are tied to the query they came from: reusing one with other filters is refused.
    return f"{zlib.crc32('|'.join(map(str, parts)).encode()):08x}"


def _encode_page_token(scope: str, last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{scope}:{last_id}".encode()).decode().rstrip("=")


def _decode_page_token(token: str, scope: str) -> int:
    """Return the id after which the page starts (0 for the first page)."""
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        token_scope, last_id = raw.split(":")
        if token_scope == scope and int(last_id) >= 0:
            return int(last_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise BookstoreError.invalid(("page_token", "invalid page token, or it belongs to a different query"))


def _paginate(items: list[Any], scope: str, page_size: int, page_token: str) -> tuple[list[Any], str]:
    after = _decode_page_token(page_token, scope)
    size = _page_size(page_size)
    rest = [item for item in items if item.id > after]
    page = rest[:size]
    token = _encode_page_token(scope, page[-1].id) if len(rest) > size else ""
    return page, token


def _positive(field: str, value: int, kind: str) -> int:
    if value <= 0:
        raise BookstoreError.invalid((field, f"must be a positive {kind} id"))
    return value


class Store:
    """Shelves and books in memory. Book ids are unique across shelves; dicts keep id order."""

    def __init__(self) -> None:
        self.shelves: dict[int, pb.Shelf] = {}
        self.books: dict[int, pb.Book] = {}
        self.covers: dict[int, httpbody_pb2.HttpBody] = {}  # by book id
        self._next_shelf = 1
        self._next_book = 1

    def add_shelf(self, theme: str, create_time: timestamp_pb2.Timestamp | None = None) -> pb.Shelf:
        theme = theme.strip()
        if not theme:
            raise BookstoreError.invalid(("shelf.theme", "must not be empty"))
        for existing in self.shelves.values():
            if existing.theme.casefold() == theme.casefold():
                info = error_details_pb2.ResourceInfo(
                    resource_type=f"{DOMAIN}/Shelf",
                    resource_name=f"shelves/{existing.id}",
                    description=f"a shelf with theme {existing.theme!r} already exists",
                )
                raise BookstoreError(grpc.StatusCode.ALREADY_EXISTS, f"shelf theme {theme!r} is taken", info)
        shelf = pb.Shelf(id=self._next_shelf, theme=theme, create_time=create_time or _now())
        self._next_shelf += 1
        self.shelves[shelf.id] = shelf
        return shelf

    def shelf(self, shelf_id: int) -> pb.Shelf:
        shelf = self.shelves.get(_positive("shelf", shelf_id, "shelf"))
        if shelf is None:
            raise BookstoreError.not_found("Shelf", f"shelves/{shelf_id}")
        return shelf

    def shelf_view(self, shelf: pb.Shelf) -> pb.Shelf:
        view = pb.Shelf()
        view.CopyFrom(shelf)
        view.book_count = sum(1 for book in self.books.values() if book.shelf == shelf.id)
        return view

    def delete_shelf(self, shelf_id: int, force: bool) -> None:
        shelf = self.shelf(shelf_id)
        book_ids = [book.id for book in self.books.values() if book.shelf == shelf.id]
        if book_ids and not force:
            violation = error_details_pb2.PreconditionFailure.Violation(
                type="NOT_EMPTY",
                subject=f"shelves/{shelf.id}",
                description=f"shelf holds {len(book_ids)} book(s); delete them first or set force",
            )
            failure = error_details_pb2.PreconditionFailure(violations=[violation])
            raise BookstoreError(grpc.StatusCode.FAILED_PRECONDITION, f"shelf {shelf.id} is not empty", failure)
        for book_id in book_ids:
            del self.books[book_id]
            self.covers.pop(book_id, None)
        del self.shelves[shelf.id]

    def add_book(self, shelf_id: int, book: pb.Book, create_time: timestamp_pb2.Timestamp | None = None) -> pb.Book:
        shelf = self.shelf(shelf_id)
        violations = _book_violations(book, MUTABLE_BOOK_FIELDS)
        if violations:
            raise BookstoreError.invalid(*violations)
        stored = pb.Book()
        for field in MUTABLE_BOOK_FIELDS:  # output-only input is ignored, as AIP-203 asks
            _copy_field(book, stored, field)
        stored.title = stored.title.strip()
        stored.id, stored.shelf = self._next_book, shelf.id
        stored.create_time.CopyFrom(create_time or _now())
        self._next_book += 1
        self.books[stored.id] = stored
        return stored

    def book(self, shelf_id: int, book_id: int) -> pb.Book:
        """Find a book; shelf_id 0 searches every shelf."""
        _positive("book", book_id, "book")
        if shelf_id:
            self.shelf(shelf_id)
        book = self.books.get(book_id)
        if book is None or (shelf_id and book.shelf != shelf_id):
            name = f"shelves/{shelf_id}/books/{book_id}" if shelf_id else f"shelves/-/books/{book_id}"
            raise BookstoreError.not_found("Book", name)
        return book


def _copy_field(source: pb.Book, target: pb.Book, field: str) -> None:
    if field == "tags":
        del target.tags[:]
        target.tags.extend(source.tags)
    else:
        setattr(target, field, getattr(source, field))


def _book_violations(book: pb.Book, fields: Iterable[str]) -> list[tuple[str, str]]:
    violations = []
    if "title" in fields and not book.title.strip():
        violations.append(("book.title", "must not be empty"))
    if "pages" in fields and book.pages < 0:
        violations.append(("book.pages", "must not be negative"))
    if "genre" in fields and book.genre not in pb.Genre.values():
        violations.append(("book.genre", f"unknown genre {book.genre}"))
    return violations


def _mask_paths(request: pb.UpdateBookRequest) -> list[str]:
    """The book fields an update applies, per AIP-134."""
    if not request.update_mask.paths:
        return [field for field in MUTABLE_BOOK_FIELDS if _is_set(request.book, field)]
    violations = []
    for path in request.update_mask.paths:
        if path in OUTPUT_ONLY_BOOK_FIELDS:
            violations.append(("update_mask", f"field {path!r} is output only and cannot be updated"))
        elif path not in MUTABLE_BOOK_FIELDS and path != "*":
            violations.append(("update_mask", f"unknown field {path!r} in update mask"))
    if violations:
        raise BookstoreError.invalid(*violations)
    if "*" in request.update_mask.paths:
        return list(MUTABLE_BOOK_FIELDS)
    return list(dict.fromkeys(request.update_mask.paths))


def _is_set(book: pb.Book, field: str) -> bool:
    value = getattr(book, field)
    return len(value) > 0 if field == "tags" else bool(value)


def _seed(store: Store) -> None:
    seeded = _timestamp(datetime(2024, 1, 1, tzinfo=UTC))
    fiction = store.add_shelf("Fiction", seeded)
    poetry = store.add_shelf("Poetry", seeded)
    books = [
        (fiction.id, "Ursula K. Le Guin", "The Left Hand of Darkness", pb.SCIENCE_FICTION, 304, ["classic", "hugo"]),
        (fiction.id, "Ursula K. Le Guin", "A Wizard of Earthsea", pb.FANTASY, 183, ["classic"]),
        (fiction.id, "George Eliot", "Middlemarch", pb.FICTION, 880, []),
        (poetry.id, "Walt Whitman", "Leaves of Grass", pb.POETRY, 145, ["classic"]),
        (poetry.id, "Sylvia Plath", "Ariel", pb.POETRY, 96, []),
    ]
    for shelf_id, author, title, genre, pages, tags in books:
        book = pb.Book(author=author, title=title, genre=genre, pages=pages, tags=tags)
        store.add_book(shelf_id, book, seeded)
    whitman = store.books[4]
    whitman.publisher = "Fowler & Wells"
    whitman.publish_time.CopyFrom(_timestamp(datetime(1855, 7, 4, tzinfo=UTC)))


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid PNG of one flat colour: the default cover, so the example needs no image files."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width  # filter type 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def _csv_row(*values: object) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue().encode()


def _stream_aborted(sent: int) -> BookstoreError:
    info = error_details_pb2.ErrorInfo(reason="STREAM_ABORTED", domain=DOMAIN, metadata={"sent": str(sent)})
    return BookstoreError(grpc.StatusCode.ABORTED, f"stream aborted after {sent} book(s) (fail_after)", info)


class BookstoreService(pb_grpc.BookstoreServicer):
    """The Bookstore gRPC service over a Store."""

    def __init__(self, store: Store, name: str, calls: Counter[str], cancelled: Counter[str] | None = None) -> None:
        self.store = store
        self.name = name
        self.calls = calls
        self.cancelled = cancelled if cancelled is not None else Counter()
        self.streamed_books = 0

    async def ListShelves(self, request: pb.ListShelvesRequest, context: Any) -> pb.ListShelvesResponse:
        shelves = list(self.store.shelves.values())
        page, token = _paginate(shelves, _page_scope("shelves"), request.page_size, request.page_token)
        views = [self.store.shelf_view(shelf) for shelf in page]
        return pb.ListShelvesResponse(shelves=views, next_page_token=token, total_size=len(shelves))

    async def CreateShelf(self, request: pb.CreateShelfRequest, context: Any) -> pb.Shelf:
        return self.store.shelf_view(self.store.add_shelf(request.shelf.theme))

    async def GetShelf(self, request: pb.GetShelfRequest, context: Any) -> pb.Shelf:
        return self.store.shelf_view(self.store.shelf(request.shelf))

    async def DeleteShelf(self, request: pb.DeleteShelfRequest, context: Any) -> empty_pb2.Empty:
        self.store.delete_shelf(request.shelf, request.force)
        return empty_pb2.Empty()

    async def ListBooks(self, request: pb.ListBooksRequest, context: Any) -> pb.ListBooksResponse:
        shelf = self.store.shelf(request.shelf)
        if request.genre not in pb.Genre.values():
            raise BookstoreError.invalid(("genre", f"unknown genre {request.genre}"))
        author = request.author.strip().casefold()
        books = [
            book
            for book in self.store.books.values()
            if book.shelf == shelf.id
            and (not request.genre or book.genre == request.genre)
            and (not author or book.author.casefold() == author)
        ]
        scope = _page_scope("books", shelf.id, request.genre, author)
        page, token = _paginate(books, scope, request.page_size, request.page_token)
        return pb.ListBooksResponse(books=page, next_page_token=token, total_size=len(books))

    async def CreateBook(self, request: pb.CreateBookRequest, context: Any) -> pb.Book:
        return self.store.add_book(request.shelf, request.book)

    async def GetBook(self, request: pb.GetBookRequest, context: Any) -> pb.Book:
        if request.shelf < 0:
            raise BookstoreError.invalid(("shelf", "must be a positive shelf id, or unset to search all shelves"))
        return self.store.book(request.shelf, request.book)

    async def UpdateBook(self, request: pb.UpdateBookRequest, context: Any) -> pb.Book:
        _positive("book.id", request.book.id, "book")
        current = self.store.book(_positive("shelf", request.shelf, "shelf"), request.book.id)
        paths = _mask_paths(request)
        updated = pb.Book()
        updated.CopyFrom(current)
        for path in paths:
            _copy_field(request.book, updated, path)
        violations = _book_violations(updated, paths)
        if violations:
            raise BookstoreError.invalid(*violations)
        updated.title = updated.title.strip()
        current.CopyFrom(updated)  # commit only after validation, so a refused update changes nothing
        return current

    async def DeleteBook(self, request: pb.DeleteBookRequest, context: Any) -> empty_pb2.Empty:
        book = self.store.book(_positive("shelf", request.shelf, "shelf"), request.book)
        del self.store.books[book.id]
        self.store.covers.pop(book.id, None)
        return empty_pb2.Empty()

    async def PublishBook(self, request: pb.PublishBookRequest, context: Any) -> pb.Book:
        book = self.store.book(_positive("shelf", request.shelf, "shelf"), request.book)
        if book.HasField("publish_time"):
            info = error_details_pb2.ErrorInfo(
                reason="BOOK_ALREADY_PUBLISHED",
                domain=DOMAIN,
                metadata={
                    "book": f"shelves/{book.shelf}/books/{book.id}",
                    "publisher": book.publisher,
                    "publish_time": book.publish_time.ToJsonString(),
                },
            )
            raise BookstoreError(grpc.StatusCode.FAILED_PRECONDITION, f"book {book.id} is already published", info)
        book.publisher = request.publisher.strip() or "Independent"
        book.publish_time.CopyFrom(_now())
        return book

    async def GetBookByName(self, request: pb.GetBookByNameRequest, context: Any) -> pb.Book:
        match = BOOK_NAME.fullmatch(request.name)
        if match is None:
            expected = "shelves/{shelf}/books/{book}"
            raise BookstoreError.invalid(("name", f"{request.name!r} is not of the form {expected}"))
        shelf = 0 if match["shelf"] == "-" else int(match["shelf"])  # "-" means any shelf (AIP-159)
        return self.store.book(shelf, int(match["book"]))

    async def Sleep(self, request: pb.SleepRequest, context: Any) -> pb.SleepResponse:
        if request.HasField("duration"):
            field, seconds = "duration", request.duration.ToNanoseconds() / 1e9
        else:
            field, seconds = "millis", request.millis / 1000
        if not 0 <= seconds <= MAX_SLEEP_SECONDS:
            raise BookstoreError.invalid((field, f"must be between 0 and {MAX_SLEEP_SECONDS:g} seconds"))
        started = time.perf_counter_ns()
        await asyncio.sleep(seconds)
        slept = duration_pb2.Duration()
        slept.FromNanoseconds(time.perf_counter_ns() - started)
        return pb.SleepResponse(slept=slept, served_by=self.name)

    async def EchoHeaders(self, request: empty_pb2.Empty, context: Any) -> pb.EchoHeadersResponse:
        received: dict[str, list[str]] = {}
        for key, value in context.invocation_metadata() or ():
            text = base64.b64encode(value).decode() if isinstance(value, bytes) else value
            received.setdefault(key, []).append(text)
        response = pb.EchoHeadersResponse(
            metadata={key: ", ".join(values) for key, values in received.items()},
            served_by=self.name,
            peer=context.peer(),
        )
        remaining = context.time_remaining()
        if remaining is not None:
            response.time_remaining.FromNanoseconds(int(remaining * 1e9))
        context.set_trailing_metadata(((TRAILER_KEY, "done"),))
        return response

    async def StreamBooks(self, request: pb.StreamBooksRequest, context: Any) -> AsyncIterator[pb.Book]:
        shelf = self.store.shelf(request.shelf)
        for field in ("limit", "count", "fail_after"):
            if getattr(request, field) < 0:
                raise BookstoreError.invalid((field, "must not be negative"))
        if not 0 <= request.interval_ms <= MAX_STREAM_INTERVAL_MS:
            raise BookstoreError.invalid(("interval_ms", f"must be between 0 and {MAX_STREAM_INTERVAL_MS}"))
        if request.count > MAX_SYNTHETIC_BOOKS:
            raise BookstoreError.invalid(("count", f"must be at most {MAX_SYNTHETIC_BOOKS}"))
        if request.count:
            books: Iterable[pb.Book] = (
                pb.Book(id=i, title=f"Synthetic book {i}", author="Bookstore", shelf=shelf.id)
                for i in range(1, request.count + 1)
            )
            total = request.count
        else:
            snapshot = [book for book in self.store.books.values() if book.shelf == shelf.id]
            books, total = snapshot, len(snapshot)
        limit = min(request.limit or total, total)
        interval = request.interval_ms / 1000
        sent = 0
        for book in books:
            if sent == limit:
                break
            if sent == request.fail_after and sent:
                raise _stream_aborted(sent)
            if sent and interval:
                await asyncio.sleep(interval)
            yield book
            sent += 1
            self.streamed_books += 1
        if sent == request.fail_after and sent:
            raise _stream_aborted(sent)

    async def ExportBooks(self, request: pb.ExportBooksRequest, context: Any) -> AsyncIterator[httpbody_pb2.HttpBody]:
        shelf = self.store.shelf(request.shelf)
        yield httpbody_pb2.HttpBody(
            content_type="text/csv; charset=utf-8", data=_csv_row("id", "title", "author", "pages")
        )
        for book in [book for book in self.store.books.values() if book.shelf == shelf.id]:
            yield httpbody_pb2.HttpBody(data=_csv_row(book.id, book.title, book.author, book.pages))

    async def ImportBooks(
        self, request_iterator: AsyncIterable[pb.CreateBookRequest], context: Any
    ) -> pb.ImportBooksResponse:
        response = pb.ImportBooksResponse()
        async for request in request_iterator:
            try:
                book = self.store.add_book(request.shelf, request.book)
            except BookstoreError as exc:
                exc.message = f"book #{response.imported_count + 1}: {exc.message}"
                raise
            response.book_ids.append(book.id)
            response.imported_count += 1
        return response

    async def Chat(
        self, request_iterator: AsyncIterable[pb.ChatMessage], context: Any
    ) -> AsyncIterator[pb.ChatMessage]:
        sequence = 0
        async for request in request_iterator:
            text = request.text.strip()
            if text == "/fail":
                raise BookstoreError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"chat ended by /fail after {sequence} answer(s)"
                )
            if text == "/count":
                answer = f"the store holds {len(self.store.books)} book(s)"
            else:
                answer = f"{request.user or 'anonymous'} said: {request.text}"
            sequence += 1
            yield pb.ChatMessage(user=self.name, text=answer, sequence=sequence, send_time=_now())

    async def GetBookCover(self, request: pb.GetBookCoverRequest, context: Any) -> httpbody_pb2.HttpBody:
        book = self.store.book(_positive("shelf", request.shelf, "shelf"), request.book)
        cover = self.store.covers.get(book.id)
        if cover is not None:
            return cover
        colour = zlib.crc32(book.title.encode()).to_bytes(4, "big")
        return httpbody_pb2.HttpBody(content_type="image/png", data=_png(16, 24, (colour[0], colour[1], colour[2])))

    async def UploadCover(self, request: pb.UploadCoverRequest, context: Any) -> pb.BookCover:
        book = self.store.book(_positive("shelf", request.shelf, "shelf"), request.book)
        content_type = request.body.content_type.split(";", 1)[0].strip().lower()
        if not content_type.startswith("image/"):
            raise BookstoreError.invalid(("body.content_type", f"must be an image type, not {content_type!r}"))
        if not request.body.data or len(request.body.data) > MAX_COVER_BYTES:
            raise BookstoreError.invalid(("body.data", f"must hold 1 to {MAX_COVER_BYTES} bytes"))
        self.store.covers[book.id] = httpbody_pb2.HttpBody(content_type=content_type, data=request.body.data)
        return pb.BookCover(book=book.id, content_type=content_type, size_bytes=len(request.body.data))

    async def GetStats(self, request: pb.GetStatsRequest, context: Any) -> pb.Stats:
        return pb.Stats(
            shelf_count=len(self.store.shelves),
            book_count=len(self.store.books),
            request_count=sum(self.calls.values()),
            method_calls=dict(self.calls),
            served_by=self.name,
            cancelled_calls=dict(self.cancelled),
            streamed_books=self.streamed_books,
        )


Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class ServedByInterceptor(grpc.aio.ServerInterceptor):
    """Counts calls (and the ones the client cancelled), sends x-bookstore-served-by on every call,
    and turns BookstoreError into a status, for every kind of method."""

    def __init__(self, name: str, calls: Counter[str], cancelled: Counter[str] | None = None) -> None:
        self.name = name
        self.calls = calls
        self.cancelled = cancelled if cancelled is not None else Counter()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rpartition("/")[2]
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }

        async def start(context: grpc.aio.ServicerContext) -> None:
            self.calls[method] += 1
            await context.send_initial_metadata(((SERVED_BY_KEY, self.name),))

        async def abort(context: grpc.aio.ServicerContext, exc: BookstoreError) -> None:
            await context.abort(exc.code, exc.message, trailing_metadata=exc.trailing_metadata())

        if handler.unary_unary is not None or handler.stream_unary is not None:
            unary_inner: Behavior = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await start(context)
                try:
                    return await unary_inner(request, context)
                except BookstoreError as exc:
                    await abort(context, exc)
                except asyncio.CancelledError:  # the client cancelled (or went away)
                    self.cancelled[method] += 1
                    raise

            if handler.unary_unary is not None:
                return grpc.unary_unary_rpc_method_handler(unary, **serializers)
            return grpc.stream_unary_rpc_method_handler(unary, **serializers)

        stream_inner: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]] = (
            handler.unary_stream or handler.stream_stream
        )

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await start(context)
            try:
                async for reply in stream_inner(request, context):
                    yield reply
            except BookstoreError as exc:
                await abort(context, exc)
            except (asyncio.CancelledError, GeneratorExit):  # the client cancelled: the stream was dropped unfinished
                self.cancelled[method] += 1
                raise

        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(stream, **serializers)
        return grpc.stream_stream_rpc_method_handler(stream, **serializers)


async def serve(
    host: str, port: int, name: str, grace: float, tls: tuple[str, str] | None = None, client_ca: str | None = None
) -> int:
    calls: Counter[str] = Counter()
    cancelled: Counter[str] = Counter()
    store = Store()
    _seed(store)
    # so_reuseport off: a second copy on the same port must fail, not split the clients with the first.
    server = grpc.aio.server(
        interceptors=[ServedByInterceptor(name, calls, cancelled)], options=[("grpc.so_reuseport", 0)]
    )
    pb_grpc.add_BookstoreServicer_to_server(BookstoreService(store, name, calls, cancelled), server)
    address = f"[{host}]" if ":" in host else host
    try:
        if tls is None:
            bound = server.add_insecure_port(f"{address}:{port}")
        else:  # TLS; with client_ca, clients must present a certificate signed by it (mutual TLS)
            cert_pem, key_pem = (Path(path).read_bytes() for path in tls)
            root = Path(client_ca).read_bytes() if client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(key_pem, cert_pem)], root_certificates=root, require_client_auth=root is not None
            )
            bound = server.add_secure_port(f"{address}:{port}", credentials)
    except RuntimeError as exc:
        bound = 0
        log.error("%s", exc)
    if not bound:
        log.error("cannot listen on %s:%d", address, port)
        return 1
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bookstore listening on {address}:{bound}", flush=True)
    await stop.wait()
    log.info("stopping (grace %.1fs)", grace)
    await server.stop(grace)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="port to listen on; 0 picks a free one")
    parser.add_argument("--name", default="bookstore", help="sent as x-bookstore-served-by (default bookstore)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get on shutdown")
    parser.add_argument("--tls-cert", help="serve TLS with this PEM certificate chain (with --tls-key)")
    parser.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    parser.add_argument("--tls-client-ca", help="with --tls-cert: require client certificates signed by this CA")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args.host, args.port, args.name, args.grace, tls, args.tls_client_ca))
    return uvloop.run(serve(args.host, args.port, args.name, args.grace, tls, args.tls_client_ca))


if __name__ == "__main__":
    sys.exit(main())
