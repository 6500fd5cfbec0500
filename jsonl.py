"""JSONL files, read and written in one place: every error names the file and line, every write is atomic.

Every data file of the project is JSONL (one JSON object per line; data/README.md, "Formats"), and so are
eval's trajectories. Reading one here
  - skips blank lines (they still count, so line numbers are those an editor shows),
  - decodes line by line, so a byte that is not UTF-8 is `path:line: not UTF-8 ...`, not a bare
    UnicodeDecodeError with an offset into a buffer,
  - refuses invalid JSON, a line that is not an object, and a row that departs from `schema` (a field
    spec written as data, below), each as `ValueError("path:line: ...")`,
  - refuses a file without rows unless the caller says it may be empty (a stage cannot train on nothing).
Writing goes to a temporary file beside the target, then os.replace: a reader never sees half a file.

It imports nothing of the project, so env.py, common.py and data/ all use it without an import cycle.

    rows = jsonl.read("runs/world/dev.jsonl", {"id": (str, int), "question": str, "answers": [str]})
    rows.where(3)                  # "runs/world/dev.jsonl:5": for an error about a row found later
    jsonl.write("out.jsonl", rows)
"""
import json
import os
from array import array


def schema_error(value, spec, field=""):
    """The first way `value` departs from `spec`, as text naming the field, or None.

    spec: {field: spec} an object (a key "name?" is optional, and null counts as absent; other fields are
    allowed and ignored), [spec] a non-empty list of spec, a type or a tuple of types (JSON true is no int).
    """
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"{f'field {field!r}' if field else 'the row'} should be an object, got {type(value).__name__}"
        for key, sub in spec.items():
            name = key.rstrip("?")
            path = f"{field}.{name}" if field else name
            if value.get(name) is None:
                if key.endswith("?"):
                    continue
                return f"missing field {path!r}"
            err = schema_error(value[name], sub, path)
            if err:
                return err
        return None
    if isinstance(spec, list):
        if not isinstance(value, list) or not value:
            return f"field {field!r} should be a non-empty list, got {json.dumps(value)[:40]}"
        return next((e for i, v in enumerate(value) if (e := schema_error(v, spec[0], f"{field}[{i}]"))), None)
    types = spec if isinstance(spec, tuple) else (spec,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):  # JSON true is no int
        return f"field {field!r} should be {' or '.join(t.__name__ for t in types)}, got {type(value).__name__}"
    return None


class Rows(list):
    """A JSONL file's rows, each remembering its line: rows.where(i) is "path:line", for error messages."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.lines = array("q")  # 8 bytes a row, not a Python int's 36: a corpus has millions of rows

    def where(self, i):
        return f"{self.path}:{self.lines[i]}"


def read(path, schema=None, empty_ok=False):
    """The rows of a JSONL file (module docstring), each an object checked against `schema` if given.
    An empty file (no rows) is refused unless empty_ok."""
    rows = Rows(str(path))
    with open(path, "rb") as f:  # bytes: each line is decoded alone, so a bad byte has a line number
        for i, raw in enumerate(f, 1):
            try:
                # utf-8-sig on line 1: a byte-order mark (some Windows editors write one) is no JSON
                line = raw.decode("utf-8-sig" if i == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{i}: not UTF-8 (byte 0x{raw[e.start]:02x}, the line's byte {e.start + 1}); "
                                 "re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested deeper than the parser's stack
                raise ValueError(f"{path}:{i}: invalid JSON ({e})") from None
            err = schema_error(row, schema) if schema is not None else (
                None if isinstance(row, dict) else f"the row should be an object, got {type(row).__name__}")
            if err:
                raise ValueError(f"{path}:{i}: {err}")
            rows.append(row)
            rows.lines.append(i)
    if not rows and not empty_ok:
        raise ValueError(f"{path}: no rows (the file is empty or holds only blank lines)")
    return rows


def write(path, rows):
    """Write rows as JSONL, atomically: a temporary file beside `path`, then os.replace. Non-ASCII text is
    kept as it is (ensure_ascii=False), readable in an editor and half the size of \\u escapes."""
    path = str(path)
    tmp = f"{path}.tmp-{os.getpid()}"  # beside the target: os.replace is atomic only within one file system
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
