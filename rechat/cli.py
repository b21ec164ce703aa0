"""The command line (typer): `rechat serve|record|replay|passthrough`, thin over app.serve.

Owns argument parsing, `RECHAT_*` environment variables and the `rechat URL` shorthand; the
only module that imports typer. Everything it does is build a Config and hand it to
`app.serve` with the console's callbacks.
"""

import asyncio
import inspect
import os
import sys
from typing import Annotated, Optional

import typer

from rechat import __version__
from rechat.app import DEFAULT_UPSTREAM, Config, Hooks, serve
from rechat.console import ConsoleView
from rechat.dump import DumpFormatError
from rechat.errors import ConfigError
from rechat.policy import Mode

cli = typer.Typer(
    name="rechat", no_args_is_help=False, add_completion=False, rich_markup_mode=None,
    help="Record/replay proxy for OpenAI-compatible APIs, with markdown sessions. "
         "`rechat URL` is short for `rechat serve URL`.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _opt(*names: str, env: str, help: str, metavar: str | None = None, **kw):
    return typer.Option(*names, envvar=f"RECHAT_{env}", help=help, metavar=metavar, **kw)


Upstream = Annotated[Optional[list[str]], typer.Argument(
    envvar="RECHAT_UPSTREAM", metavar="UPSTREAM...", show_default=False,
    help="Upstream base URL(s); /v1/X goes to UPSTREAM/X. Several upstreams route by model: "
         "URL:LOCAL_PORT:MODEL, URL::MODEL, KEY_ENV@URL (docs/gateway.md). "
         "[default: https://api.openai.com/v1]")]
Host = Annotated[str, _opt("--host", env="HOST", metavar="HOST", help="Address to listen on.")]
Port = Annotated[int, _opt("--port", "-p", env="PORT", metavar="PORT",
                           help="Port to listen on (0 picks a free one).")]
Sessions = Annotated[Optional[list[str]], _opt(
    "--sessions", "-s", env="SESSIONS", metavar="DIR",
    help="Sessions folder (repeatable; the first receives recordings). [default: ./sessions]")]
Timeout = Annotated[float, _opt("--timeout", env="TIMEOUT", metavar="SECONDS",
                                help="Upstream connect/read timeout in seconds.")]
ModeOpt = Annotated[Optional[str], _opt(
    "--mode", "-m", env="MODE", metavar="MODE",
    help="Record mode: serve, record, replay or passthrough (overrides the command).")]
Respond = Annotated[bool, _opt("--respond-from-cache/--no-respond-from-cache", env="RESPOND_FROM_CACHE",
                               help="Answer hits from the sessions at all.")]
Store = Annotated[bool, _opt("--store/--no-store", env="STORE", help="Record forwarded exchanges at all.")]
Match = Annotated[str, _opt("--match", env="MATCH", metavar="RULE",
                            help="What makes two requests the same: default, exact (every body "
                                 "field) or content (only the messages).")]
Repeat = Annotated[str, _opt("--repeat", env="REPEAT", metavar="ORDER",
                             help="After the recorded answers run out: last, cycle or first.")]
Fuzzy = Annotated[Optional[float], _opt(
    "--fuzzy", env="FUZZY", metavar="THRESHOLD",
    help="On a miss, serve the nearest recorded answer if its similarity (0..1) reaches this.")]
Diff = Annotated[bool, _opt("--diff", env="DIFF",
                            help="On a miss, print a diff against the nearest recorded request.")]
Latency = Annotated[str, _opt("--latency", env="LATENCY", metavar="none|recorded|FACTOR",
                              help="Replay with no delay, the recorded timing, or it scaled.")]
Quiet = Annotated[bool, _opt("--quiet", "-q", env="QUIET", help="Print only errors.")]
Verbose = Annotated[bool, _opt("--verbose", "-v", env="VERBOSE",
                               help="Also print request parameters and timings.")]
NoWatch = Annotated[bool, _opt("--no-watch", env="NO_WATCH",
                               help="Do not reload session files edited while running.")]
NoUI = Annotated[bool, _opt("--no-ui", env="NO_UI", help="Do not serve the web UI and request log.")]
LogDb = Annotated[Optional[str], _opt("--log-db", env="LOG_DB", metavar="PATH",
                                      help="Request log database. [default: SESSIONS/.rechat/log.sqlite]")]
LogAge = Annotated[float, _opt("--log-max-age-days", env="LOG_MAX_AGE_DAYS", metavar="DAYS",
                               help="Delete request log rows older than this.")]
DumpDir = Annotated[str, _opt("--dump-dir", env="DUMP_DIR", metavar="DIR",
                              help="Folder of this run's flows_<timestamp>.jsonl dump.")]
NoDump = Annotated[bool, _opt("--no-dump", env="NO_DUMP", help="Write no dump.")]
Flow = Annotated[Optional[list[str]], typer.Option(
    "--flow", "-f", metavar="DUMP",
    help="Load a dump as answers (repeatable); -f alone loads every flows_*.jsonl in --dump-dir.")]
ConfigFile = Annotated[Optional[str], _opt("--config", "-c", env="CONFIG", metavar="FILE",
                                           help="TOML gateway config: upstreams, model map, think.")]
Balance = Annotated[Optional[str], _opt("--balance", env="BALANCE", metavar="round-robin|least-busy",
                                        help="How upstreams serving one model share the load.")]
Cooldown = Annotated[Optional[float], _opt(
    "--cooldown", env="COOLDOWN", metavar="SECONDS",
    help="How long a failing upstream leaves the rotation. [default: 30]")]
ModelMapOpt = Annotated[Optional[str], typer.Option(
    "--model-map", envvar="RECHAT_MODEL_MAP", metavar="JSON",
    help='Rename models: {"gpt-3.5-turbo": "llama3-8b", "/gpt-(.*)turbo/": "llama3-\\1"}.')]
Override = Annotated[Optional[str], _opt("--override-model", env="OVERRIDE_MODEL", metavar="NAME",
                                         help="Send every request to this model.")]
Restore = Annotated[Optional[bool], _opt(
    "--restore-model/--served-model", env="RESTORE_MODEL",
    help="Answers name the model the client asked for (default), or the one that served it.")]
Think = Annotated[Optional[str], _opt("--think", env="THINK", metavar="keep|strip|tags",
                                      help="Rewrite reasoning in answers. [default: keep]")]
NoThink = Annotated[Optional[bool], _opt("--no-think", env="NO_THINK",
                                         help="Append /no_think to the last user message.")]
UIToken = Annotated[Optional[str], _opt("--ui-token", env="UI_TOKEN", metavar="TOKEN",
                                        help="Require this token for the web UI and its API.")]


def parse_latency(text: str) -> float:
    """Return the replay latency factor for `none`, `recorded` or a number >= 0."""
    t = text.strip().lower()
    if t in ("none", "0", ""):
        return 0.0
    if t == "recorded":
        return 1.0
    try:
        f = float(t)
    except ValueError:
        f = -1.0
    if f < 0:
        raise ConfigError(f"--latency takes none, recorded or a factor >= 0, not {text!r}")
    return f


def _run(command_mode: Mode, upstream: str | None, sessions: list[str] | None, **o) -> None:
    view = ConsoleView("quiet" if o["quiet"] else "verbose" if o["verbose"] else "normal",
                       show_diff=o["diff"])
    hooks = Hooks(on_event=view.event, on_error=view.session_error, on_reload=view.reloaded,
                  on_progress=view.progress, on_ready=view.ready)
    try:
        mode = Mode.parse(o["mode"]) if o["mode"] else command_mode
        config = Config(
            mode=mode, upstream=upstream, sessions=sessions or ["sessions"], host=o["host"],
            port=o["port"], timeout_s=o["timeout"], watch=not o["no_watch"], ui=not o["no_ui"],
            log_db=o["log_db"], log_max_age_days=o["log_max_age_days"], ui_token=o["ui_token"],
            respond=o["respond"], store=o["store"], match=o["match"], repeat=o["repeat"],
            fuzzy=o["fuzzy"], diff=o["diff"], latency=parse_latency(o["latency"]),
            dump_dir=None if o["no_dump"] else o["dump_dir"],
            flows=None if o["flow"] is None else [f for f in o["flow"] if f],
            config_file=o["config"], balance=o["balance"], cooldown_s=o["cooldown"],
            model_map=o["model_map"], override_model=o["override_model"],
            restore_model=o["restore_model"], think=o["think"], no_think=o["no_think"])
        if config.fuzzy is not None and not 0 <= config.fuzzy <= 1:
            raise ConfigError(f"--fuzzy takes a similarity between 0 and 1, not {config.fuzzy}")
        if config.host not in ("127.0.0.1", "localhost", "::1"):
            view.out.print(f"[bold yellow]warning:[/] listening on {config.host}: anyone who can "
                           "reach it can use your upstream through it and read the sessions.")
        asyncio.run(serve(config, hooks))
    except (ConfigError, DumpFormatError) as e:
        view.out.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2)
    except OSError as e:
        view.out.print(f"[bold red]error:[/] cannot listen on {o['host']}:{o['port']}: "
                       f"{e.strerror or e}")
        raise typer.Exit(1)
    finally:
        view.summary()


