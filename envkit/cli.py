"""The ``envkit`` command: parse, build a Config, call the library, map errors to exit codes.

Exit codes: the child's own for ``test`` and ``run``; 3 for envkit's own
failures (one line on stderr, no traceback); 130, 143, 129 for SIGINT,
SIGTERM, SIGHUP; 2 for usage errors.
"""

from __future__ import annotations

from . import _early

_early.install()  # before the slow imports below: a signal now ends envkit quietly, nothing started yet

import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import click  # noqa: E402

from . import __version__, distribution, handoff, lifecycle, recorded, redact, signals  # noqa: E402
from . import config as config_mod  # noqa: E402
from .errors import EXIT_ENVKIT_ERROR, EnvkitError, Interrupted  # noqa: E402
from .output import StageReporter, configure_logging  # noqa: E402

if TYPE_CHECKING:
    from .state import Session

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Ctx:
    """Options shared by every command."""

    def __init__(self, **opts: Any) -> None:
        self.opts = opts
        self.reporter = StageReporter(quiet=opts["quiet"], as_json=opts["as_json"])
        self.loaded: config_mod.Config | None = None  # the config, once a command built it
        self.up_env: lifecycle.Environment | None = None  # the environment this command brought up

    def config(self) -> config_mod.Config:
        overrides: dict[str, Any] = {}
        if self.opts.get("backend"):
            overrides["backend"] = self.opts["backend"]
        if self.opts.get("timeout"):
            overrides["timeout"] = self.opts["timeout"]
        if self.opts.get("no_cache"):
            overrides["cache"] = False
        if self.opts.get("diagnostics"):
            overrides["diagnostics"] = "always"
        self.loaded = config_mod.load(Path.cwd(), config_file=self.opts.get("config_file"), overrides=overrides)
        return self.loaded

    def redactor(self) -> redact.Redactor:
        """The secrets this command knows of (its config's, the environment's it brought up)."""
        return redact.for_run(self.loaded, self.up_env.session if self.up_env else None)

    def on_up(self, env: lifecycle.Environment) -> None:
        """The environment is up: remember it for the CI summary; in GitHub Actions, mask its secrets at once."""
        from . import ci

        self.up_env = env
        if ci.active(env.config.environ):  # stdout, unless it is for machines (--json): the runner reads both
            click.echo(ci.mask_commands(env.exports), nl=False, err=self.opts["as_json"])

    def finish(self, command: str, code: int, error: BaseException | None) -> None:
        """GitHub Actions: step summary, outputs, error annotation and log groups (nothing elsewhere)."""
        from . import ci

        environ = self.loaded.environ if self.loaded is not None else os.environ
        if command in ("up", "test", "run") and ci.active(environ):
            try:
                ci.finish(environ, ci.report(command, code, error, self.reporter.stages, self.up_env, self.redactor()),
                          sys.stdout)
            except (OSError, EnvkitError) as exc:  # the runner's files: never worth failing a finished run for
                click.echo(f"envkit: could not write the GitHub Actions summary or outputs: {exc}", err=True)


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command takes, before the command's name (``envkit -c FILE test``) or after it."""
    for option in reversed((
        click.option("-c", "--config", "config_file", type=click.Path(dir_okay=False),
                     help="envkit.toml or pyproject.toml to take the settings from (the project directory stays the "
                          "one found from here)."),
        click.option("-b", "--backend", type=click.Choice(config_mod.BACKEND_NAMES), help="How services run [default: auto]."),
        click.option("--timeout", type=float, help="Seconds to wait for each service [default: 30]."),
        click.option("--no-cache", is_flag=True, help="Do not use or fill the cluster and snapshot caches."),
        click.option("-q", "--quiet", is_flag=True, help="Print errors only."),
        click.option("-v", "--verbose", count=True, help="More detail (-vv: debug)."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON document for machines."),
        click.option("--diagnostics", is_flag=True, help="Write the diagnostics bundle even when nothing fails."),
    )):
        fn = option(fn)
    return fn


OPTION_NAMES = ("config_file", "backend", "timeout", "no_cache", "quiet", "verbose", "as_json", "diagnostics")


def _merged(after: dict[str, Any]) -> dict[str, Any]:
    """The command's options over the ones given before its name; -v counts both."""
    before = click.get_current_context().find_root().params
    opts = {k: after[k] if after[k] not in (None, False, 0) else before.get(k, after[k]) for k in OPTION_NAMES}
    opts["verbose"] = after["verbose"] + (before.get("verbose") or 0)
    return opts


def common(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Options every command takes, and the error → exit-code mapping."""

    @_options
    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> None:
        opts = _merged({k: kwargs.pop(k) for k in OPTION_NAMES})
        configure_logging(-1 if opts["quiet"] else opts["verbose"])
        ctx = Ctx(**opts)
        signals.install()
        error: EnvkitError | Interrupted | None = None
        try:
            code = fn(ctx, **kwargs) or 0
        except Interrupted as exc:
            code, error = _interrupted(ctx, exc), exc
        except EnvkitError as exc:
            if signals.received():  # the signal caused it (a query cut off, a child stopped): say that
                interrupted = Interrupted(signals.received() or 0)
                interrupted.stage = exc.stage
                code, error = _interrupted(ctx, interrupted), interrupted
            else:
                code, error = _failed(ctx, exc), exc
        with signals.deferred(then_raise=False):
            ctx.reporter.close()
            ctx.finish(fn.__name__.removesuffix("_cmd"), code, error)
        late = signals.received()
        if late and not isinstance(error, Interrupted):  # after the command finished: it still sets the exit code
            click.echo(f"envkit: interrupted by {signal.Signals(late).name} after {fn.__name__.removesuffix('_cmd')} "
                       f"finished{_left_up(ctx)}", err=True)
            code = 128 + late
        signals.install_early()  # exiting: a signal now must not raise into the interpreter's shutdown
        sys.exit(code)

    return wrapper


def _interrupted(ctx: Ctx, exc: Interrupted) -> int:
    ctx.reporter.close()
    if ctx.opts["as_json"]:
        click.echo(json.dumps({"ok": False, "stage": exc.stage, "error": str(exc),
                               "signal": signal.Signals(exc.signum).name}))
    click.echo(f"envkit: {exc}{_left_up(ctx) or '; the environment was torn down'}", err=True)
    return exc.exit_code


def _left_up(ctx: Ctx) -> str:
    """What a signal leaves running: the environment recorded for this checkout, if any."""
    from .errors import StateError
    from .state import load

    if ctx.loaded is None:
        return ""
    try:
        session = load(ctx.loaded)
    except StateError:
        return ""
    return f"; the environment {session.label} is still up (envkit down ends it)" if session else ""


def _failed(ctx: Ctx, exc: EnvkitError) -> int:
    ctx.reporter.close()
    where = f" [{exc.stage}]" if exc.stage else ""
    # a server's log or a command's output in the message may hold a password
    message = ctx.redactor()(str(exc))
    if ctx.opts["as_json"]:
        click.echo(json.dumps({"ok": False, "stage": exc.stage, "error": message}))
    click.echo(f"envkit: error{where}: {message}", err=True)
    if exc.diagnostics:
        click.echo(f"envkit: diagnostics: {exc.diagnostics}", err=True)
        kept = exc.diagnostics / "services" / f"{exc.service}.log"
        if exc.service and kept.is_file():  # the run's own log went with teardown: this copy stays
            click.echo(f"envkit: {exc.service} log: {kept}", err=True)
    return EXIT_ENVKIT_ERROR


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="envkit")
@_options
def main(**opts: Any) -> None:
    """Throwaway PostgreSQL + Redis test environments: started, migrated, seeded, torn down.

    The options below go before the command (envkit -c ci.toml test) or after it (envkit test -c ci.toml).
    """
    clash = distribution.other_envkit()
    if clash:
        click.echo(f"envkit: error: {distribution.clash_message(clash)}", err=True)
        sys.exit(EXIT_ENVKIT_ERROR)


@main.command()
@click.option("--replace", is_flag=True, help="Tear down the environment that is up first (e.g. after changing migrations).")
@common
def up(ctx: Ctx, replace: bool) -> int:
    """Bring the environment up and leave it running (envkit down ends it)."""
    config = ctx.config()
    existing = recorded.current(config)
    if existing is not None and replace:
        recorded.teardown_session(config, existing)
        if config.backend == "auto" and existing.backend:  # a replacement, not a new choice: keep its backend
            config = dataclasses.replace(config, backend=existing.backend)
        if not ctx.opts["quiet"]:
            click.echo(f"envkit: {existing.label} torn down, to be replaced", err=True)
    elif existing is not None:
        recorded.check_fresh(config, existing)
        raise EnvkitError(
            f"an environment is already up for this checkout ({existing.label}, {existing.backend} backend); "
            "use it (eval \"$(envkit env)\"), or replace it with envkit up --replace"
        )
    env = lifecycle.up(config, reporter=ctx.reporter)
    with env.handing_over():  # a signal before the hand-over is complete tears it down
        if config.diagnostics == "always":
            lifecycle.diagnose(env, ctx.reporter)
        ctx.on_up(env)
        _print_connection(ctx, env.exports, env.session.backend)
    return 0


@main.command()
@common
def down(ctx: Ctx) -> int:
    """Tear the environment down. Safe when nothing is up. --diagnostics: write the bundle first."""
    config = ctx.config()
    if config.diagnostics == "always":
        _diagnose_current(ctx, config)
    session = recorded.down(config)
    if ctx.opts["as_json"]:
        click.echo(json.dumps({"ok": True, "torn_down": session.label if session else None}))
    elif not ctx.opts["quiet"]:
        click.echo(f"envkit: {session.label} torn down" if session else "envkit: nothing is up", err=True)
    return 0


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--keep", is_flag=True, help="Leave the environment up afterwards.")
@click.option("--keep-on-failure", is_flag=True, help="Leave it up when the tests fail.")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
@common
def test(ctx: Ctx, keep: bool, keep_on_failure: bool, pytest_args: tuple[str, ...]) -> int:
    """Up, pytest [PYTEST_ARGS], down. The exit code is pytest's."""
    return _hand_off(ctx, [sys.executable, "-m", "pytest", *pytest_args], keep, keep_on_failure)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--keep", is_flag=True, help="Leave the environment up afterwards.")
@click.option("--keep-on-failure", is_flag=True, help="Leave it up when the command fails.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@common
def run(ctx: Ctx, keep: bool, keep_on_failure: bool, command: tuple[str, ...]) -> int:
    """Up, COMMAND, down. The exit code is the command's."""
    return _hand_off(ctx, list(command), keep, keep_on_failure)


def _hand_off(ctx: Ctx, argv: list[str], keep: bool, keep_on_failure: bool) -> int:
    config = ctx.config()
    existing = recorded.current(config)
    if existing is not None:
        recorded.check_fresh(config, existing)  # not against a schema the checkout's migrations no longer describe
        click.echo(f"envkit: using the environment that is already up ({existing.label}); it stays up", err=True)
        return handoff.run_child(argv, {**config.environ, **existing.exports})

    def kept(env: lifecycle.Environment) -> None:
        click.echo("envkit: the environment is still up:", err=True)
        _print_connection(ctx, env.exports, env.session.backend)

    code = lifecycle.run(config, argv, reporter=ctx.reporter, keep=keep or config.keep,
                         keep_on_failure=keep_on_failure or config.keep_on_failure, on_kept=kept, on_up=ctx.on_up)
    if ctx.opts["as_json"]:
        click.echo(ctx.reporter.summary(ok=code == 0, exit_code=code))
    return code


@main.command("env")
@click.option("-f", "--format", "fmt", type=click.Choice(["shell", "dotenv", "json", "github"]), default="shell",
              show_default=True, help="Output format.")
@click.option("--github", "to_github", is_flag=True,
              help="In a GitHub Actions step: append to the file $GITHUB_ENV names; print only ::add-mask:: lines.")
@common
def env_cmd(ctx: Ctx, fmt: str, to_github: bool) -> int:
    """Print the running environment's variables (eval "$(envkit env)")."""
    from . import ci
    from .exports import format_env

    config = ctx.config()
    session = recorded.current(config)
    if session is None:
        raise EnvkitError("no environment is up for this checkout; run envkit up first")
    if to_github:
        # masks first: the runner must know the secrets before anything could print them
        click.echo(ci.mask_commands(session.exports), nl=False)
        path = ci.append_env(config.environ, session.exports)
        if not ctx.opts["quiet"]:
            click.echo(f"envkit: {len(session.exports)} variables appended to {path}", err=True)
        return 0
    if fmt == "github" and ci.active(config.environ):
        # stdout is usually redirected into $GITHUB_ENV: masks go to stderr, which the runner reads as well
        click.echo(ci.mask_commands(session.exports), nl=False, err=True)
    click.echo(format_env(session.exports, fmt), nl=False)
    return 0


@main.command()
@common
def status(ctx: Ctx) -> int:
    """Say whether an environment is up, and what it runs. Exit 1 when none is, or when part of it is gone."""
    from . import health

    config = ctx.config()
    session = recorded.current(config)
    if session is None:
        click.echo(json.dumps({"up": False}) if ctx.opts["as_json"] else "envkit: nothing is up")
        return 1
    stale = recorded.outdated(config, session)
    found = health.check(session)
    services = _services(session)
    info: dict[str, Any] = {"up": True, "name": session.label, "backend": session.backend, "owner_pid": session.owner_pid,
            "detached": session.detached, "services": services,
            "database_url": redact.url(session.exports.get("DATABASE_URL", "")),
            "redis_url": redact.url(session.exports.get("REDIS_URL", "")) or None,
            "stale": stale, "healthy": found.ok, "gone": [{"what": g.what, "detail": g.detail} for g in found.gone]}
    if ctx.opts["as_json"]:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"{session.label}: {'up' if found.ok else 'BROKEN'} ({session.backend} backend)")
        for key in ("database_url", "redis_url"):
            if info[key]:
                click.echo(f"  {key}: {info[key]}")
        for name, service in services.items():
            if service.get("kind") == "service":
                click.echo(f"  {name}: {service['host']} " + ", ".join(f"{k} {v}" for k, v in service["ports"].items()))
        for gone in found.gone:
            click.echo(f"  gone: {gone.detail}")
        if not found.ok:
            click.echo("  fix: envkit up --replace (or envkit down)")
        if stale:
            click.echo(f"  stale: migrated and seeded before {', '.join(stale)} changed; envkit up --replace")
    return 0 if found.ok else 1


def _services(session: Session) -> dict[str, dict[str, Any]]:
    """Each service: where it answers (its typed record, without secrets) and what the backend noted of it."""
    out: dict[str, dict[str, Any]] = {}
    for name, record in session.services.items():
        out[name] = {k: v for k, v in record.items() if k not in ("password", "exports")}
    for name, facts in session.info.items():
        if name in out and isinstance(facts, dict):
            out[name].update(facts)
    return out


@main.command()
@click.argument("service", required=False)
@common
def logs(ctx: Ctx, service: str | None) -> int:
    """Print the services' logs (all, or SERVICE)."""
    from .backends import by_name

    config = ctx.config()
    session = recorded.current(config)
    if session is None:
        raise EnvkitError("no environment is up for this checkout; nothing to show")
    for name, text in by_name(session.backend).logs(session, service).items():
        click.echo(f"==> {name} <==")
        click.echo(text)
    return 0


@main.command("render")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write [default: compose/docker-compose.test.yml].")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when the file is missing or stale (for CI).")
@common
def render_cmd(ctx: Ctx, output: str | None, check: bool) -> int:
    """Write docker-compose.test.yml for plain `docker compose up -d --wait` (fixed ports)."""
    from .backends.docker.render import render, static_plan

    config = ctx.config()
    path = Path(output) if output else config.root / "compose" / "docker-compose.test.yml"
    text = render(config, static_plan(config))
    if check:
        current = path.read_text() if path.is_file() else None
        if current != text:
            click.echo(f"envkit: {path} is {'missing' if current is None else 'stale'}; run envkit render", err=True)
            return 1
        if not ctx.opts["quiet"]:
            click.echo(f"envkit: {path} is up to date", err=True)
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if not ctx.opts["quiet"]:
        click.echo(f"envkit: wrote {path}", err=True)
    return 0


@main.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@common
def prune(ctx: Ctx, dry_run: bool) -> int:
    """Tear down environments whose envkit process died (this checkout's, and envkit's Docker resources on this host)."""
    from .backends import docker_reachable
    from .state import load

    config = ctx.config()
    stale = load(config)
    removed = []
    if stale is not None and (stale.orphaned or stale.teardown_failed):  # the latter: `down` failed
        removed.append(stale.label)
        if not dry_run:
            recorded.teardown_session(config, stale)
    if docker_reachable(config.environ):
        from .backends.docker.backend import prune as prune_docker

        removed += [label for label in prune_docker(config, dry_run=dry_run) if label not in removed]
    if ctx.opts["as_json"]:
        click.echo(json.dumps({"ok": True, "dry_run": dry_run, "removed": removed}))
    elif not ctx.opts["quiet"]:
        verb = "would remove" if dry_run else "removed"
        click.echo(f"envkit: {verb} {', '.join(removed)}" if removed else "envkit: nothing to prune", err=True)
    return 0


@main.command()
@click.option("--force", is_flag=True, help="Rewrite the files envkit wrote before (a Makefile's own targets are kept).")
@click.option("--pyproject", is_flag=True, help="Write the configuration as [tool.envkit] in pyproject.toml.")
@common
def init(ctx: Ctx, force: bool, pyproject: bool) -> int:
    """Scaffold envkit.toml, a seed file, make test/up/down and a GitHub workflow into this project."""
    from .scaffold import init as scaffold

    try:
        result = scaffold(Path.cwd(), force=force, pyproject=pyproject, environ=os.environ)
    except FileNotFoundError as exc:
        raise EnvkitError(str(exc)) from None
    if ctx.opts["as_json"]:
        click.echo(json.dumps({"ok": True, "found": result.found, "actions": [dict(zip(("path", "action", "why"), a, strict=True))
                                                                              for a in result.actions]}, indent=2))
    elif not ctx.opts["quiet"]:
        for line in result.found:
            click.echo(f"envkit: {line}")
        for line in result.lines():
            click.echo(f"envkit: {line}")
        click.echo("envkit: next: make test   (or envkit test; envkit doctor checks this machine)")
    return 0


@main.command()
@common
def doctor(ctx: Ctx) -> int:
    """Check what envkit needs here (engine, binaries, ports, config, migrations) and how to fix what is missing."""
    from . import doctor as doctor_mod

    try:
        config, error = ctx.config(), None
    except EnvkitError as exc:
        config, error = None, exc
    backend, checks = doctor_mod.run(config, error)
    if ctx.opts["as_json"]:
        click.echo(json.dumps({"backend": backend, "checks": doctor_mod.as_dicts(checks)}, indent=2))
    else:
        click.echo(doctor_mod.render(backend, checks), nl=False)
    return 1 if doctor_mod.failures(checks) else 0


@main.group()
def cache() -> None:
    """The cluster and snapshot cache."""


@cache.command("clear")
@common
def cache_clear(ctx: Ctx) -> int:
    """Remove every cached cluster and snapshot."""
    from . import cache as cache_mod
    from .backends.native.backend import clear_copies

    config = ctx.config()
    freed = cache_mod.clear(config) + clear_copies(config)
    click.echo(f"envkit: cache cleared ({freed / 1e6:.1f} MB)", err=True)
    return 0


@cache.command("list")
@common
def cache_list(ctx: Ctx) -> int:
    """List cache entries."""
    from . import cache as cache_mod
    from .backends.native import spares

    config = ctx.config()
    for kind, key, size, _used in cache_mod.entries(config):
        click.echo(f"{kind:<10} {key:<40} {size / 1e6:8.1f} MB")
    click.echo(f"(in {cache_mod.root(config)})", err=True)
    kept = spares.listed(cache_mod.root(config))
    if kept:
        click.echo(f"(and {len(kept)} spare cop{'y' if len(kept) == 1 else 'ies'} for the next start in "
                   f"{spares.folder(cache_mod.root(config))}: {', '.join(kept)})", err=True)
    return 0


def _diagnose_current(ctx: Ctx, config: config_mod.Config) -> None:
    from . import ci, diagnostics
    from .backends import by_name

    session = recorded.current(config)
    if session is None:
        return
    path = diagnostics.write(config, session, by_name(session.backend), timings=session.timings)
    if ci.active(config.environ):
        ci.set_outputs(config.environ, {"diagnostics": str(path)})
    if not ctx.opts["quiet"]:
        click.echo(f"envkit: diagnostics: {path}", err=True)


def _print_connection(ctx: Ctx, exports: dict[str, str], backend: str) -> None:
    if ctx.opts["as_json"]:
        click.echo(ctx.reporter.summary(ok=True, backend=backend,
                                        exports={k: (redact.url(v) if "URL" in k else "***" if "PASSWORD" in k else v)
                                                 for k, v in exports.items()}))
        return
    if ctx.opts["quiet"]:
        return
    for key in ("DATABASE_URL", "REDIS_URL"):
        if key in exports:
            click.echo(f"  {key}={redact.url(exports[key])}", err=True)
    click.echo('  connect: eval "$(envkit env)"   tear down: envkit down', err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
