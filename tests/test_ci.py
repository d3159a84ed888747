"""GitHub Actions integration without a runner: file-command syntax, masks, summary, annotations (unit tests)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from ghactions import Job, _commands, parse_env_file, unescape

from envkit import ci
from envkit.errors import ConfigError
from envkit.exports import github_env

TRICKY = {
    "PLAIN": "value",
    "EQUALS": "a=b=c",
    "HEREDOC_LOOKALIKE": "x<<EOF",
    "MULTI": "line one\nline two\n",
    "CRLF": "a\r\nb",
    "UNICODE": "Ünïcödé ✓",
    "EMPTY": "",
    "PERCENT": "%0A is not a newline",
}


def test_github_env_round_trips_through_the_runners_parser() -> None:
    text = github_env(TRICKY)
    parsed = parse_env_file(text)
    assert parsed == {**TRICKY, "CRLF": "a\r\nb"}
    assert "MULTI<<ENVKIT_EOF_" in text and "PLAIN=value\n" in text


def test_github_env_delimiter_never_occurs_in_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(ci.secrets, "token_hex", lambda n: next(tokens))  # same module object as exports.secrets
    text = github_env({"V": "first\nENVKIT_EOF_aaaa\nlast"})
    assert "V<<ENVKIT_EOF_bbbb\n" in text
    assert parse_env_file(text) == {"V": "first\nENVKIT_EOF_aaaa\nlast"}


@pytest.mark.parametrize("name", ["BAD NAME", "A=B", "X\nY", "1ABC", ""])
def test_github_env_refuses_names_the_runner_would_misread(name: str) -> None:
    with pytest.raises(ConfigError, match="cannot export"):
        github_env({name: "v"})


def test_masks_cover_every_printed_form_of_a_password() -> None:
    password = "p@ss:w%rd/Ü\nsecond"
    env = {"DATABASE_URL": "postgresql+psycopg://u:p%40ss%3Aw%25rd%2F%C3%9C%0Asecond@h:1/db", "PGPASSWORD": password,
           "PGUSER": "u", "REDIS_URL": "redis://h:2/0", "PGHOST": "h"}
    masks = [unescape(line[len("::add-mask::"):]) for line in ci.mask_commands(env).splitlines()]
    assert "p@ss:w%rd/Ü" in masks and "second" in masks  # a multi-line secret is masked line by line
    assert env["DATABASE_URL"] in masks
    assert "p%40ss%3Aw%25rd%2F%C3%9C%0Asecond" in masks  # the password as it appears inside the URL
    assert not any(m in ("h", "u", "redis://h:2/0") for m in masks)  # no password, nothing to hide
    for line in ci.mask_commands(env).splitlines():  # one command per line, data escaped
        assert line.startswith("::add-mask::") and "\r" not in line


def test_well_known_passwords_mask_only_whole_urls() -> None:
    env = {"DATABASE_URL": "postgresql://postgres:postgres@127.0.0.1:5432/app_test", "PGPASSWORD": "postgres", "PGUSER": "postgres"}
    assert ci.mask_values(env) == [env["DATABASE_URL"]]


def test_error_annotation_names_stage_and_service_and_escapes() -> None:
    line = ci.error_command("50% done\nsecond line", stage="migrate", service="postgres")
    assert line == "::error title=envkit failed at stage migrate (service postgres)::50%25 done%0Asecond line\n"
    assert ci.error_command("x", stage=None, service=None).startswith("::error title=envkit failed::")


def test_log_groups_do_not_obey_commands_inside_the_log() -> None:
    text = ci.group("envkit: postgres log", "ok\n::add-mask::evil\n::error::forged\n")
    job = Job(workdir=Path("."), env={})
    _commands(text + "::add-mask::real\n", job)
    assert job.masks == ["real"] and job.errors == []
    assert text.startswith("::group::envkit: postgres log\n") and text.endswith("::endgroup::\n")


def test_summary_has_services_stages_result_and_redacts_urls() -> None:
    report = {
        "command": "test", "result": "failed", "exit_code": 3, "name": "proj-abc", "backend": "native",
        "services": [{"name": "postgres", "version": "15.2", "host": "127.0.0.1", "port": 5433, "status": "up"}],
        "stages": [{"stage": "start", "status": "done", "seconds": 0.25, "detail": "a|b"},
                   {"stage": "migrate", "status": "failed", "seconds": 0.5, "detail": "boom"}],
        "error": {"stage": "migrate", "service": "postgres", "message": "failed on postgresql://u:hunter2@h/db"},
        "diagnostics": "/x/.envkit/diagnostics/proj-abc",
    }
    text = ci.redact_urls(ci.summary_markdown(report))
    assert "❌ failed" in text and "stage `migrate`, service `postgres`" in text
    assert "| postgres | 15.2 | `127.0.0.1:5433` | up |" in text
    assert "| start | ok | 0.250 | a\\|b |" in text and "| migrate | failed | 0.500 | boom |" in text
    assert "**0.750**" in text and "/x/.envkit/diagnostics/proj-abc" in text
    assert "hunter2" not in text and "postgresql://u:***@h/db" in text


def test_finish_writes_summary_outputs_annotation_and_log_groups(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "services").mkdir(parents=True)
    (bundle / "services" / "postgres.log").write_text("".join(f"line {i}\n" for i in range(1000)))
    (bundle / "environment.json").write_text(json.dumps({"name": "proj-1", "backend": "native", "services": [
        {"name": "postgres", "version": "15", "host": "127.0.0.1", "port": 1, "status": "exited with code 1"}]}))
    environ = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"), "GITHUB_OUTPUT": str(tmp_path / "out")}
    out = io.StringIO()
    ci.finish(environ, {"command": "up", "result": "failed", "exit_code": 3, "stages": [],
                        "error": {"stage": "start", "service": None, "message": "postgres exited"},
                        "diagnostics": str(bundle)}, out)
    assert parse_env_file((tmp_path / "out").read_text()) == {
        "result": "failed", "exit-code": "3", "environment": "proj-1", "diagnostics": str(bundle)}
    summary = (tmp_path / "summary").read_text()
    assert "`proj-1` on the **native** backend" in summary and "exited with code 1" in summary
    printed = out.getvalue()
    assert printed.startswith("::error title=envkit failed at stage start::postgres exited\n")
    assert "::group::envkit: postgres log" in printed and "line 999\n" in printed and "line 599\n" not in printed
    assert "last 400 of 1000 lines" in printed


def test_finish_does_nothing_outside_github_actions(tmp_path: Path) -> None:
    out = io.StringIO()
    ci.finish({"GITHUB_STEP_SUMMARY": str(tmp_path / "s")}, {"result": "failed", "error": {"message": "x"}}, out)
    assert out.getvalue() == "" and not (tmp_path / "s").exists()


def test_append_env_needs_the_runners_file() -> None:
    with pytest.raises(ConfigError, match=r"\$GITHUB_ENV is not set"):
        ci.append_env({"GITHUB_ACTIONS": "true"}, {"A": "b"})