# Every mode's command takes the same options (typer has no option groups): name, type, default.
_COMMON = [
    ("host", Host, "127.0.0.1"), ("port", Port, 8910), ("sessions", Sessions, None),
    ("timeout", Timeout, 600.0), ("mode", ModeOpt, None), ("respond", Respond, True),
    ("store", Store, True), ("match", Match, "default"), ("repeat", Repeat, "last"),
    ("fuzzy", Fuzzy, None), ("diff", Diff, False), ("latency", Latency, "none"),
    ("quiet", Quiet, False), ("verbose", Verbose, False), ("no_watch", NoWatch, False),
    ("no_ui", NoUI, False), ("log_db", LogDb, None), ("log_max_age_days", LogAge, 7.0),
    ("ui_token", UIToken, None), ("dump_dir", DumpDir, "."), ("no_dump", NoDump, False),
    ("flow", Flow, None), ("config", ConfigFile, None), ("balance", Balance, None),
    ("cooldown", Cooldown, None), ("model_map", ModelMapOpt, None),
    ("override_model", Override, None), ("restore_model", Restore, None), ("think", Think, None),
    ("no_think", NoThink, None),
]
_DIRS = Annotated[Optional[list[str]], typer.Argument(
    metavar="DIR", show_default=False, help="Sessions folders (same as --sessions).")]


