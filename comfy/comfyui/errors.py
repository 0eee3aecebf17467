"""One exception tree for every way a ComfyUI can fail us; the web layer maps it to 502/503."""


class ComfyError(Exception):
    """Base of every ComfyUI failure.

    `may_have_run` is True when ComfyUI may have acted on the request although Cylindria
    got no usable answer (a timeout after sending, a connection cut mid-answer, a 200 with
    a broken body): only then must a submission be settled instead of dropped.
    """

    def __init__(self, message: str, gpu_id: int | None = None, may_have_run: bool = False):
        super().__init__(message)
        self.message = message
        self.gpu_id = gpu_id
        self.may_have_run = may_have_run


class ComfyUnreachable(ComfyError):
    """Nothing usable answered: connection refused, reset, or timed out."""

    @property
    def refused(self) -> bool:
        """True when no connection could be made at all: ComfyUI's process is gone."""
        return not self.may_have_run and not isinstance(self, ComfyTimeout)


class ComfyTimeout(ComfyUnreachable):
    """ComfyUI accepted the connection but did not answer in time (alive but slow)."""


class ComfyBadResponse(ComfyError):
    """ComfyUI answered something Cylindria cannot use (5xx, HTML, broken JSON)."""


class ComfyRejected(ComfyError):
    """ComfyUI refused a prompt at validation (HTTP 400 with `error` and `node_errors`)."""

    def __init__(self, message: str, error, node_errors, gpu_id: int | None = None):
        super().__init__(message, gpu_id)
        self.error = error
        self.node_errors = node_errors
