"""Reading a workflow file for StartJob; anything that is not valid JSON is refused before sending."""

import json
from pathlib import Path

# Files past this are no API workflow; the server itself answers 413 past its --max-body-mb
# (8 MiB by default).
MAX_BYTES = 32 * 1024 * 1024


class WorkflowError(ValueError):
    """The file cannot be sent; the message says why in one sentence."""


def load_workflow(path: str | Path) -> bytes:
    """Return the file's JSON text as UTF-8 bytes to send, or raise WorkflowError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise WorkflowError(f"{path.name} is {size} bytes, over the {MAX_BYTES} byte limit")
        raw = path.read_bytes()
    except OSError as exc:
        raise WorkflowError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")  # editors on Windows like to add a BOM
    except UnicodeDecodeError as exc:
        raise WorkflowError(f"{path.name} is not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise WorkflowError(f"{path.name} is empty, not a JSON workflow")
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowError(
            f"{path.name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    return text.encode("utf-8")