def _command(mode: Mode, doc: str, takes_upstream: bool):
    """Return the typer command of one record mode: its positional argument, then _COMMON."""

    def command(**o) -> None:
        upstream = o.pop("upstream", None) or ([DEFAULT_UPSTREAM] if takes_upstream else None)
        dirs = o.pop("dirs", None) or []
        _run(mode, upstream, dirs + (o.pop("sessions") or []), **o)

    first = (inspect.Parameter("upstream", inspect.Parameter.KEYWORD_ONLY,
                               default=None, annotation=Upstream) if takes_upstream
             else inspect.Parameter("dirs", inspect.Parameter.KEYWORD_ONLY, default=None,
                                    annotation=_DIRS))
    command.__signature__ = inspect.Signature([first] + [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
        for n, a, d in _COMMON])
    command.__doc__ = doc
    return command


for _name, _mode, _doc, _up in [
    ("serve", Mode.SERVE, "Answer from the sessions when a request matches; forward, record and "
                          "answer otherwise.", True),
    ("record", Mode.RECORD, "Always forward and record; never answer from the sessions.", True),
    ("replay", Mode.REPLAY, "Answer only from the sessions; never contact an upstream. A miss is "
                            "a 404.", False),
    ("passthrough", Mode.PASSTHROUGH, "Always forward; record nothing (the console and log still "
                                      "show every exchange).", True),
]:
    cli.command(_name)(_command(_mode, _doc, _up))


@cli.command("export")
def export_cmd(
    md: Annotated[Optional[list[str]], typer.Option(
        "--md", metavar="DUMP", help="Write sessions from dumps, HAR or mitmproxy flow files.")] = None,
    har: Annotated[Optional[str], typer.Option(
        "--har", metavar="SESSIONS", help="Write a HAR file from a sessions folder.")] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", metavar="PATH", help="Output folder (--md) or file (--har).")] = None,
    more: Annotated[Optional[list[str]], typer.Argument(
        metavar="[DUMP]...", show_default=False, help="More inputs for --md.")] = None,
) -> None:
    """Write sessions from recordings (--md), or a HAR file from sessions (--har)."""
    from rechat import export
    raise typer.Exit(export.main((md or []) + (more or []) or None, har, output))


@cli.command("version")
def version_cmd() -> None:
    """Print rechat's version."""
    print(__version__)


_COMMANDS = {"serve", "record", "replay", "passthrough", "export", "version"}


def _expand_flow(args: list[str]) -> list[str]:
    # `-f a.jsonl b.jsonl` and a bare `-f` (as in the original rechat) become repeated options;
    # click options take exactly one value.
    out: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in ("-f", "--flow"):
            j = i + 1
            files = []
            while j < len(args) and not args[j].startswith("-") and (
                    args[j].endswith(".jsonl") or os.path.isfile(args[j])):
                files.append(args[j])
                j += 1
            out += [x for f in files for x in ("--flow", f)] or ["--flow", ""]
            i = j
        else:
            out.append(args[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `rechat` console script and `python -m rechat`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in _COMMANDS and args[0] not in ("-h", "--help")):
        args.insert(0, "serve")  # `rechat` and `rechat https://host/v1` mean `rechat serve ...`
    cli(args=_expand_flow(args), prog_name="rechat")
