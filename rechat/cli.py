"""The command line (typer): `rechat serve|record|replay`, thin over app.serve.

Owns argument parsing, `RECHAT_*` environment variables and the `rechat URL` shorthand; the
only module that imports typer. Everything it does is build a Config and hand it to
`app.serve` with the console's callbacks.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Optional

import typer

from rechat import __version__
from rechat.app import DEFAULT_UPSTREAM, Config, Hooks, serve
from rechat.console import ConsoleView
from rechat.errors import ConfigError
from rechat.policy import Mode

cli = typer.Typer(
    name="rechat", no_args_is_help=False, add_completion=False, rich_markup_mode=None,
    help="Record/replay proxy for OpenAI-compatible APIs, with markdown sessions. "
         "`rechat URL` is short for `rechat serve URL`.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

Upstream = Annotated[str, typer.Argument(envvar="RECHAT_UPSTREAM", show_default=True, metavar="UPSTREAM",
                                         help="Upstream base URL; /v1/X goes to UPSTREAM/X.")]
Host = Annotated[str, typer.Option("--host", envvar="RECHAT_HOST", metavar="HOST", help="Address to listen on.")]
Port = Annotated[int, typer.Option("--port", "-p", envvar="RECHAT_PORT", metavar="PORT",
                                   help="Port to listen on (0 picks a free one).")]
Sessions = Annotated[Optional[list[str]], typer.Option(
    "--sessions", "-s", envvar="RECHAT_SESSIONS", metavar="DIR",
    help="Sessions folder (repeatable; the first receives recordings). [default: ./sessions]")]
Timeout = Annotated[float, typer.Option("--timeout", envvar="RECHAT_TIMEOUT", metavar="SECONDS",
                                        help="Upstream connect/read timeout in seconds.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", envvar="RECHAT_QUIET",
                                     help="Print only errors.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", envvar="RECHAT_VERBOSE",
                                       help="Also print request parameters and timings.")]
NoWatch = Annotated[bool, typer.Option("--no-watch", envvar="RECHAT_NO_WATCH",
                                       help="Do not reload session files edited while running.")]
NoUI = Annotated[bool, typer.Option("--no-ui", envvar="RECHAT_NO_UI",
                                    help="Do not serve the web UI and request log.")]
LogDb = Annotated[Optional[str], typer.Option(
    "--log-db", envvar="RECHAT_LOG_DB", metavar="PATH",
    help="Request log database. [default: SESSIONS/.rechat/log.sqlite]")]
LogAge = Annotated[float, typer.Option("--log-max-age-days", envvar="RECHAT_LOG_MAX_AGE_DAYS",
                                       metavar="DAYS", help="Delete request log rows older than this.")]
UIToken = Annotated[Optional[str], typer.Option("--ui-token", envvar="RECHAT_UI_TOKEN", metavar="TOKEN",
                                                help="Require this token for the web UI and its API.")]


def _run(mode: Mode, upstream: str | None, sessions: list[str] | None, host: str, port: int,
         timeout: float, quiet: bool, verbose: bool, no_watch: bool, no_ui: bool,
         log_db: str | None, log_max_age_days: float, ui_token: str | None) -> None:
    view = ConsoleView("quiet" if quiet else "verbose" if verbose else "normal")
    config = Config(mode=mode, upstream=upstream, sessions=sessions or ["sessions"], host=host,
                    port=port, timeout_s=timeout, watch=not no_watch, ui=not no_ui,
                    log_db=log_db, log_max_age_days=log_max_age_days, ui_token=ui_token)
    hooks = Hooks(on_event=view.event, on_error=view.session_error, on_reload=view.reloaded,
                  on_progress=view.progress, on_ready=view.ready)
    if host not in ("127.0.0.1", "localhost", "::1"):
        view.out.print(f"[bold yellow]warning:[/] listening on {host}: anyone who can reach it "
                       "can use your upstream credentials' answers.")
    try:
        asyncio.run(serve(config, hooks))
    except ConfigError as e:
        view.out.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2)
    except OSError as e:
        view.out.print(f"[bold red]error:[/] cannot listen on {host}:{port}: {e.strerror or e}")
        raise typer.Exit(1)
    finally:
        view.summary()


@cli.command("serve")
def serve_cmd(upstream: Upstream = DEFAULT_UPSTREAM, host: Host = "127.0.0.1", port: Port = 8910,
              sessions: Sessions = None, timeout: Timeout = 600.0, quiet: Quiet = False,
              verbose: Verbose = False, no_watch: NoWatch = False, no_ui: NoUI = False,
              log_db: LogDb = None, log_max_age_days: LogAge = 7.0, ui_token: UIToken = None) -> None:
    """Answer from the sessions when a request matches; forward, record and answer otherwise."""
    _run(Mode.SERVE, upstream, sessions, host, port, timeout, quiet, verbose, no_watch, no_ui,
         log_db, log_max_age_days, ui_token)


@cli.command("record")
def record_cmd(upstream: Upstream = DEFAULT_UPSTREAM, host: Host = "127.0.0.1", port: Port = 8910,
               sessions: Sessions = None, timeout: Timeout = 600.0, quiet: Quiet = False,
               verbose: Verbose = False, no_watch: NoWatch = False, no_ui: NoUI = False,
               log_db: LogDb = None, log_max_age_days: LogAge = 7.0, ui_token: UIToken = None) -> None:
    """Always forward and record; never answer from the sessions."""
    _run(Mode.RECORD, upstream, sessions, host, port, timeout, quiet, verbose, no_watch, no_ui,
         log_db, log_max_age_days, ui_token)


@cli.command("replay")
def replay_cmd(dirs: Annotated[Optional[list[str]], typer.Argument(
                   metavar="DIR", show_default=False,
                   help="Sessions folders (same as --sessions).")] = None,
               host: Host = "127.0.0.1", port: Port = 8910, sessions: Sessions = None,
               quiet: Quiet = False, verbose: Verbose = False, no_watch: NoWatch = False,
               no_ui: NoUI = False, log_db: LogDb = None, log_max_age_days: LogAge = 7.0,
               ui_token: UIToken = None) -> None:
    """Answer only from the sessions; never contact an upstream. A miss is a 404."""
    _run(Mode.REPLAY, None, (dirs or []) + (sessions or []), host, port, 600.0, quiet, verbose,
         no_watch, no_ui, log_db, log_max_age_days, ui_token)


@cli.command("version")
def version_cmd() -> None:
    """Print rechat's version."""
    print(__version__)


_COMMANDS = {"serve", "record", "replay", "version"}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `rechat` console script and `python -m rechat`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in _COMMANDS and args[0] not in ("-h", "--help")):
        args.insert(0, "serve")  # `rechat` and `rechat https://host/v1` mean `rechat serve ...`
    cli(args=args, prog_name="rechat")
