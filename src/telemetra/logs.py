"""Structured logging: readable in a console, one JSON object per line in production.

No log line carries a credential: device tokens in ThingsBoard-style paths, ``token=`` and
similar query parameters, bearer tokens, API keys and JWTs are replaced by ``[redacted]`` in
every line, whether structlog, uvicorn's access log or a traceback wrote it.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

REDACTED = "[redacted]"
_SECRET_PARAMS = r"token|access_token|refresh_token|api_key|apikey|key|password|secret"  # noqa: S105
_PATTERNS = (
    # ThingsBoard's device API carries the device token as a path segment.
    (re.compile(r"(/api/v1/)[^/\s?#\"']+(?=/telemetry\b)"), rf"\g<1>{REDACTED}"),
    # token=… and friends in query strings and form bodies.
    (re.compile(rf"(?i)([?&;](?:{_SECRET_PARAMS})=)[^&\s\"'#]*"), rf"\g<1>{REDACTED}"),
    # Authorization / X-API-Key headers, as "name: value", "name=value" or "'name': 'value'".
    (
        re.compile(
            r"(?i)\b(authorization|x-api-key)(['\"]?\s*[:=]\s*['\"]?)(?:bearer\s+)?[^\s'\",}]+"
        ),
        rf"\g<1>\g<2>{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer\s+)[\w.~+/=-]+"), rf"\g<1>{REDACTED}"),
    # A JWT anywhere (user access tokens).
    (re.compile(r"\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]+"), REDACTED),
)


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ``[redacted]``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Redacts credentials from standard-library log records (uvicorn's access log, among
    others) before any handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at the time of writing (tests and tools swap it), with
    credentials redacted."""

    def write(self, text: str) -> int:
        return sys.stderr.write(redact(text))

    def flush(self) -> None:
        sys.stderr.flush()


def configure(fmt: str = "console", level: str = "INFO") -> None:
    """Set up structlog (and stdlib logging beneath it) once per process."""
    # Tracebacks without local variables: rendering those took seconds per error (blocking
    # the event loop) and would write request secrets into the log.
    renderers: list[structlog.typing.Processor] = (
        [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False, use_rich=False)
            ),
            structlog.processors.JSONRenderer(),
        ]
        if fmt == "json"
        else [
            structlog.dev.ConsoleRenderer(
                colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        ]
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    redacting = RedactingFilter()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(redacting)
    # On the loggers too, so that every handler (and every test's capture) sees redacted text.
    for name in ("uvicorn.access", "uvicorn.error", "telemetra"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(redacting)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
