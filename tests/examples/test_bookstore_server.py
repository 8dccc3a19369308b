"""The quickstart bookstore backend as a real process, called through the stubs that build.py generates."""

from __future__ import annotations

import base64
import importlib.util
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, TypeVar

import grpc
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, duration_pb2, empty_pb2, field_mask_pb2, message
from google.rpc import error_details_pb2, status_pb2

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
STARTUP_TIMEOUT = 30.0
RPC_TIMEOUT = 10.0

DetailT = TypeVar("DetailT", bound=message.Message)


def _load_build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bookstore_quickstart_build", QUICKSTART / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Backend:
    proc: subprocess.Popen[bytes]
    address: str
    log: Path
    terminated: bool = False

    def terminate(self) -> None:
        # Signal once: a second SIGTERM that lands after the server's loop closed would kill it mid-exit.
        if not self.terminated and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.terminated = True

    def stop(self) -> int:
        self.terminate()
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def start_backend(log: Path, *args: str) -> Backend:
    """Start server.py on an OS-picked port and wait (with a deadline, no sleeps) for its listening line."""
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(QUICKSTART / "server.py"), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=log.parent,  # anywhere but the repo root: the server must not depend on the cwd
        )
    backend = Backend(proc, "", log)
    assert proc.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    output = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in output:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise TimeoutError(f"no listening line within {STARTUP_TIMEOUT}s; stderr:\n{log.read_text()}")
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"server exited with {proc.wait()}; stderr:\n{log.read_text()}")
                output += chunk
    except BaseException:
        backend.stop()
        raise
    line = output.decode().strip()
    prefix = "bookstore listening on 127.0.0.1:"
    assert line.startswith(prefix), line
    backend.address = line.removeprefix("bookstore listening on ")
    return backend


@pytest.fixture(scope="session")
def build_module() -> ModuleType:
    return _load_build_module()


@pytest.fixture(scope="session")
def descriptor_set(build_module: ModuleType) -> Path:
    return build_module.build()


@pytest.fixture(scope="session")
def pb(descriptor_set: Path) -> Iterator[SimpleNamespace]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(descriptor_set.parent))
        from bookstore.v1 import bookstore_pb2, bookstore_pb2_grpc

        yield SimpleNamespace(m=bookstore_pb2, grpc=bookstore_pb2_grpc)


