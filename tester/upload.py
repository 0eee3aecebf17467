"""The body of an asset upload: one multipart part read from the file as it is sent.

``requests`` with ``files=`` builds the whole multipart body in memory, file included; this
body has a length (so the request has a Content-Length, which the server checks against its
limit before reading) and hands out the file a block at a time.
"""

import io
import mimetypes
import os
from pathlib import Path

from urllib3.fields import RequestField
from urllib3.filepost import choose_boundary


class MultipartFile:
    """``multipart/form-data`` with the file at ``path`` as the part ``field``; use with ``with``."""

    def __init__(self, path: str | Path, field: str = "file"):
        path = Path(path)
        boundary = choose_boundary()
        part = RequestField(field, b"", filename=path.name)
        part.make_multipart(content_type=mimetypes.guess_type(path.name)[0]
                            or "application/octet-stream")  # the server sniffs the bytes anyway
        head = f"--{boundary}\r\n{part.render_headers()}".encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self.file = open(path, "rb")
        self.size = len(head) + os.fstat(self.file.fileno()).st_size + len(tail)
        self._parts = [io.BytesIO(head), self.file, io.BytesIO(tail)]

    def __len__(self) -> int:
        return self.size

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body, the rest of it when ``size`` is negative."""
        out = bytearray()
        while self._parts and (size < 0 or len(out) < size):
            chunk = self._parts[0].read(-1 if size < 0 else size - len(out))
            if chunk:
                out += chunk
            else:
                self._parts.pop(0)
        return bytes(out)

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def __enter__(self) -> "MultipartFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
