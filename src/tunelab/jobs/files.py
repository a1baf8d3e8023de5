"""Uploaded files: a multipart body streamed to disk under a size limit, then validated by tunelab's readers.

Nothing of a rejected upload stays: it is written to a temp file in the files directory and renamed into
place only once it has passed; any error (too big, not UTF-8, a bad line) removes it. A `fine-tune` file is
chat JSONL (`{"messages": [...]}`, or the other formats `tunelab data audit` reads) or preference JSONL
(OpenAI's `{"input": {"messages"}, "preferred_output", "non_preferred_output"}` or `{prompt, chosen,
rejected}`) for DPO; the first bad line is named in the error with its field.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.formats import Record, Rejected
from tunelab.data.preferences import Preference, parse_preference
from tunelab.data.readers import FileNotes, iter_units, stream_records
from tunelab.errors import DataError
from tunelab.serve.protocol import ApiError

MAX_FIELD = 64 * 1024
PURPOSES = ("fine-tune", "fine-tune-results")
UPLOAD_PURPOSES = ("fine-tune",)


@dataclass
class Upload:
    path: Path
    filename: str
    bytes: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)


async def receive(content_type: str, chunks: AsyncIterator[bytes], directory: Path, limit: int) -> Upload:
    """Parse a multipart/form-data body as it arrives; its `file` part goes to a temp file in `directory`."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(400, "send the file as multipart/form-data (fields: file, purpose)", param="file")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".upload-", suffix=".jsonl")
    out = os.fdopen(fd, "wb")
    digest = hashlib.sha256()
    state: dict[str, Any] = {"hname": b"", "hval": b"", "headers": {}, "name": None, "filename": None,
                             "buf": bytearray(), "size": 0, "seen_file": False}  # fmt: skip
    fields: dict[str, str] = {}

    def on_part_begin() -> None:
        state.update(headers={}, name=None, filename=None, buf=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hval"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][bytes(state["hname"]).lower()] = bytes(state["hval"])
        state["hname"], state["hval"] = b"", b""

    def on_headers_finished() -> None:
        _, p = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = p.get(b"name", b"").decode("utf-8", "replace")
        fn = p.get(b"filename")
        state["filename"] = fn.decode("utf-8", "replace") if fn is not None else None
        if state["name"] == "file":
            if state["seen_file"]:
                raise ApiError(400, "send one file per upload", param="file")
            state["seen_file"] = True

    def on_part_data(data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if state["name"] == "file":
            state["size"] += len(piece)
            if state["size"] > limit:
                raise ApiError(413, f"the file is larger than this key's limit of {limit} bytes", param="file",
                               code="file_too_large")  # fmt: skip
            out.write(piece)
            digest.update(piece)
        else:
            state["buf"] += piece
            if len(state["buf"]) > MAX_FIELD:
                raise ApiError(400, f"form field {state['name']!r} is too long", param=state["name"])

    def on_part_end() -> None:
        if state["name"] == "file":
            fields["__filename__"] = Path(state["filename"] or "upload.jsonl").name
        elif state["name"]:
            fields[state["name"]] = bytes(state["buf"]).decode("utf-8", "replace")

    callbacks: Any = {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }  # fmt: skip
    try:
        parser = MultipartParser(boundary, callbacks)
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
        out.close()
        if not state["seen_file"]:
            raise ApiError(400, "no file: send it in the form field 'file'", param="file")
    except BaseException as e:
        out.close()
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, ApiError):
            raise
        if isinstance(e, Exception):
            raise ApiError(400, f"cannot read the multipart body: {e}", param="file") from None
        raise
    name = fields.pop("__filename__")
    return Upload(Path(tmp), name, state["size"], digest.hexdigest(), fields)


@dataclass
class Checked:
    kind: str  # chat | completion | classification | text | preference
    records: int
    preview: list[dict[str, Any]]


def validate(path: Path, filename: str) -> Checked:
    """Every line of a fine-tune file must parse; the first that does not is an error naming line and field."""
    if path.stat().st_size == 0:
        raise DataError("the file is empty", file=filename, field="file")
    first = _first_object(path)
    if first is not None and ("preferred_output" in first or "chosen" in first):
        return _preferences(path, filename)
    kinds: set[str] = set()
    n = 0
    preview: list[dict[str, Any]] = []
    for r in stream_records(path, "auto"):
        if isinstance(r, Rejected):
            raise DataError(r.reason, file=filename, line=r.line, field=r.field or "record")
        assert isinstance(r, Record)
        kinds.add("text" if r.is_text else "chat")
        n += 1
        if len(preview) < 3:
            preview.append(r.to_json())
    if n == 0:
        raise DataError("no records", file=filename, field="file")
    if "text" in kinds:
        raise DataError("plain-text records cannot be fine-tuned through the jobs API: give chat or completion "
                        "records", file=filename, field="messages")  # fmt: skip
    return Checked("chat", n, preview)


def _first_object(path: Path) -> dict[str, Any] | None:
    import json

    for _, raw in iter_units(path, FileNotes()):
        try:
            obj = json.loads(raw) if isinstance(raw, bytes) else raw
        except (ValueError, UnicodeDecodeError):
            return None
        return obj if isinstance(obj, dict) else None
    return None


def _preferences(path: Path, filename: str) -> Checked:
    n = 0
    preview: list[dict[str, Any]] = []
    notes = FileNotes()
    for line, raw in iter_units(path, notes):
        p = parse_preference(raw, filename, line)
        if isinstance(p, Rejected):
            raise DataError(p.reason, file=filename, line=p.line, field=p.field or "record")
        assert isinstance(p, Preference)
        n += 1
        if len(preview) < 3:
            preview.append({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected})
    if n == 0:
        raise DataError("no records", file=filename, field="file")
    return Checked("preference", n, preview)
