"""The documentation stands on its own and follows the code.

README.md and docs/*.md link only to files (and headings) that exist in this repository; docs/cli.md
names every command and option `telemetra --help` offers, docs/configuration.md every setting,
docs/cleaning.md every flag and rejection reason. A new command, option, setting, flag or reason
fails here until it is documented.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from telemetra.cli import app
from telemetra.config import Settings
from telemetra.model import Flag, Reason

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
DOC_MENTION = re.compile(r"\bdocs/[\w.-]+\.md(?:#[\w-]+)?")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ENV_NAME = re.compile(r"\bTELEMETRA_[A-Z0-9]+(?:_[A-Z0-9]+)*\b")
COMPLETION = {"--install-completion", "--show-completion"}  # typer's own, not Telemetra's


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def prose(text: str) -> Iterator[str]:
    """Lines outside fenced code blocks (a `# comment` in a shell block is not a heading)."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(page.read_text()):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(2))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings: name, name-1, name-2 …
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def problem(page: Path, target: str) -> str | None:
    """Why a relative link or mention from page does not lead anywhere, or None."""
    path, _, anchor = target.partition("#")
    where = (page.parent / path).resolve() if path else page
    if not where.is_relative_to(ROOT):
        return f"{target} leaves the repository"
    if not where.exists():
        return f"{target}: no such file"
    if anchor and where.suffix == ".md" and anchor not in anchors(where):
        return f"{target}: no heading with anchor #{anchor} in {page_id(where)}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_pages_never_send_a_reader_outside_the_repository(page: Path) -> None:
    assert "../shared" not in page.read_text(), f"{page_id(page)} mentions ../shared"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_lead_to_files_and_headings_that_exist(page: Path) -> None:
    text = page.read_text()
    targets = [m.group(1) for line in prose(text) for m in LINK.finditer(line)]
    external = ("http://", "https://", "mailto:")
    broken = [p for t in targets if not t.startswith(external) if (p := problem(page, t))]
    # Plain mentions (also in code blocks) are read from the repository root, as a user would.
    mentions = [m.group(0) for m in DOC_MENTION.finditer(text)]
    broken += [p for t in mentions if (p := problem(ROOT / "README.md", t))]
    assert not broken, f"{page_id(page)}: " + "; ".join(broken)


def test_the_docs_folder_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    unlinked = [page.name for page in DOCS.glob("*.md") if f"](docs/{page.name}" not in readme]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_the_readme_names_the_test_command_ci_runs() -> None:
    assert "make check" in (ROOT / "README.md").read_text()
    assert re.search(r"^check:", (ROOT / "Makefile").read_text(), re.MULTILINE)


def commands(group: Any, prefix: str = "telemetra") -> Iterator[tuple[str, Any]]:
    """Every runnable command of the CLI as ("telemetra device create", click command)."""
    for name, command in group.commands.items():
        if command.hidden:
            continue
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            yield from commands(command, path)
        else:
            yield path, command


def sections(page: Path) -> dict[str, str]:
    """Text under each heading that names a command in backticks (`telemetra …`)."""
    found: dict[str, str] = {}
    current: str | None = None
    for line in prose(page.read_text()):
        m = HEADING.match(line)
        if m:
            name = re.fullmatch(r"`(telemetra(?: [\w-]+)+)`", m.group(2))
            current = name.group(1) if name else None
            if current:
                found[current] = ""
        elif current:
            found[current] += line + "\n"
    return found


CLI_DOC = DOCS / "cli.md"
CLI = dict(commands(get_command(app)))


def long_options(command: Any) -> list[str]:
    names = []
    for param in command.params:
        if param.param_type_name == "option" and not getattr(param, "hidden", False):
            names += [o for o in param.opts if o.startswith("--") and o not in COMPLETION][:1]
    return names


@pytest.mark.parametrize("name", sorted(CLI))
def test_cli_doc_has_a_section_for_every_command_with_its_options(name: str) -> None:
    documented = sections(CLI_DOC)
    assert name in documented, f"docs/cli.md has no heading ### `{name}`"
    missing = [o for o in long_options(CLI[name]) if o not in documented[name]]
    assert not missing, f"docs/cli.md, section `{name}`, does not mention {missing}"


def test_cli_doc_has_no_section_for_a_command_that_does_not_exist() -> None:
    stale = sorted(set(sections(CLI_DOC)) - set(CLI))
    assert not stale, f"docs/cli.md documents commands that do not exist: {stale}"


def test_cli_doc_names_the_global_options() -> None:
    text = CLI_DOC.read_text()
    missing = [o for o in long_options(get_command(app)) if o not in text]
    assert not missing, f"docs/cli.md does not mention {missing}"


def env_name(field: str) -> str:
    return f"TELEMETRA_{field.upper()}"


def test_configuration_doc_names_every_setting() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [env_name(f) for f in Settings.model_fields if f"`{env_name(f)}`" not in text]
    assert not missing, f"docs/configuration.md does not document {missing}"


def known_variables() -> set[str]:
    """Settings, environment variables of CLI options, and those the tests and benchmarks read."""
    known = {env_name(f) for f in Settings.model_fields}
    for _, command in CLI.items():
        known |= {p.envvar for p in command.params if isinstance(getattr(p, "envvar", None), str)}
    for folder in ("tests", "bench"):
        for source in (ROOT / folder).rglob("*.py"):
            if source.name != Path(__file__).name:
                known |= set(ENV_NAME.findall(source.read_text()))
    return known


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_pages_name_only_variables_that_exist(page: Path) -> None:
    unknown = sorted(set(ENV_NAME.findall(page.read_text())) - known_variables())
    assert not unknown, f"{page_id(page)} names variables nothing reads: {unknown}"


def test_cleaning_doc_names_every_flag_and_reason() -> None:
    text = (DOCS / "cleaning.md").read_text()
    flags = [name for name in vars(Flag) if name.isupper()]
    missing = [f"`{f}`" for f in flags if f"`{f}`" not in text]
    missing += [f"`{r.value}`" for r in Reason if f"`{r.value}`" not in text]
    assert not missing, f"docs/cleaning.md does not explain {missing}"
