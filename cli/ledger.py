"""`ledger-verify` and `wakeline ledger verify|export|proof|checkpoint`.

Thin: parse options, build settings, call wakeline.ledger (or wakeline.infra.kafka_source).
Exit codes of verification (docs/ledger-format.md §Exit codes): 0 sound, 10 tampered,
11 incomplete, 12 unusable input; 2 bad configuration.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from wakeline.errors import ConfigError, WakelineError
from wakeline.infra.settings import Variable, declare, number

#: how old an unledgered record may be before `ledger-verify` calls the ledger incomplete
STALE_AFTER_S = Variable(
    "WAKELINE_VERIFY_STALE_AFTER_S",
    number(lo=0),
    60.0,
    "ledger-verify from PostgreSQL/Kafka: unledgered records older than this (s) make the "
    "verdict incomplete (a stuck builder); younger ones are a warning",
)
declare("verify", "ledger-verify", STALE_AFTER_S)

EXIT_UNUSABLE = 12


def _err(message: str, code: int) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


def _trusted_keys(values: tuple[str, ...]) -> list[str]:
    """Each --trusted-key is a verifier key string or a file of them (one per line)."""
    keys: list[str] = []
    for v in values:
        path = Path(v).expanduser()
        if "+" not in v or path.exists():
            try:
                keys += [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            except OSError as e:
                raise ConfigError(f"--trusted-key {v}: cannot read: {e.strerror}") from e
        else:
            keys.append(v)
    from wakeline.ledger.checkpoints import parse_vkey

    for k in keys:
        try:
            parse_vkey(k)
        except WakelineError as e:
            raise ConfigError(f"--trusted-key {k!r}: {e}") from e
    return keys


def _dsn(dsn: str | None) -> str:
    from wakeline.infra.settings import DatabaseSettings

    return dsn or DatabaseSettings.from_env().dsn


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A leaves counter on stderr when it is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("verifying: {task.completed:,.0f} leaves"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("verify", total=None)
        yield lambda n: bar.advance(task, n)


def _print_report(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    colour = {"sound": "green", "tampered": "red", "incomplete": "yellow", "unusable": "magenta"}
    console.print(
        f"[bold {colour[report.verdict]}]{report.verdict.upper()}[/] (exit {report.exit_code})",
        highlight=False,
    )
    if report.first is not None:
        console.print(f"first bad item: {report.first.describe()}", highlight=False, markup=False)
    stats = Table(show_header=False, box=None)
    for k, v in report.stats.items():
        stats.add_row(k, f"{v:,}")
    console.print(stats)
    bad = [f for f in report.findings if f.verdict != "warning"]
    if len(bad) > 1:
        console.print(f"{len(bad) + report.suppressed} findings in all:")
        for f in bad[:20]:
            console.print(f"  {f.describe()}", highlight=False, markup=False)
    for f in report.findings:
        if f.verdict == "warning":  # positions worth a look; they never change the verdict
            console.print(f.describe(), highlight=False, markup=False, style="yellow")
    for w in report.warnings:
        if any(f.message == w for f in report.findings):
            continue  # already printed as its finding
        console.print(f"warning: {w}", highlight=False, markup=False, style="yellow")


def run_verify(
    bundle: Path | None,
    dsn: str | None,
    from_kafka: bool,
    trusted_key: tuple[str, ...],
    public_key: tuple[str, ...],
    no_pairing: bool,
    as_json: bool,
    stale_after: float,
) -> None:
    from wakeline.ledger.sources import verify_bundle, verify_store

    if bundle is not None and (dsn is not None or from_kafka):
        _err("choose one source: --bundle, --dsn or --from-kafka (with --dsn for checkpoints)", 2)
    try:
        keys = _trusted_keys(trusted_key)
        pubs = _trusted_keys(public_key)
        decode: Any = not no_pairing
        with _progress(not as_json) as progress:
            if bundle is not None:
                report = verify_bundle(bundle, trusted_keys=keys, decode=decode, progress=progress)
            elif from_kafka:
                from wakeline.infra.kafka_source import verify_from_kafka
                from wakeline.infra.settings import KafkaSettings

                report = verify_from_kafka(
                    KafkaSettings.from_env(),
                    trusted_keys=keys,
                    public_keys=pubs or _default_public_keys(),
                    decode=decode,
                    dsn=dsn,
                    progress=progress,
                    stale_after_s=stale_after,
                )
            else:
                from wakeline.ledger.store_postgres import PostgresLedgerStore

                with PostgresLedgerStore(_dsn(dsn)) as store:
                    report = verify_store(
                        store,
                        trusted_keys=keys,
                        public_keys=pubs or _default_public_keys(),
                        decode=decode,
                        progress=progress,
                        tail=_broker_tail(stale_after),
                    )
    except ConfigError as e:
        _err(str(e), e.exit_code)
    except WakelineError as e:  # the source cannot be read at all
        _err(f"unusable input: {e}", EXIT_UNUSABLE)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        _print_report(report)
    sys.exit(report.exit_code)


def _broker_tail(stale_after: float) -> Callable[[Any, dict[int, int]], None]:
    """The unledgered-tail check of a PostgreSQL ledger, against the configured broker."""

    def check(v: Any, last_offsets: dict[int, int]) -> None:
        from wakeline.infra.kafka_source import check_tail
        from wakeline.infra.settings import KafkaSettings

        try:
            settings = KafkaSettings.from_env()
        except WakelineError as e:
            v.tail_unchecked(f"no broker configured: {e}")
            return
        check_tail(v, settings, last_offsets, stale_after_s=stale_after)

    return check


def _default_public_keys() -> list[str]:
    """The local signing key's public half, when it exists (stack default)."""
    try:
        from wakeline.processors.checkpointing import signing_key_path

        pub = signing_key_path()
    except Exception:
        return []
    pub = pub.with_name(pub.name + ".pub")
    return [ln.strip() for ln in pub.read_text().splitlines() if ln.strip()] if pub.exists() else []


