"""Your own text as a stream: `data.name=text:PATH` (a file, a folder of them, or a glob), read piece by piece.

Formats, by file name: plain UTF-8 text (any other suffix); JSON Lines (`.jsonl`, `.ndjson`: one object per line,
its `data.text_field` string is a document); Parquet (`.parquet`, read with pyarrow -- the `parquet` extra --
column `data.text_field`). Files are read in sorted path order (a folder: every non-hidden file under it); each
document (a text file, a record) is followed by a newline when it does not end with one, except the last, so the
corpus is one text, as nanoGPT's `input.txt` is.

Nothing here holds the corpus in memory: `documents` yields pieces of at most `PIECE_CHARS` characters, `chunks`
regroups them into `CHUNK_CHARS`-sized strings, and `content_hash` reads raw bytes. A bad file is a one-line
`DataError` naming it (missing, no text, binary, not UTF-8, not JSON, a missing field).
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator

from jaxformer.data.tokenizer import DataError

PREFIX = "text:"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
READ_BYTES = 1 << 20  # bytes read at a time
CHUNK_CHARS = 1 << 20  # characters tokenized at a time
# A chunk ends at a line break between two non-space characters: no pre-token of a byte-level BPE (GPT-2's regex)
# spans such a break, so tokenizing chunk by chunk gives the ids of tokenizing the whole text at once.
_CUT = re.compile(r"\S\n(?=\S)")


def is_text_name(name: str) -> bool:
    return name.startswith(PREFIX)


def source_files(name: str) -> list[str]:
    """The files `data.name=text:PATH` names, sorted: PATH itself, every non-hidden file under a folder, or a glob's."""
    spec = name[len(PREFIX):]
    if not spec:
        raise DataError(f"data.name={name!r}: give a file, folder or glob after 'text:', e.g. text:input.txt")
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, n) for n in names if not n.startswith(".")]
        if not files:
            raise DataError(f"data.name={name!r}: the folder {path} holds no files")
        return sorted(files)
    if glob.has_magic(path):
        files = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
        if not files:
            raise DataError(f"data.name={name!r}: the glob {path} matches no file")
        return files
    raise DataError(f"data.name={name!r}: {path} does not exist; give a UTF-8 text file, a folder of them or a glob "
                    "(.jsonl / .parquet files with a text field too)")


def content_hash(files: list[str], *, text_field: str) -> str:
    """sha256 over every file's size and bytes, in order (and the text field, for JSONL / Parquet): a changed,
    added or removed file changes it."""
    h = hashlib.sha256()
    for path in files:
        if _kind(path) != "text":
            h.update(f"field={text_field}\n".encode())
        h.update(f"{os.path.getsize(path)}\n".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(READ_BYTES), b""):
                h.update(block)
    return h.hexdigest()


def _kind(path: str) -> str:
    lower = path.lower()
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "text"


def _text_file(path: str) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(READ_BYTES), b""):
            nul = block.find(b"\0")
            if nul >= 0:
                raise DataError(f"{path} is a binary file (a NUL byte at offset {offset + nul}), not UTF-8 text")
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as e:
                raise DataError(f"{path} is not UTF-8 text (byte {offset + e.start})") from None
            offset += len(block)
            if text:
                yield text
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text (it ends inside a character)") from None


def _jsonl_file(path: str, field: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError as e:
                raise DataError(f"{path}:{number} is not JSON ({e.msg})") from None
            if not isinstance(record, dict) or field not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{path}:{number} has no field {field!r} (data.text_field; it has: {keys})")
            if not isinstance(record[field], str):
                raise DataError(f"{path}:{number}: field {field!r} is a {type(record[field]).__name__}, not text")
            yield record[field]


def _parquet_file(path: str, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'jaxformer[parquet]'") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 -- pyarrow's ArrowInvalid, OSError, ...
        raise DataError(f"{path} is not a readable Parquet file ({type(e).__name__}: {e})") from None
    columns = parquet.schema_arrow.names
    if field not in columns:
        raise DataError(f"{path} has no column {field!r} (data.text_field; it has: {', '.join(columns)})")
    for batch in parquet.iter_batches(batch_size=1024, columns=[field]):
        for value in batch.column(0).to_pylist():
            if value is not None and not isinstance(value, str):
                raise DataError(f"{path}: column {field!r} holds {type(value).__name__}, not text")
            if value:
                yield value


def documents(files: list[str], *, text_field: str) -> Iterator[str]:
    """The corpus as pieces of text, in order; documents separated by a newline where they lack one."""
    ends_with_newline = True
    for path in files:
        kind = _kind(path)
        reader = (_text_file(path) if kind == "text" else
                  _jsonl_file(path, text_field) if kind == "jsonl" else _parquet_file(path, text_field))
        if kind == "text":
            readers = [reader]
        else:  # each record is a document of its own
            readers = ([record] for record in reader)
        for document in readers:
            first = True
            for piece in document:
                if not piece:
                    continue
                if first and not ends_with_newline:
                    yield "\n"
                first = False
                yield piece
                ends_with_newline = piece.endswith("\n")


def chunks(pieces: Iterator[str], size: int | None = None) -> Iterator[str]:
    """Pieces regrouped into strings of about `size` (default `CHUNK_CHARS`) characters, cut where a line break lies
    between two non-space characters (`_CUT`); a text with no such break for 8 x `size` characters is cut where it
    stands."""
    size = size or CHUNK_CHARS
    buffer = ""
    for piece in pieces:
        buffer += piece
        while len(buffer) >= size:
            cut = _last_cut(buffer, size)
            if cut is None:
                if len(buffer) < 8 * size:
                    break
                cut = size
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


def _last_cut(text: str, size: int) -> int | None:
    """The position just after the last `_CUT` line break at or before `size`, else the first after it."""
    end = text.rfind("\n", 0, size + 1)
    while end > 0:
        if _CUT.match(text, end - 1):
            return end + 1
        end = text.rfind("\n", 0, end)
    match = _CUT.search(text, size)
    return match.end() if match else None
