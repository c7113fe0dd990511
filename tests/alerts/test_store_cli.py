"""`telemetra alert-rule`: list, create from JSON/YAML files (all or none, one-line errors naming
the rule and field), replace, delete by id or name — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from telemetra.cli import app

runner = CliRunner()

YAML_RULES = """\
- name: {prefix} freezer too warm
  kind: threshold
  metric: temperature
  condition: {{op: ">", value: -15}}
  for: 2m
  clear: {{op: "<=", value: -17}}
  scope: {{type: freezer}}
  severity: critical
  channels:
    - {{kind: webhook, url: "https://ops.example.org/hook", secret: "a long shared secret"}}
    - {{kind: email, to: [ops@example.org]}}
- name: {prefix} silent
  kind: no_data
  condition: {{for: 10m}}
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"TELEMETRA_DATA_DIR": str(tmp_path / "data"), "TELEMETRA_DATABASE_URL": ""}
    url = str(request.getfixturevalue("pg_url"))  # migrated
    return {"TELEMETRA_DATABASE_URL": url, "TELEMETRA_DATA_DIR": str(tmp_path / "data")}


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    told = "".join(  # less the line saying where the embedded database is
        line for line in result.stderr.splitlines(keepends=True) if "using SQLite" not in line
    )
    return result.exit_code, result.stdout, told


def test_alert_rules_from_files(env: dict[str, str], tmp_path: Path) -> None:
    prefix = uuid.uuid4().hex[:6]
    rules = tmp_path / "rules.yaml"
    rules.write_text(YAML_RULES.format(prefix=prefix))
    code, _, err = run(env, "alert-rule", "create", str(rules))
    assert code == 0, err
    assert f"alert rule '{prefix} freezer too warm' created" in err
    assert f"alert rule '{prefix} silent' created" in err

    code, out, err = run(env, "alert-rule", "list", "--json", "--tenant", "default")
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines() if prefix in line]
    assert [(r["name"], r["tenant"], r["kind"]) for r in listed] == [
        (f"{prefix} freezer too warm", "default", "threshold"),
        (f"{prefix} silent", "default", "no_data"),
    ]
    assert listed[0]["for"] == "2m" and listed[0]["scope"] == {"type": "freezer"}
    assert listed[0]["channels"][0] == {
        "kind": "webhook",
        "url": "https://ops.example.org/hook",
        "secret_set": True,
    }
    assert "a long shared secret" not in out
    code, out, _ = run(env, "alert-rule", "list")
    assert code == 0 and f"{prefix} silent" in out and "webhook email" in out

    # Again: the names are taken — nothing is stored unless --replace says so.
    code, _, err = run(env, "alert-rule", "create", str(rules))
    assert code == 1
    assert err.count("\n") == 1 and "already exists" in err and "--replace" in err
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"name": f"{prefix} silent", "kind": "no_data",
                               "condition": {"for": "30m"}, "severity": "info"}))  # fmt: skip
    code, _, err = run(env, "alert-rule", "create", str(one), "--replace")
    assert code == 0 and "replaced" in err, err
    code, out, _ = run(env, "alert-rule", "list", "--json")
    silent = [json.loads(line) for line in out.splitlines() if f"{prefix} silent" in line]
    assert [(r["condition"], r["severity"], r["id"]) for r in silent] == [
        ({"for": "30m"}, "info", listed[1]["id"])
    ]

    code, _, err = run(env, "alert-rule", "delete", f"{prefix} silent")
    assert code == 0 and "deleted" in err, err
    code, _, err = run(env, "alert-rule", "delete", str(listed[0]["id"]), "--tenant", "default")
    assert code == 0, err
    code, _, err = run(env, "alert-rule", "delete", f"{prefix} silent")
    assert code == 1 and "no alert rule" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bad.yaml", "- name: x\n  kind: [\n", "not valid YAML at line"),
        ("bad.json", '{"name": "x",', "not valid JSON at line 1"),
        ("list.json", '[{"name": "ok", "kind": "no_data", "condition": {"for": "5m"}}, '
         '{"name": "hot", "kind": "threshold", "metric": "t", "condition": {"op": "~", '
         '"value": 1}}]', "rule 2 ('hot'): condition.op: "),
        ("for.yaml", "name: slow\nkind: threshold\nmetric: t\ncondition: {op: '>', value: 1}\n"
         "for: 2 minutes\n", "('slow'): for: "),
        ("twice.yaml", "- {name: a, kind: no_data, condition: {for: 5m}}\n"
         "- {name: a, kind: no_data, condition: {for: 9m}}\n", "'a' appears twice"),
        ("empty.json", "[]", "holds no rule"),
        ("scalar.yaml", "- 3\n", "rule 1: a rule is an object"),
    ],
)  # fmt: skip
def test_a_bad_rule_file_is_one_line_naming_the_place(
    tmp_path: Path, name: str, content: str, expected: str
) -> None:
    env = {"TELEMETRA_DATA_DIR": str(tmp_path / "data"), "TELEMETRA_DATABASE_URL": ""}
    path = tmp_path / name
    path.write_text(content)
    code, _, err = run(env, "alert-rule", "create", str(path))
    assert code == 1
    assert expected in err and err.startswith("error: ") and err.count("\n") == 1, err
    code, out, _ = run(env, "alert-rule", "list", "--json")
    assert out == ""  # all or none: nothing stored
    code, _, err = run(env, "alert-rule", "create", str(tmp_path / "missing.yaml"))
    assert code == 1 and "missing.yaml" in err