def _verify_options(fn: Callable) -> Callable:
    opts = [
        click.option(
            "--bundle",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Verify an exported bundle file; needs no services.",
        ),
        click.option(
            "--dsn",
            help="PostgreSQL DSN (default: WAKELINE_DSN or the local stack); with --from-kafka, "
            "where the checkpoints are read.",
        ),
        click.option(
            "--from-kafka",
            is_flag=True,
            help="Replay the events topic and the segment headers on the ledger topic.",
        ),
        click.option(
            "--trusted-key",
            multiple=True,
            help="Pin a checkpoint verifier key (name+id+key, or a file of them). Without it, "
            "the keys the input carries are used and the report says so.",
        ),
        click.option(
            "--public-key",
            multiple=True,
            help="Public keys to check checkpoints with when none are pinned (PostgreSQL/Kafka).",
        ),
        click.option("--no-pairing", is_flag=True, help="Skip the intent/result/seal checks."),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
        click.option(
            "--stale-after",
            type=click.FloatRange(min=0),
            default=STALE_AFTER_S.default,
            show_default=True,
            envvar=STALE_AFTER_S.name,
            metavar="SECONDS",
            help="PostgreSQL/Kafka: records on the events topic not yet ledgered whose broker "
            "timestamp is older than this make the verdict incomplete (a stuck builder); "
            "younger ones are a warning. Also WAKELINE_VERIFY_STALE_AFTER_S.",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


EPILOG = "Exit codes: 0 sound, 10 tampered, 11 incomplete, 12 unusable input, 2 bad settings."


@click.command("ledger-verify", epilog=EPILOG)
@_verify_options
def ledger_verify_main(**kw: Any) -> None:
    """Verify a Wakeline ledger: every leaf, segment root, chain link, checkpoint, pairing and
    approval."""
    run_verify(**kw)


@click.group()
def ledger() -> None:
    """Verify, export and prove the tamper-evident ledger."""


@ledger.command("verify", epilog=EPILOG)
@_verify_options
def verify_cmd(**kw: Any) -> None:
    """Verify a Wakeline ledger: every leaf, segment root, chain link, checkpoint, pairing and
    approval."""
    run_verify(**kw)


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except WakelineError as e:
        _err(str(e), e.exit_code)


@ledger.command("export")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
    help="Bundle file to write ('-' for stdout).",
)  # fmt: skip
@click.option("--dsn", help="PostgreSQL DSN (default: WAKELINE_DSN or the local stack).")
@click.option("--public-key", multiple=True, help="Public keys to include (default: local key).")
@click.option("--json", "as_json", is_flag=True)
def export_cmd(output: Path, dsn: str | None, public_key: tuple[str, ...], as_json: bool) -> None:
    """Write everything the ledger holds to one self-contained bundle file."""
    from wakeline.ledger.service import export_bundle
    from wakeline.ledger.store_postgres import PostgresLedgerStore

    def go() -> dict[str, int]:
        keys = _trusted_keys(public_key) or _default_public_keys()
        with PostgresLedgerStore(_dsn(dsn)) as store:
            if str(output) == "-":
                return export_bundle(store, sys.stdout.buffer, public_keys=keys)
            tmp = output.with_name(output.name + ".partial")
            with open(tmp, "wb") as f:
                counts = export_bundle(store, f, public_keys=keys)
            tmp.replace(output)
            return counts

    counts = _guard(go)
    if as_json:
        click.echo(json.dumps({"output": str(output), **counts}, sort_keys=True))
    elif str(output) != "-":
        click.echo(
            f"wrote {output}: {counts['entries']:,} entries in {counts['segments']:,} segments, "
            f"{counts['checkpoints']:,} checkpoints"
        )


@ledger.command("proof")
@click.argument("event_id", required=False)
@click.option("--dsn", help="PostgreSQL DSN (default: WAKELINE_DSN or the local stack).")
@click.option(
    "--check", "check_file", type=click.Path(path_type=Path, dir_okay=False),
    help="Instead: check a proof document written by this command.",
)  # fmt: skip
@click.option("--trusted-key", multiple=True, help="Verifier key(s) for --check.")
@click.option(
    "--consistency", "old_note", type=click.Path(path_type=Path, dir_okay=False),
    help="Instead: prove that this older signed checkpoint (a note file) is a prefix of the "
    "newest one.",
)  # fmt: skip
def proof_cmd(
    event_id: str | None,
    dsn: str | None,
    check_file: Path | None,
    trusted_key: tuple[str, ...],
    old_note: Path | None,
) -> None:
    """Print an inclusion proof of EVENT_ID against a signed checkpoint, as JSON a third
    party can check (with `--check`, or from docs/ledger-format.md §8); or, with
    `--consistency OLD`, consistency proofs from an older checkpoint to the newest."""
    from wakeline.ledger.service import (
        CONSISTENCY_FORMAT,
        check_checkpoint_consistency,
        check_event_proof,
        checkpoint_consistency,
        event_proof,
    )

    if check_file is not None:

        def check() -> None:
            keys = _trusted_keys(trusted_key) or _default_public_keys()
            if not keys:
                raise ConfigError("--check needs --trusted-key")
            try:
                doc = json.loads(check_file.read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"cannot read proof {check_file}: {e}") from e
            if isinstance(doc, dict) and doc.get("format") == CONSISTENCY_FORMAT:
                check_checkpoint_consistency(doc, keys)
            else:
                check_event_proof(doc, keys)

        try:
            check()
        except ConfigError as e:
            _err(str(e), e.exit_code)
        except WakelineError as e:
            _err(f"proof does not verify: {e}", 10)
        click.echo("proof verifies")
        return
    if not event_id and old_note is None:
        _err("give an EVENT_ID (or --consistency OLD_NOTE, or --check FILE)", 2)
    from wakeline.ledger.store_postgres import PostgresLedgerStore

    def go() -> dict[str, Any]:
        with PostgresLedgerStore(_dsn(dsn)) as store:
            if old_note is not None:
                try:
                    note = old_note.read_bytes()
                except OSError as e:
                    raise ConfigError(f"cannot read {old_note}: {e.strerror}") from e
                return checkpoint_consistency(store, note)
            return event_proof(store, event_id)  # type: ignore[arg-type]

    click.echo(json.dumps(_guard(go), indent=2))


@ledger.command("checkpoint")
@click.option("--dsn", help="PostgreSQL DSN (default: WAKELINE_DSN or the local stack).")
@click.option(
    "--key", "key_path", type=click.Path(path_type=Path, dir_okay=False),
    help="Signing key file (default: WAKELINE_SIGNING_KEY or <WAKELINE_HOME>/keys/ledger.key; "
    "generated on first use).",
)  # fmt: skip
@click.option("--origin", help="Origin line of the checkpoint (default: the previous one's).")
@click.option("--force", is_flag=True, help="Sign even when nothing changed.")
@click.option("--json", "as_json", is_flag=True)
def checkpoint_cmd(
    dsn: str | None, key_path: Path | None, origin: str | None, force: bool, as_json: bool
) -> None:
    """Sign a checkpoint of every partition's newest segment and print it."""
    from wakeline.ledger.store_postgres import PostgresLedgerStore
    from wakeline.processors.checkpointing import load_signer, sign_checkpoint, signing_key_path

    def go() -> bytes | None:
        signer = load_signer(key_path or signing_key_path())
        with PostgresLedgerStore(_dsn(dsn)) as store:
            return sign_checkpoint(store, signer, origin=origin, force=force)

    note = _guard(go)
    if as_json:
        click.echo(
            json.dumps({"signed": note is not None, "note": note.decode() if note else None})
        )
    elif note is None:
        click.echo("nothing to sign: no partition moved since the newest checkpoint")
    else:
        click.echo(note.decode(), nl=False)
