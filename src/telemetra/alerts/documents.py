"""Rules as people write them and read them back: rule files (JSON or YAML), validation
problems named by field, and channel secrets kept write-only.

Secrets are a webhook's ``secret`` (shown as ``"secret_set": true``) and a Slack incoming
webhook's URL, which is itself the credential (shown as its scheme and host, then ``/…``). A
channel sent back as it was shown keeps its secret: a webhook without ``secret`` keeps the
stored one of the channel at the same place and of the same kind (``"secret": null`` removes
it), and a Slack URL equal to its shown form keeps the stored URL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from telemetra.alerts.rules import Rule

HIDDEN = "…"
MAX_FILE_BYTES = 4 * 1024 * 1024


def problems(error: ValidationError) -> list[tuple[str, str]]:
    """(field path, problem) for each error of a rule's validation: ``condition.op``, …"""
    found = []
    for e in error.errors():
        # Union members and validator names in the location say which shape was tried, not
        # where the value is: "channels.0.webhook.url" reads as "channels.0.url".
        parts = [str(p) for p in e.get("loc", ()) if not _is_tag(p)]
        message = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        found.append((".".join(parts) or "(rule)", message))
    return found


def _is_tag(part: object) -> bool:
    if isinstance(part, int):
        return False
    text = str(part)
    return text in {"webhook", "email", "mqtt", "slack"} or text[:1].isupper() or "[" in text


def one_line(error: ValidationError) -> str:
    """The first problem as ``field: problem`` (and how many more there are)."""
    found = problems(error)
    field, problem = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"{field}: {problem}{more}"


def read_rules(path: Path) -> list[Rule]:
    """The rules in a JSON or YAML file holding one rule or a list of them.

    ValueError with one line naming the file, the rule (number and name) and the field.
    """
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path}: larger than {MAX_FILE_BYTES // 1024 // 1024} MiB")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    data = _parse(path, text)
    entries = data if isinstance(data, list) else [data]
    if not entries:
        raise ValueError(f"{path}: holds no rule")
    rules = []
    for number, entry in enumerate(entries, 1):
        where = f"{path}: rule {number}" if isinstance(data, list) else str(path)
        if not isinstance(entry, dict):
            raise ValueError(
                f"{where}: a rule is an object (a mapping), got {type(entry).__name__}"
            )
        if isinstance(entry.get("name"), str):
            where += f" ({entry['name']!r})"
        try:
            rules.append(Rule.model_validate(entry))
        except ValidationError as error:
            raise ValueError(f"{where}: {one_line(error)}") from None
    names = [r.name for r in rules]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{path}: rule names must be unique, {twice[0]!r} appears twice")
    return rules


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            reason = getattr(error, "problem", None) or "invalid YAML"
            raise ValueError(f"{path}: not valid YAML{at}: {reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg} "
            "(YAML files end in .yaml or .yml)"
        ) from None


def _shown_url(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/{HIDDEN}"


def shown_channels(channels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Channels as they may be shown: no secret, only whether one is set."""
    shown = []
    for channel in channels:
        channel = dict(channel)
        if channel.get("kind") == "webhook":
            channel["secret_set"] = channel.pop("secret", None) is not None
        elif channel.get("kind") == "slack" and isinstance(channel.get("url"), str):
            channel["url"] = _shown_url(channel["url"])
        shown.append(channel)
    return shown


def keep_secrets(stored: list[dict[str, Any]], given: list[Any]) -> list[Any]:
    """``given`` channels with the secrets of ``stored`` where they were sent back as shown."""
    kept = []
    for index, channel in enumerate(given):
        if not isinstance(channel, dict):
            kept.append(channel)
            continue
        channel = dict(channel)
        channel.pop("secret_set", None)  # shown, not settable
        old = stored[index] if index < len(stored) else {}
        if channel.get("kind") == old.get("kind") == "webhook" and "secret" not in channel:
            if old.get("secret") is not None:
                channel["secret"] = old["secret"]
        elif (
            channel.get("kind") == old.get("kind") == "slack"
            and isinstance(old.get("url"), str)
            and channel.get("url") == _shown_url(old["url"])
        ):
            channel["url"] = old["url"]
        kept.append(channel)
    return kept
