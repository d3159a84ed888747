"""envkit.redact: each secret replaced in every spelling envkit's own writers give it."""

from __future__ import annotations

import json

import pytest

from envkit import exports, redact
from envkit.backends.docker import render
from envkit.services import PostgresEndpoint, RedisEndpoint

#: Passwords that survive one encoding or another: compose's `$`, YAML/JSON's `"` and `\`, URL-reserved
#: characters, shell quotes, non-ASCII (JSON writes \u escapes), and a plain one.
HOSTILE = ["Pg$x ZZpw6", 'q"uo\\te\'s pw', "back\\slash\\\\end", "dollar$$two${HOME}", "pct%41+plus&amp=;?#/@:",
           "ünï€ødé-pässwörd", "plain-Password-123"]


def spelled(secret: str) -> dict[str, str]:
    """The secret as each of envkit's writers puts it into text."""
    pg = PostgresEndpoint(host="127.0.0.1", port=5433, user="u", password=secret, database="d", admin_url="")
    env = {"PGPASSWORD": secret, "DATABASE_URL": pg.url()}
    return {
        "raw": f"password {secret} in a log",
        "compose (render.q)": f"POSTGRES_PASSWORD: {render.q(secret)}",
        "compose flow": render.flow({"PW": secret}),
        "url": pg.url(),
        "libpq url": pg.libpq(),
        "redis url": RedisEndpoint("127.0.0.1", 6380, 0, password=secret).url,
        "shell": exports.format_env(env, "shell"),
        "dotenv": exports.format_env(env, "dotenv"),
        "json": exports.format_env(env, "json"),
        "json in json": json.dumps({"state": json.dumps({"env": [f"POSTGRES_PASSWORD={secret}"]})}),
        "yaml escaped $$": json.dumps(secret.replace("$", "$$")),
        "repr": repr({"password": secret}),
    }


@pytest.mark.parametrize("secret", HOSTILE)
def test_every_spelling_is_redacted(secret: str) -> None:
    scrub = redact.Redactor([secret])
    for how, text in spelled(secret).items():
        out = scrub(text)
        assert redact.MASK in out, how
        for form in {secret, secret.replace("$", "$$"), json.dumps(secret)[1:-1]}:
            assert form not in out, f"{how}: {out!r}"


def test_text_without_secrets_is_left_alone() -> None:
    scrub = redact.Redactor(["Pg$x ZZpw6", "ab"])  # too short to replace: "ab" would hit every word
    text = "postgres: ready on 127.0.0.1:5433 (tab, about)"
    assert scrub(text) == text
    assert scrub("host=/run port=1 password=hunter22 dbname=x") == "host=/run port=1 password=*** dbname=x"


def test_url_keeps_everything_but_the_password() -> None:
    assert redact.url("postgresql://u:p%40ss@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact.url("redis://h:6379/0") == "redis://h:6379/0"
    assert set(redact.url_passwords("postgresql://u:p%40ss@h/db")) == {"p%40ss", "p@ss"}