@pytest.fixture(scope="module")
def backend(pb: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    backend = start_backend(tmp_path_factory.mktemp("bookstore") / "server.log", "--name", "backend-1")
    yield backend
    assert backend.stop() == 0, backend.log.read_text()


@pytest.fixture(scope="module")
def stub(backend: Backend, pb: SimpleNamespace) -> Iterator[Any]:
    channel = grpc.insecure_channel(backend.address)
    yield pb.grpc.BookstoreStub(channel)
    channel.close()


def call(method: Any, request: Any, **kwargs: Any) -> Any:
    return method(request, timeout=RPC_TIMEOUT, **kwargs)


def rpc_error(method: Any, request: Any, code: grpc.StatusCode, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        method(request, timeout=kwargs.pop("timeout", RPC_TIMEOUT), **kwargs)
    assert info.value.code() == code, info.value.details()
    return info.value


def status_details(error: grpc.RpcError) -> status_pb2.Status:
    """Decode grpc-status-details-bin the way grpc_status.rpc_status.from_call does, checking it agrees."""
    raw = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    return status


def detail(error: grpc.RpcError, kind: type[DetailT]) -> DetailT:
    status = status_details(error)
    assert len(status.details) == 1
    found = kind()
    assert status.details[0].Unpack(found), status.details[0].type_url
    return found


def violations(error: grpc.RpcError) -> dict[str, str]:
    bad_request = detail(error, error_details_pb2.BadRequest)
    return {v.field: v.description for v in bad_request.field_violations}


def new_shelf(stub: Any, pb: SimpleNamespace, theme: str, books: int = 0) -> Any:
    shelf = call(stub.CreateShelf, pb.m.CreateShelfRequest(shelf=pb.m.Shelf(theme=theme)))
    for i in range(books):
        book = pb.m.Book(title=f"{theme} {i}", author=f"Author {i % 2}", genre=pb.m.FICTION, pages=100 + i)
        call(stub.CreateBook, pb.m.CreateBookRequest(shelf=shelf.id, book=book))
    return shelf


# build.py


def test_build_writes_descriptor_set_with_imports_and_http_rules(
    descriptor_set: Path, build_module: ModuleType
) -> None:
    assert build_module.build() == descriptor_set  # idempotent
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    files = {f.name: f for f in fds.file}
    assert {"google/api/http.proto", "google/protobuf/field_mask.proto", "bookstore/v1/bookstore.proto"} <= set(files)
    service = files["bookstore/v1/bookstore.proto"].service[0]
    methods = {m.name: m for m in service.method}
    get_book = methods["GetBook"].options.Extensions[annotations_pb2.http]
    assert get_book.get == "/v1/shelves/{shelf}/books/{book}"
    assert [b.get for b in get_book.additional_bindings] == ["/v1/books/{book}"]
    update = methods["UpdateBook"].options.Extensions[annotations_pb2.http]
    assert (update.patch, update.body) == ("/v1/shelves/{shelf}/books/{book.id}", "book")
    assert methods["PublishBook"].options.Extensions[annotations_pb2.http].post.endswith(":publish")
    assert not methods["GetStats"].options.HasExtension(annotations_pb2.http)
    assert (descriptor_set.parent / "bookstore" / "v1" / "bookstore_pb2_grpc.py").is_file()
    assert (descriptor_set.parent / "bookstore" / "v1" / "bookstore_pb2.pyi").is_file()


def test_build_script_runs_from_any_cwd_into_any_dir(build_module: ModuleType, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(QUICKSTART / "build.py")], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    out = build_module.build(tmp_path / "out")
    assert out == tmp_path / "out" / "bookstore.binpb"
    assert (tmp_path / "out" / "bookstore" / "v1" / "bookstore_pb2.py").is_file()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".build-")]


