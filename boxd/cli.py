"""The ``boxd`` command line: argument parsing only; each command calls into its module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from boxd import __version__, client
from boxd.errors import BoxdError, ConfigError, unwrap
from boxd.jobs.models import PRIORITY_MAX, PRIORITY_MIN, JobState, Mode, OnConflict
from boxd.settings import Settings, load_settings
from boxd.units import parse_duration, parse_size


def _arg(parse: Callable[[str], object], what: str) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{what}: {exc}") from None

    convert.__name__ = what
    return convert


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError(f"{text} is not between 0 and 1")
    return value


def _add_sim(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sim",
        help="run the Box API emulator",
        description=(
            "Serve a faithful Box API emulator on one port: /2.0 (API), /api/2.0 (uploads), /oauth2/token. "
            "Writes DATA_DIR/credentials.json and DATA_DIR/box_config.json once it listens."
        ),
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089, help="0 picks a free port (see credentials.json)")
    p.add_argument("--data-dir", type=Path, default=Path("boxd-sim-data"))
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    size = _arg(parse_size, "size")
    seconds = _arg(parse_duration, "duration")
    p.add_argument("--token-ttl", type=seconds, default=3600.0, help="access-token lifetime [3600]")
    p.add_argument("--part-size", type=size, default=0, help="fixed part size [Box-like policy: 8 MiB]")
    p.add_argument("--api-calls-per-minute", type=int, default=0, help="per user; 0 = unlimited [0]")
    p.add_argument("--uploads-per-minute", type=int, default=0, help="per user; 0 = unlimited [0]")
    p.add_argument("--rate-window", type=seconds, default=60.0, help="the 'minute' of the limits, in seconds [60]")
    p.add_argument("--rate-burst", type=int, default=1, help="token-bucket capacity of the limits [1]")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every request [0]")
    p.add_argument("--bandwidth", type=size, default=0, help="bytes/s per connection; 0 = unlimited [0]")
    p.add_argument("--commit-202", type=int, default=0, help="first N commits of each session answer 202 [0]")
    p.add_argument("--commit-mismatch", type=int, default=0, help="first N commits answer parts_mismatch [0]")
    p.add_argument("--space-amount", type=size, default=None, help="account quota [10 TiB]")
    p.add_argument("--max-upload-size", type=size, default=None, help="largest file [5 GiB]")
    p.add_argument("--session-ttl", type=seconds, default=None, help="upload-session lifetime [7 days]")
    p.add_argument("--rate-429", type=_arg(_probability, "probability"), default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--rate-5xx", type=_arg(_probability, "probability"), default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--drop-mid-part", type=_arg(_probability, "probability"), default=0.0, help=argparse.SUPPRESS)
    p.set_defaults(func=_run_sim)


def _run_sim(args: argparse.Namespace) -> int:
    from boxd.sim.config import Knobs
    from boxd.sim.server import SimOptions, SimStartError, run

    knobs = Knobs(
        token_ttl=args.token_ttl,
        part_size=args.part_size,
        api_calls_per_minute=args.api_calls_per_minute,
        uploads_per_minute=args.uploads_per_minute,
        rate_window=args.rate_window,
        rate_burst=args.rate_burst,
        latency_ms=args.latency_ms,
        bandwidth=args.bandwidth,
        commit_202=args.commit_202,
        commit_mismatch=args.commit_mismatch,
        rate_429=args.rate_429,
        rate_5xx=args.rate_5xx,
        drop_mid_part=args.drop_mid_part,
    )
    overrides = {
        "space_amount": args.space_amount,
        "max_upload_size": args.max_upload_size,
        "session_ttl": args.session_ttl,
    }
    try:
        knobs = knobs.updated({k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        print(f"boxd sim: {exc}", file=sys.stderr)
        return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("boxd sim: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    options = SimOptions(
        host=args.host, port=args.port, data_dir=args.data_dir, tls_cert=args.tls_cert, tls_key=args.tls_key
    )
    try:
        run(options, knobs)
    except SimStartError as exc:
        print(f"boxd sim: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from boxd import demo

    p = sub.add_parser(
        "demo", help="emulator + sample backup + live upload + verified result", description=demo.DESCRIPTION
    )
    demo.add_arguments(p)
    p.set_defaults(func=demo.run)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, default=None, metavar="F", help="configuration file [BOXD_CONFIG or /etc/boxd/boxd.toml]"
    )


def _load(args: argparse.Namespace) -> Settings | None:
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(f"boxd: {exc}", file=sys.stderr)
        return None


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the daemon in the foreground (systemd's ExecStart)",
        description="Run boxd: the control socket, the job queue, uploads, health and metrics.",
    )
    _config_arg(p)
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import anyio

    from boxd import daemon, logs

    settings = _load(args)
    if settings is None:
        return 2
    logs.configure()
    try:
        return anyio.run(daemon.run, settings)
    except (ConfigError, BaseExceptionGroup) as exc:
        # A bad setting can surface inside the daemon's task group.
        error = unwrap(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if not isinstance(error, ConfigError):
            raise
        print(f"boxd: {error}", file=sys.stderr)
        return 2


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help='test the connection to Box (Pluton\'s "Test Connection")',
        description="Authenticate, read /users/me and the root folder; exit 0 only if all is well.",
    )
    _config_arg(p)
    p.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    import anyio

    from boxd import account

    settings = _load(args)
    if settings is None:
        return 2
    try:
        report = anyio.run(account.check, settings)
    except BoxdError as exc:
        print(f"boxd check: failed: {exc}", file=sys.stderr)
        return 1
    account.print_check(report)
    return 0


def _add_token(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("token", help="manage the stored Box token")
    actions = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    imp = actions.add_parser(
        "import",
        help='store the JSON blob printed by `rclone authorize "box"`',
        description="Validate the token blob and store it in state_dir/token.json (0600).",
    )
    imp.add_argument("source", nargs="?", default="-", help="file holding the blob, or - for stdin [-]")
    _config_arg(imp)
    imp.set_defaults(func=_run_token_import)


def _run_token_import(args: argparse.Namespace) -> int:
    from boxd import account

    settings = _load(args)
    if settings is None:
        return 2
    try:
        path = account.import_token(settings, args.source)
    except BoxdError as exc:
        print(f"boxd token import: {exc}", file=sys.stderr)
        return 1
    print(f"stored the token in {path}; a running daemon picks it up within seconds (or at once on SIGHUP)")
    return 0


# --- client commands: talk to a running daemon over its control socket (boxd.client) ------------


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket", type=Path, default=None, metavar="PATH", help="control socket [BOXD_SOCKET or daemon.socket]"
    )
    _config_arg(p)
    p.add_argument("--json", action="store_true", dest="as_json", help="print the API's JSON answer")


def _target(args: argparse.Namespace) -> client.Target:
    return client.Target(socket=args.socket, config=args.config)


def _priority(text: str) -> int:
    value = int(text)
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValueError(f"{text} is not in {PRIORITY_MIN}..{PRIORITY_MAX}")
    return value


def _limit(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:
        raise ValueError(f"{text} is not in 1..1000")
    return value


def _add_enqueue(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "enqueue",
        help="submit a backup job to the daemon",
        description=(
            "Queue SOURCE (a file or directory under daemon.allowed_sources) for upload into a Box folder. "
            "Exit status: 0 accepted (with --wait: succeeded), 1 refused or failed, 2 usage, 3 daemon unreachable."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help="file or directory (a relative path is taken from here)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="PATH", dest="destination", help="Box folder path under box.root_folder_id")
    where.add_argument("--folder-id", metavar="ID", help="Box folder id to upload into")
    p.add_argument("--mode", choices=[m.value for m in Mode], help="copy, or mirror (also trash remote extras) [copy]")
    p.add_argument("--on-conflict", choices=[c.value for c in OnConflict], help="for changed files [version]")
    p.add_argument("--key", metavar="K", help="idempotency key: resubmitting it returns the existing job")
    p.add_argument(
        "--priority", type=_arg(_priority, "priority"), metavar="N", help=f"{PRIORITY_MIN}..{PRIORITY_MAX} [0]"
    )
    p.add_argument("--wait", action="store_true", help="follow the job with a progress bar; exit 1 unless it succeeds")
    _client_args(p)
    p.set_defaults(func=_run_enqueue)


def _run_enqueue(args: argparse.Namespace) -> int:
    body = client.request_body(
        args.source,
        destination=args.destination,
        folder_id=args.folder_id,
        mode=args.mode,
        on_conflict=args.on_conflict,
        idempotency_key=args.key,
        priority=args.priority,
    )
    return client.cmd_enqueue(_target(args), body, wait=args.wait, as_json=args.as_json)


def _add_jobs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("jobs", help="list jobs, newest first", description="List the daemon's jobs, newest first.")
    p.add_argument("--state", choices=[s.value for s in JobState], help="only jobs in this state")
    p.add_argument("--limit", type=_arg(_limit, "limit"), metavar="N", help="at most this many, 1..1000 [100]")
    _client_args(p)
    p.set_defaults(func=_run_jobs)


def _run_jobs(args: argparse.Namespace) -> int:
    return client.cmd_jobs(_target(args), state=args.state, limit=args.limit, as_json=args.as_json)


def _add_job_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str, run: Callable[..., int]
) -> None:
    p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
    p.add_argument("job_id", metavar="ID", help="job id (j_...)")
    _client_args(p)
    p.set_defaults(func=lambda args: run(_target(args), args.job_id, as_json=args.as_json))


def _add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="daemon, auth and queue state", description="Show daemon, auth and queue state.")
    _client_args(p)
    p.set_defaults(func=lambda args: client.cmd_status(_target(args), as_json=args.as_json))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boxd", description="Stream backup jobs into Box.")
    parser.add_argument("--version", action="version", version=f"boxd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_enqueue(sub)
    _add_jobs(sub)
    _add_job_command(sub, "show", "show a job and its files", client.cmd_show)
    _add_job_command(sub, "cancel", "cancel a queued or running job", client.cmd_cancel)
    _add_job_command(sub, "retry", "re-run the failed files of a failed job", client.cmd_retry)
    _add_status(sub)
    _add_serve(sub)
    _add_check(sub)
    _add_token(sub)
    _add_sim(sub)
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
