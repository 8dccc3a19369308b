"""TranscodeError: the only exception the transcoder raises."""

from __future__ import annotations

from transcoder.status import Code, http_status_from_code


class TranscodeError(Exception):
    """A request or a definition the transcoder refuses, with the gRPC code that describes why.

    `http_status` defaults to the grpc-gateway mapping of `code`; it is set explicitly only where
    HTTP has a more precise answer than the table (405 for a known path with another method).
    """

    def __init__(self, code: Code, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status if http_status is not None else http_status_from_code(code)

    def __repr__(self) -> str:
        return f"TranscodeError({self.code.name}, {self.message!r})"