def test_build_fails_clearly_on_a_bad_proto(
    build_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "protos" / "bookstore" / "v1" / "bookstore.proto"
    broken.parent.mkdir(parents=True)
    broken.write_text('syntax = "proto3";\npackage bookstore.v1;\nmessage Book { strin title = 1; }\n')
    monkeypatch.setattr(build_module, "PROTO_ROOT", tmp_path / "protos")
    monkeypatch.setattr(build_module, "DEFAULT_OUT_DIR", tmp_path / "out")
    assert build_module.main() == 1
    captured = capfd.readouterr()
    assert "build.py: error: protoc failed" in captured.err
    assert "strin" in captured.err  # protoc's own diagnostic reaches the user
    assert not (tmp_path / "out" / "bookstore.binpb").exists()
    broken.unlink()
    with pytest.raises(build_module.BuildError, match="proto source not found"):
        build_module.build(tmp_path / "out")


# shelves


def test_list_shelves_returns_seeded_shelves_and_served_by(stub: Any, pb: SimpleNamespace) -> None:
    response, rpc = stub.ListShelves.with_call(pb.m.ListShelvesRequest(), timeout=RPC_TIMEOUT)
    seeded = {s.id: (s.theme, s.book_count) for s in response.shelves if s.id in (1, 2)}
    assert seeded == {1: ("Fiction", 3), 2: ("Poetry", 2)}
    assert ("x-bookstore-served-by", "backend-1") in rpc.initial_metadata()


def test_shelf_create_get_delete(stub: Any, pb: SimpleNamespace) -> None:
    created = new_shelf(stub, pb, "  Travel  ")
    assert created.id > 2 and created.theme == "Travel" and created.book_count == 0
    assert created.create_time.seconds > 0
    assert call(stub.GetShelf, pb.m.GetShelfRequest(shelf=created.id)) == created
    assert call(stub.DeleteShelf, pb.m.DeleteShelfRequest(shelf=created.id)) == empty_pb2.Empty()
    error = rpc_error(stub.GetShelf, pb.m.GetShelfRequest(shelf=created.id), grpc.StatusCode.NOT_FOUND)
    info = detail(error, error_details_pb2.ResourceInfo)
    assert (info.resource_type, info.resource_name) == ("bookstore.example.com/Shelf", f"shelves/{created.id}")


def test_create_shelf_with_empty_theme_is_invalid_argument(stub: Any, pb: SimpleNamespace) -> None:
    error = rpc_error(
        stub.CreateShelf, pb.m.CreateShelfRequest(shelf=pb.m.Shelf(theme=" ")), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violations(error) == {"shelf.theme": "must not be empty"}
    assert ("x-bookstore-served-by", "backend-1") in error.initial_metadata()


def test_create_shelf_with_taken_theme_is_already_exists(stub: Any, pb: SimpleNamespace) -> None:
    request = pb.m.CreateShelfRequest(shelf=pb.m.Shelf(theme="fiction"))
    error = rpc_error(stub.CreateShelf, request, grpc.StatusCode.ALREADY_EXISTS)
    assert detail(error, error_details_pb2.ResourceInfo).resource_name == "shelves/1"


def test_non_positive_shelf_id_is_invalid_argument(stub: Any, pb: SimpleNamespace) -> None:
    error = rpc_error(stub.GetShelf, pb.m.GetShelfRequest(shelf=-3), grpc.StatusCode.INVALID_ARGUMENT)
    assert list(violations(error)) == ["shelf"]


def test_delete_non_empty_shelf_needs_force(stub: Any, pb: SimpleNamespace) -> None:
    error = rpc_error(stub.DeleteShelf, pb.m.DeleteShelfRequest(shelf=1), grpc.StatusCode.FAILED_PRECONDITION)
    failure = detail(error, error_details_pb2.PreconditionFailure)
    assert [(v.type, v.subject) for v in failure.violations] == [("NOT_EMPTY", "shelves/1")]
    assert call(stub.GetShelf, pb.m.GetShelfRequest(shelf=1)).book_count == 3

    shelf = new_shelf(stub, pb, "Doomed", books=2)
    books = call(stub.ListBooks, pb.m.ListBooksRequest(shelf=shelf.id)).books
    call(stub.DeleteShelf, pb.m.DeleteShelfRequest(shelf=shelf.id, force=True))
    rpc_error(stub.GetBook, pb.m.GetBookRequest(book=books[0].id), grpc.StatusCode.NOT_FOUND)


# books


def test_book_create_list_get_delete(stub: Any, pb: SimpleNamespace) -> None:
    shelf = new_shelf(stub, pb, "Essays")
    book = pb.m.Book(title="Essays", author="Montaigne", genre=pb.m.NON_FICTION, tags=["french"], pages=1283)
    book.id, book.publisher = 999, "ignored: output only"
    created = call(stub.CreateBook, pb.m.CreateBookRequest(shelf=shelf.id, book=book))
    assert created.id != 999 and created.shelf == shelf.id and not created.publisher
    assert (created.title, created.author, list(created.tags), created.pages) == (
        "Essays",
        "Montaigne",
        ["french"],
        1283,
    )
    assert call(stub.ListBooks, pb.m.ListBooksRequest(shelf=shelf.id)).books == [created]
    assert call(stub.GetShelf, pb.m.GetShelfRequest(shelf=shelf.id)).book_count == 1
    assert call(stub.GetBook, pb.m.GetBookRequest(shelf=shelf.id, book=created.id)) == created
    call(stub.DeleteBook, pb.m.DeleteBookRequest(shelf=shelf.id, book=created.id))
    error = rpc_error(stub.GetBook, pb.m.GetBookRequest(shelf=shelf.id, book=created.id), grpc.StatusCode.NOT_FOUND)
    info = detail(error, error_details_pb2.ResourceInfo)
    assert (info.resource_type, info.resource_name) == (
        "bookstore.example.com/Book",
        f"shelves/{shelf.id}/books/{created.id}",
    )


def test_create_book_validates_input(stub: Any, pb: SimpleNamespace) -> None:
    bad = pb.m.Book(title="", pages=-1)
    error = rpc_error(stub.CreateBook, pb.m.CreateBookRequest(shelf=1, book=bad), grpc.StatusCode.INVALID_ARGUMENT)
    assert set(violations(error)) == {"book.title", "book.pages"}
    good = pb.m.Book(title="Lost")
    error = rpc_error(stub.CreateBook, pb.m.CreateBookRequest(shelf=4242, book=good), grpc.StatusCode.NOT_FOUND)
    assert detail(error, error_details_pb2.ResourceInfo).resource_name == "shelves/4242"


def test_list_books_filters_by_genre_and_author(stub: Any, pb: SimpleNamespace) -> None:
    by_author = call(stub.ListBooks, pb.m.ListBooksRequest(shelf=1, author="ursula k. le guin"))
    assert [b.id for b in by_author.books] == [1, 2] and by_author.total_size == 2
    fantasy = call(stub.ListBooks, pb.m.ListBooksRequest(shelf=1, genre=pb.m.FANTASY))
    assert [b.title for b in fantasy.books] == ["A Wizard of Earthsea"]
    both = call(stub.ListBooks, pb.m.ListBooksRequest(shelf=1, genre=pb.m.FICTION, author="Ursula K. Le Guin"))
    assert list(both.books) == []


def test_get_book_across_shelves_and_on_the_wrong_shelf(stub: Any, pb: SimpleNamespace) -> None:
    book = call(stub.GetBook, pb.m.GetBookRequest(book=4))
    assert (book.shelf, book.title) == (2, "Leaves of Grass")
    rpc_error(stub.GetBook, pb.m.GetBookRequest(shelf=1, book=4), grpc.StatusCode.NOT_FOUND)


def test_get_book_by_resource_name(stub: Any, pb: SimpleNamespace) -> None:
    assert call(stub.GetBookByName, pb.m.GetBookByNameRequest(name="shelves/1/books/3")).title == "Middlemarch"
    assert call(stub.GetBookByName, pb.m.GetBookByNameRequest(name="shelves/-/books/5")).title == "Ariel"
    for name in ("books/3", "shelves/1/books/x", "shelves/0/books/1", "shelves/1/books/3/extra"):
        error = rpc_error(stub.GetBookByName, pb.m.GetBookByNameRequest(name=name), grpc.StatusCode.INVALID_ARGUMENT)
        assert list(violations(error)) == ["name"]


# pagination


def test_pagination_walks_every_page_once(stub: Any, pb: SimpleNamespace) -> None:
    shelf = new_shelf(stub, pb, "Paged", books=5)
    seen, token, pages = [], "", 0
    while True:
        response = call(stub.ListBooks, pb.m.ListBooksRequest(shelf=shelf.id, page_size=2, page_token=token))
        assert response.total_size == 5
        seen += [b.title for b in response.books]
        pages += 1
        token = response.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [f"Paged {i}" for i in range(5)]


def test_pagination_with_filter_and_default_and_max_page_size(stub: Any, pb: SimpleNamespace) -> None:
    shelf = new_shelf(stub, pb, "Big", books=12)
    first = call(stub.ListBooks, pb.m.ListBooksRequest(shelf=shelf.id))
    assert len(first.books) == 10 and first.next_page_token
    assert len(call(stub.ListBooks, pb.m.ListBooksRequest(shelf=shelf.id, page_size=1000)).books) == 12
    filtered = pb.m.ListBooksRequest(shelf=shelf.id, author="Author 1", page_size=4)
    page1 = call(stub.ListBooks, filtered)
    filtered.page_token = page1.next_page_token
    page2 = call(stub.ListBooks, filtered)
    assert [b.title for b in [*page1.books, *page2.books]] == [f"Big {i}" for i in range(1, 12, 2)]
    assert not page2.next_page_token


def test_bad_page_tokens_and_sizes_are_invalid_argument(stub: Any, pb: SimpleNamespace) -> None:
    token = call(stub.ListShelves, pb.m.ListShelvesRequest(page_size=1)).next_page_token
    assert token
    other_query = pb.m.ListBooksRequest(shelf=1, page_token=token)
    assert list(violations(rpc_error(stub.ListBooks, other_query, grpc.StatusCode.INVALID_ARGUMENT))) == ["page_token"]
    garbage = pb.m.ListShelvesRequest(page_token="%%%not-a-token")
    assert list(violations(rpc_error(stub.ListShelves, garbage, grpc.StatusCode.INVALID_ARGUMENT))) == ["page_token"]
    negative = pb.m.ListShelvesRequest(page_size=-1)
    assert list(violations(rpc_error(stub.ListShelves, negative, grpc.StatusCode.INVALID_ARGUMENT))) == ["page_size"]


# update with a field mask


def _book_for_update(stub: Any, pb: SimpleNamespace, theme: str) -> Any:
    shelf = new_shelf(stub, pb, theme)
    book = pb.m.Book(title="Draft", author="Anon", genre=pb.m.MYSTERY, tags=["a", "b"], pages=10)
    return call(stub.CreateBook, pb.m.CreateBookRequest(shelf=shelf.id, book=book))


def test_update_book_changes_only_masked_fields(stub: Any, pb: SimpleNamespace) -> None:
    book = _book_for_update(stub, pb, "Masked")
    patch = pb.m.Book(id=book.id, title="Final", author="Someone Else", tags=["c"], pages=0)
    mask = field_mask_pb2.FieldMask(paths=["title", "tags", "pages"])
    updated = call(stub.UpdateBook, pb.m.UpdateBookRequest(shelf=book.shelf, book=patch, update_mask=mask))
    assert (updated.title, updated.author, list(updated.tags), updated.pages) == ("Final", "Anon", ["c"], 0)
    assert updated.genre == pb.m.MYSTERY and updated.create_time == book.create_time
    assert call(stub.GetBook, pb.m.GetBookRequest(book=book.id)) == updated


def test_update_book_without_mask_applies_set_fields(stub: Any, pb: SimpleNamespace) -> None:
    book = _book_for_update(stub, pb, "Unmasked")
    patch = pb.m.Book(id=book.id, author="New Author")
    updated = call(stub.UpdateBook, pb.m.UpdateBookRequest(shelf=book.shelf, book=patch))
    assert (updated.title, updated.author, list(updated.tags), updated.pages) == ("Draft", "New Author", ["a", "b"], 10)


def test_update_book_with_wildcard_mask_replaces_every_mutable_field(stub: Any, pb: SimpleNamespace) -> None:
    book = _book_for_update(stub, pb, "Wildcard")
    patch = pb.m.Book(id=book.id, title="Only Title")
    mask = field_mask_pb2.FieldMask(paths=["*"])
    updated = call(stub.UpdateBook, pb.m.UpdateBookRequest(shelf=book.shelf, book=patch, update_mask=mask))
    assert (updated.title, updated.author, list(updated.tags), updated.pages) == ("Only Title", "", [], 0)
    assert updated.genre == pb.m.GENRE_UNSPECIFIED and updated.id == book.id


def test_update_book_refuses_bad_mask_paths_and_changes_nothing(stub: Any, pb: SimpleNamespace) -> None:
    book = _book_for_update(stub, pb, "Refused")
    patch = pb.m.Book(id=book.id, title="Changed")
    mask = field_mask_pb2.FieldMask(paths=["title", "isbn", "create_time"])
    request = pb.m.UpdateBookRequest(shelf=book.shelf, book=patch, update_mask=mask)
    error = rpc_error(stub.UpdateBook, request, grpc.StatusCode.INVALID_ARGUMENT)
    bad_request = detail(error, error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["update_mask", "update_mask"]
    assert "'isbn'" in bad_request.field_violations[0].description
    assert "output only" in bad_request.field_violations[1].description
    empty_title = pb.m.UpdateBookRequest(
        shelf=book.shelf, book=pb.m.Book(id=book.id), update_mask=field_mask_pb2.FieldMask(paths=["title"])
    )
    assert violations(rpc_error(stub.UpdateBook, empty_title, grpc.StatusCode.INVALID_ARGUMENT)) == {
        "book.title": "must not be empty"
    }
    assert call(stub.GetBook, pb.m.GetBookRequest(book=book.id)) == book


# custom verb


def test_publish_book_once(stub: Any, pb: SimpleNamespace) -> None:
    book = _book_for_update(stub, pb, "Publishing")
    published = call(stub.PublishBook, pb.m.PublishBookRequest(shelf=book.shelf, book=book.id, publisher="Tor"))
    assert published.publisher == "Tor" and published.HasField("publish_time")
    again = pb.m.PublishBookRequest(shelf=book.shelf, book=book.id)
    info = detail(rpc_error(stub.PublishBook, again, grpc.StatusCode.FAILED_PRECONDITION), error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("BOOK_ALREADY_PUBLISHED", "bookstore.example.com")
    assert info.metadata["book"] == f"shelves/{book.shelf}/books/{book.id}" and info.metadata["publisher"] == "Tor"


# debug methods


def test_echo_headers_returns_metadata_and_sends_initial_and_trailing(stub: Any) -> None:
    metadata = (("x-request-id", "abc-123"), ("x-multi", "one"), ("x-multi", "two"), ("x-trace-bin", b"\x00\xff"))
    response, rpc = stub.EchoHeaders.with_call(empty_pb2.Empty(), metadata=metadata, timeout=RPC_TIMEOUT)
    assert response.metadata["x-request-id"] == "abc-123"
    assert response.metadata["x-multi"] == "one, two"
    assert base64.b64decode(response.metadata["x-trace-bin"]) == b"\x00\xff"
    assert response.served_by == "backend-1" and response.peer
    # grpc-timeout is rounded up on the wire, so allow a little over the client's timeout
    assert 0 < response.time_remaining.ToNanoseconds() <= (RPC_TIMEOUT + 1) * 1e9
    assert ("x-bookstore-served-by", "backend-1") in rpc.initial_metadata()
    assert ("x-bookstore-trailer", "done") in rpc.trailing_metadata()


def test_sleep_answers_after_the_requested_time(stub: Any, pb: SimpleNamespace) -> None:
    by_millis = call(stub.Sleep, pb.m.SleepRequest(millis=50))
    # the event loop's clock may wake a timer up to a millisecond early
    assert by_millis.slept.ToNanoseconds() >= 48_000_000 and by_millis.served_by == "backend-1"
    by_duration = call(stub.Sleep, pb.m.SleepRequest(duration=duration_pb2.Duration(nanos=30_000_000), millis=9999))
    assert 28_000_000 <= by_duration.slept.ToNanoseconds() < 9_000_000_000
    too_long = pb.m.SleepRequest(duration=duration_pb2.Duration(seconds=61))
    assert list(violations(rpc_error(stub.Sleep, too_long, grpc.StatusCode.INVALID_ARGUMENT))) == ["duration"]


def test_sleep_honours_the_client_deadline(stub: Any, pb: SimpleNamespace) -> None:
    started = time.monotonic()
    rpc_error(stub.Sleep, pb.m.SleepRequest(millis=5000), grpc.StatusCode.DEADLINE_EXCEEDED, timeout=0.2)
    assert time.monotonic() - started < 4
    assert call(stub.Sleep, pb.m.SleepRequest(millis=1)).served_by == "backend-1"


def test_get_stats_counts_calls(stub: Any, pb: SimpleNamespace) -> None:
    before = call(stub.GetStats, pb.m.GetStatsRequest())
    call(stub.GetShelf, pb.m.GetShelfRequest(shelf=1))
    rpc_error(stub.GetShelf, pb.m.GetShelfRequest(shelf=987654), grpc.StatusCode.NOT_FOUND)
    after = call(stub.GetStats, pb.m.GetStatsRequest())
    assert after.method_calls["GetShelf"] == before.method_calls["GetShelf"] + 2
    assert after.request_count == before.request_count + 3
    assert after.shelf_count >= 2 and after.book_count >= 5 and after.served_by == "backend-1"


# process lifecycle


def test_sigterm_lets_in_flight_calls_finish(pb: SimpleNamespace, tmp_path: Path) -> None:
    backend = start_backend(tmp_path / "server.log", "--name", "backend-9", "--grace", "10")
    try:
        with grpc.insecure_channel(backend.address) as channel:
            stub = pb.grpc.BookstoreStub(channel)
            pending = stub.Sleep.future(pb.m.SleepRequest(millis=300), timeout=RPC_TIMEOUT)
            # Wait until the server holds the call: EchoHeaders is answered after Sleep was accepted.
            assert call(stub.EchoHeaders, empty_pb2.Empty()).served_by == "backend-9"
            backend.terminate()
            assert pending.result().served_by == "backend-9"
    finally:
        code = backend.stop()
    assert code == 0, backend.log.read_text()


# streaming and HttpBody methods


def test_stream_books_streams_a_shelf_with_limit(stub: Any, pb: SimpleNamespace) -> None:
    shelf = new_shelf(stub, pb, "Streamed", books=3)
    books = list(stub.StreamBooks(pb.m.StreamBooksRequest(shelf=shelf.id), timeout=RPC_TIMEOUT))
    assert [book.title for book in books] == ["Streamed 0", "Streamed 1", "Streamed 2"]
    limited = list(stub.StreamBooks(pb.m.StreamBooksRequest(shelf=shelf.id, limit=2), timeout=RPC_TIMEOUT))
    assert len(limited) == 2


def test_stream_books_synthetic_count_and_fail_after(stub: Any, pb: SimpleNamespace) -> None:
    books = list(stub.StreamBooks(pb.m.StreamBooksRequest(shelf=1, count=1000), timeout=RPC_TIMEOUT))
    assert len(books) == 1000 and books[-1].id == 1000 and books[0].title == "Synthetic book 1"
    stream = stub.StreamBooks(pb.m.StreamBooksRequest(shelf=1, count=10, fail_after=3), timeout=RPC_TIMEOUT)
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for book in stream:
            received.append(book)
    assert len(received) == 3 and info.value.code() == grpc.StatusCode.ABORTED
    assert detail(info.value, error_details_pb2.ErrorInfo).reason == "STREAM_ABORTED"


def test_stream_books_validates_its_request(stub: Any, pb: SimpleNamespace) -> None:
    for request in (
        pb.m.StreamBooksRequest(shelf=1, interval_ms=-1),
        pb.m.StreamBooksRequest(shelf=1, count=-1),
        pb.m.StreamBooksRequest(shelf=1, count=10_000_001),
    ):
        with pytest.raises(grpc.RpcError) as info:
            list(stub.StreamBooks(request, timeout=RPC_TIMEOUT))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamBooks(pb.m.StreamBooksRequest(shelf=999), timeout=RPC_TIMEOUT))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_cancelled_stream_is_counted_in_stats(stub: Any, pb: SimpleNamespace) -> None:
    before = call(stub.GetStats, pb.m.GetStatsRequest()).cancelled_calls.get("StreamBooks", 0)
    stream = stub.StreamBooks(pb.m.StreamBooksRequest(shelf=1, count=1000, interval_ms=20), timeout=RPC_TIMEOUT)
    next(stream)
    stream.cancel()
    deadline = time.monotonic() + RPC_TIMEOUT
    while call(stub.GetStats, pb.m.GetStatsRequest()).cancelled_calls.get("StreamBooks", 0) == before:
        assert time.monotonic() < deadline, "the server never counted the cancellation"
        time.sleep(0.05)


def test_export_books_streams_csv_http_body(stub: Any, pb: SimpleNamespace) -> None:
    shelf = new_shelf(stub, pb, "Exported", books=2)
    chunks = list(stub.ExportBooks(pb.m.ExportBooksRequest(shelf=shelf.id), timeout=RPC_TIMEOUT))
    assert chunks[0].content_type == "text/csv; charset=utf-8"
    assert b"".join(chunk.data for chunk in chunks).decode().splitlines()[1].endswith(",Exported 0,Author 0,100")


def test_import_books_creates_each_streamed_book(stub: Any, pb: SimpleNamespace) -> None:
    shelf = new_shelf(stub, pb, "Imported")
    requests = [pb.m.CreateBookRequest(shelf=shelf.id, book=pb.m.Book(title=f"I{i}")) for i in range(3)]
    answer = stub.ImportBooks(iter(requests), timeout=RPC_TIMEOUT)
    assert answer.imported_count == 3 and len(answer.book_ids) == 3
    bad = [*requests[:1], pb.m.CreateBookRequest(shelf=shelf.id, book=pb.m.Book(title=""))]
    error = rpc_error(stub.ImportBooks, iter(bad), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.details().startswith("book #2:")


def test_chat_answers_each_message_and_fails_on_command(stub: Any, pb: SimpleNamespace) -> None:
    messages = [pb.m.ChatMessage(user="ann", text="hello"), pb.m.ChatMessage(text="/count")]
    answers = list(stub.Chat(iter(messages), timeout=RPC_TIMEOUT))
    assert [a.sequence for a in answers] == [1, 2]
    assert answers[0].text == "ann said: hello" and "book(s)" in answers[1].text
    assert answers[0].user == "backend-1" and answers[0].HasField("send_time")
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Chat(iter([pb.m.ChatMessage(text="/fail")]), timeout=RPC_TIMEOUT))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_covers_default_png_then_upload(stub: Any, pb: SimpleNamespace) -> None:
    from google.api import httpbody_pb2

    shelf = new_shelf(stub, pb, "Covered", books=1)
    book_id = call(stub.ListBooks, pb.m.ListBooksRequest(shelf=shelf.id)).books[0].id
    cover = call(stub.GetBookCover, pb.m.GetBookCoverRequest(shelf=shelf.id, book=book_id))
    assert cover.content_type == "image/png" and cover.data.startswith(b"\x89PNG\r\n\x1a\n")
    body = httpbody_pb2.HttpBody(content_type="image/jpeg", data=b"\xff\xd8\xff")
    saved = call(stub.UploadCover, pb.m.UploadCoverRequest(shelf=shelf.id, book=book_id, body=body))
    assert (saved.content_type, saved.size_bytes) == ("image/jpeg", 3)
    cover = call(stub.GetBookCover, pb.m.GetBookCoverRequest(shelf=shelf.id, book=book_id))
    assert cover.data == b"\xff\xd8\xff"
    text = httpbody_pb2.HttpBody(content_type="text/plain", data=b"x")
    rpc_error(
        stub.UploadCover,
        pb.m.UploadCoverRequest(shelf=shelf.id, book=book_id, body=text),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
