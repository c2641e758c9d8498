"""Multipart uploads read as they arrive, straight into files, with the size limit enforced while
receiving (a ``Content-Length`` over it is refused before any byte is read; a chunked body is cut
off at the limit), then validated by the CLI's own input checks (``engine.io``) so a bad file gets
the same message as on the command line, with the server's path replaced by the client's name.

No client-supplied file name is ever used for a path: parts are stored under fixed names in a
folder named by a server-made UUID.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from engine.errors import InputError
from engine.serve.errors import ApiError, invalid, too_large, unsupported

TEXT_LIMIT = 1024  # bytes per plain form field
GENERIC_TYPES = ("", "application/octet-stream")  # what curl and some clients send for any file
T = TypeVar("T")


@dataclass
class Upload:
    files: dict[str, Path] = field(default_factory=dict)  # field -> stored file
    names: dict[str, str] = field(default_factory=dict)  # field -> the client's name, for messages only
    texts: dict[str, str] = field(default_factory=dict)
    received: int = 0


def display_name(raw: bytes | None, fallback: str) -> str:
    """The client's file name reduced to a safe label (for messages only), else the field name."""
    if not raw:
        return fallback
    name = raw.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^\w.\- ()+@]", "_", name)[:80]
    return name or fallback


class _Receiver:
    """python-multipart callbacks: each file part into ``dest/<field>``, text parts into memory."""

    def __init__(self, dest: Path, files: dict[str, tuple[str, ...]], texts: tuple[str, ...]) -> None:
        self.dest, self.files, self.texts = dest, files, texts
        self.out = Upload()
        self.current: str | None = None
        self._headers: dict[str, bytes] = {}
        self._hname = self._hvalue = b""
        self._handle: BinaryIO | None = None
        self._text = bytearray()

    def callbacks(self) -> Any:  # python_multipart's MultipartCallbacks (a TypedDict)
        return {"on_part_begin": self._begin, "on_header_field": self._hfield, "on_header_value": self._hval,
                "on_header_end": self._hend, "on_headers_finished": self._headers_done,
                "on_part_data": self._data, "on_part_end": self._end}

    def _begin(self) -> None:
        self._headers, self.current = {}, None

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def _hval(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def _hend(self) -> None:
        self._headers[self._hname.decode("latin-1").lower()] = self._hvalue
        self._hname = self._hvalue = b""

    def _headers_done(self) -> None:
        _, disp = parse_options_header(self._headers.get("content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        allowed = (*self.files, *self.texts)
        if name not in allowed:
            raise invalid(name or "body", f"unknown form field {name!r}", f"fields are: {', '.join(allowed)}")
        if name in self.out.files or name in self.out.texts:
            raise invalid(name, f"form field {name!r} given twice", "send each field once")
        self.current = name
        if name in self.files:
            ctype = parse_options_header(self._headers.get("content-type", b""))[0].decode("latin-1")
            kinds = self.files[name]
            if ctype not in GENERIC_TYPES and not ctype.startswith(kinds):
                raise unsupported(name, f"{name} was sent as {ctype!r}",
                                  f"send {' or '.join(k + '*' for k in kinds)} (or application/octet-stream)")
            path = self.dest / name
            self.out.files[name] = path
            self.out.names[name] = display_name(disp.get(b"filename"), name)
            self._handle = path.open("wb")
        else:
            self._text = bytearray()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._handle is not None:
            self._handle.write(data[start:end])
        else:
            self._text += data[start:end]
            if len(self._text) > TEXT_LIMIT:
                raise too_large(self.current or "body", f"form field {self.current!r} is over {TEXT_LIMIT} bytes",
                                "options are short values such as steps=4")

    def _end(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        elif self.current is not None:
            self.out.texts[self.current] = self._text.decode("utf-8", "replace")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


async def receive(request: Request, dest: Path, files: dict[str, tuple[str, ...]], texts: tuple[str, ...],
                  limit: int) -> Upload:
    """Read a ``multipart/form-data`` body into ``dest`` (which must exist). Raises ApiError."""
    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise unsupported("body", "the body must be multipart/form-data",
                          "send the files as form fields (curl -F source=@face.png -F driving=@clip.mp4)")
    mb = limit / 2**20
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large("body", f"the upload is {int(declared) / 2**20:.1f} MiB, over this server's "
                        f"{mb:g} MiB limit", "send a shorter or smaller clip (the server's --max-upload-mb)")
    receiver = _Receiver(dest, files, texts)
    try:
        parser = MultipartParser(params[b"boundary"], receiver.callbacks())
        async for chunk in request.stream():
            receiver.out.received += len(chunk)
            if receiver.out.received > limit:
                field_name = receiver.current or "body"
                raise too_large(field_name, f"the upload passed this server's {mb:g} MiB limit while "
                                f"receiving {field_name!r}", "send a shorter or smaller clip (--max-upload-mb)")
            parser.write(chunk)
        parser.finalize()
    except FormParserError as err:
        raise invalid("body", f"the multipart body is malformed ({err})", "let your HTTP client build it") from None
    finally:
        receiver.close()
    for name in files:
        if name not in receiver.out.files:
            raise invalid(name, f"the {name} file is missing", f"add it as a form field: -F {name}=@FILE")
    return receiver.out


async def validate(check: Callable[[Path], T], path: Path, shown: str, field_name: str) -> T:
    """Run one of ``engine.io``'s checks in a thread; its InputError becomes a 422 with the CLI's
    message, naming the client's file instead of the server's path."""
    try:
        return await asyncio.to_thread(check, path)
    except InputError as err:
        raise invalid(field_name, str(err).replace(str(path), shown)) from None
    except ApiError:
        raise
