"""``tunewise registry ...``: versions, aliases, promotion and rollback of trained adapters."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from tunewise.errors import UserError
from tunewise.ladder.interrupt import sigterm_as_interrupt
from tunewise.progress import make_console

if TYPE_CHECKING:
    from tunewise.registry.types import Version

console = make_console()
registry_app = typer.Typer(
    help="Versioned adapters with aliases, promotion and rollback.", no_args_is_help=True
)


@registry_app.callback()
def _signals(ctx: typer.Context) -> None:
    """SIGTERM stops a registry command as Ctrl-C does: the open transaction rolls back."""
    ctx.with_resource(_stopped_cleanly())


@contextmanager
def _stopped_cleanly() -> Iterator[None]:
    with sigterm_as_interrupt():
        try:
            yield
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as Terminated
            how = getattr(stop, "signal_name", "Ctrl-C")
            console.print(
                f"stopped ({how}): nothing is half-written (each change commits whole or not "
                "at all); `tunewise registry list` shows where it got to",
                style="red",
            )
            raise


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _shown(text: str) -> str:
    """User text (a ``--reason``) as it may reach a terminal: control and format characters
    written as escapes (``\\x1b``, ``\\u202e``), so a stored reason cannot move the cursor,
    recolour or retitle the terminal, or reorder what follows; rich markup escaped, so ``[red]``
    stays text."""
    safe = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
    return escape(safe)


def _split_version(spec: str) -> tuple[str, int]:
    from tunewise.registry.store import parse_spec  # lazy: keeps --help fast

    name, version, _alias = parse_spec(spec)
    if version is None:
        raise UserError(f"expected NAME:VERSION, got {spec!r}")
    return name, version


@registry_app.command("add")
def add(
    run: Path = typer.Argument(..., help="Training run directory (LoRA adapter or model/)."),
    name: str = typer.Option(None, "--name", help="Registry name (default: the project name)."),
    verdict: Path = typer.Option(None, "--verdict", help="Gate verdict.json to record."),
    eval_dir: Path = typer.Option(
        None, "--eval-dir", help="Eval directory (eval/comparison/verdict.json)."
    ),
) -> None:
    """Register RUN as the next immutable version of NAME."""
    from tunewise.registry.store import Registry  # lazy: keeps --help fast

    v = Registry().add(run, name=name, verdict=verdict, eval_dir=eval_dir)
    gate = {True: "[green]ship[/]", False: "[red]do not ship[/]", None: "no verdict"}[v.ship]
    console.print(f"added [bold]{v.spec}[/] ({v.kind}, {len(v.files)} files, gate: {gate})")


@registry_app.command("list")
def list_cmd() -> None:
    """Every registered name with its latest version and aliases."""
    from tunewise.registry.store import Registry  # lazy: keeps --help fast

    rows = Registry().summary()
    if not rows:
        console.print("the registry is empty: `tunewise registry add RUN`")
        return
    table = Table("name", "versions", "latest", "aliases", "updated")
    for r in rows:
        aliases = ", ".join(f"{a}→{v}" for a, v in r["aliases"].items()) or "-"
        table.add_row(
            r["name"], str(r["versions"]), str(r["latest"]), aliases, _when(r["updated_at"])
        )
    console.print(table)


@registry_app.command("show")
def show(
    spec: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    as_json: bool = typer.Option(False, "--json", help="Print the full record as JSON."),
) -> None:
    """Show one version: base model, hashes, lineage (data files, traffic windows, who labelled
    them), gate verdict, champion comparison (all items and new items), eval results, files."""
    # lazy: keeps --help fast
    from tunewise.registry.lineage import LINEAGE_KEY
    from tunewise.registry.store import Registry

    reg = Registry()
    v = reg.lookup(spec)
    bad = reg.verify(v)
    if as_json:
        d = v.to_dict()
        d["corrupted_files"] = bad
        typer.echo(json.dumps(d, indent=2, sort_keys=True))
        return
    gate = {True: "[green]ship[/]", False: "[red]do not ship[/]", None: "no verdict"}[v.ship]
    console.print(f"[bold]{v.spec}[/]  ({v.kind})  aliases: {', '.join(v.aliases) or '-'}")
    console.print(f"created     {_when(v.created_at)} from {v.source_run}")
    if v.base_weight_hash:
        console.print(f"base model  {v.base_model}  weight hash {v.base_weight_hash[:16]}…")
    else:  # a classifier release (knn, tfidf, probe) answers without a language model
        console.print(f"base model  none: a {v.kind} classifier answers without a language model")
    hashes = {k: h for k, h in v.data_hashes.items() if k != LINEAGE_KEY}  # printed below
    console.print(f"data hashes {escape(json.dumps(hashes))}")
    _print_lineage(v)
    console.print(f"gate        {gate}" + (f": {v.verdict.summary}" if v.verdict else ""))
    _print_champion(v)
    if v.eval and v.eval.summary:
        for cand, metrics in v.eval.summary.means.items():
            vals = ", ".join(f"{m}={x:.3f}" for m, x in sorted(metrics.items()))
            console.print(f"  eval {cand}: {vals}")
    table = Table("file", "sha256", "ok")
    for rel, digest in sorted(v.files.items()):
        table.add_row(rel, digest[:16] + "…", "[red]CORRUPTED[/]" if rel in bad else "ok")
    console.print(table)


def _print_lineage(v: Version) -> None:
    """The data files that made ``v`` (short hashes, counts), its traffic windows and who
    labelled the examples from traffic. Every value comes from a data file: shown escaped."""
    from tunewise.registry import lineage  # lazy: keeps --help fast

    found = lineage.of_version(v)
    if found is None:
        console.print(lineage.NOT_RECORDED)
        return
    files = lineage.data_files(found)
    when = _shown(str(found.get("recorded") or "?"))
    say = partial(console.print, soft_wrap=True)  # a path or a window on one line
    say(f"lineage     {len(files)} data file(s), recorded at {when}")
    for f in files:
        count = f.get("lines") if isinstance(f.get("lines"), int) else None
        size = f"{count} lines" if count is not None else f"{f.get('files', '?')} files"
        sha = str(f.get("sha256") or "-")[:12]
        say(f"  {_shown(str(f['role'])):<11} {sha:<12}  {size:>11}  {_shown(f['path'])}")
    windows = lineage.traffic_windows(found)
    if not windows:
        say("  traffic     none (no example came from served traffic)")
        return
    for w in windows:
        span = f"{_shown(str(w.get('first') or '?'))} → {_shown(str(w.get('last') or '?'))}"
        splits = ", ".join(f"{k} {n}" for k, n in (w.get("splits") or {}).items())
        say(
            f"  traffic     {_shown(str(w.get('traffic_file')))}  {span}  {w['count']} example(s)"
            + (f" ({_shown(splits)})" if splits else "")
        )
    counts = lineage.label_counts(found)
    say("  labelled by " + ", ".join(f"{_shown(k)} {n}" for k, n in counts.items()))


def _print_champion(v: Version) -> None:
    """The champion/challenger result the version was judged by: the metric of this version and
    of the champion on every item, and on the items new since the champion when known."""
    comp = v.eval.comparison if v.eval is not None else None
    if comp is None or v.verdict is None or not isinstance(comp.meta.get("champion"), dict):
        return
    champ = comp.meta["champion"]
    test = comp.margin_test(v.verdict.candidate, str(champ.get("candidate")))
    if test is None:
        return
    line = (
        f"champion    {_shown(v.verdict.candidate)} vs {_shown(str(champ.get('version')))} "
        f"on {test.metric}: {test.candidate_value:.3f} vs {test.reference_value:.3f} "
        f"on all {test.n} items"
    )
    new = champ.get("new_items")
    on_new = (new.get("tests") or {}).get(v.verdict.candidate) if isinstance(new, dict) else None
    if not isinstance(new, dict):
        line += "; new items unknown (the champion has no lineage)"
    elif not new.get("n"):
        line += "; no new items"
    elif isinstance(on_new, dict):
        mine, theirs = _num(on_new.get("candidate_value")), _num(on_new.get("reference_value"))
        line += f"; {mine} vs {theirs} on {on_new.get('n')} new items"
    console.print(line, soft_wrap=True)


def _num(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "n/a"


@registry_app.command("history")
def history(
    name: str = typer.Argument(...),
    alias: str = typer.Option(None, "--alias", help="Only this alias."),
) -> None:
    """Every alias move of NAME: when, from which version to which, and why."""
    from tunewise.registry.store import Registry  # lazy: keeps --help fast

    reg = Registry()
    reg.versions(name)  # unknown name -> one-line error
    events = reg.history(name, alias)
    if not events:
        console.print(f"{name}: no alias has been set yet")
        return
    table = Table("time", "alias", "action", "from", "to", "reason")
    for e in events:
        action = e["action"] + (" (forced)" if e["forced"] else "")
        frm = "-" if e["from_version"] is None else str(e["from_version"])
        table.add_row(
            _when(e["at"]), e["alias"], action, frm, str(e["to_version"]), _shown(e["reason"] or "")
        )
    console.print(table)


@registry_app.command("promote")
def promote(
    spec: str = typer.Argument(..., help="NAME:VERSION"),
    alias: str = typer.Option("production", "--alias"),
    force: bool = typer.Option(False, "--force", help="Promote even if the gate did not say ship."),
    reason: str = typer.Option(None, "--reason", help="Why (required with --force; recorded)."),
) -> None:
    """Point NAME@ALIAS at VERSION; refuses a version the gate did not pass unless --force."""
    from tunewise.registry.store import Registry  # lazy: keeps --help fast

    name, version = _split_version(spec)
    reg = Registry()
    res = reg.promote(name, version, alias=alias, force=force, reason=reason)
    if not res["changed"]:
        console.print(f"{name}@{alias} already points at version {version}")
    else:
        console.print(f"{name}@{alias}: {res['from_version'] or '-'} → [bold]{version}[/]")
    _mirror(reg, name, "promoted")


@registry_app.command("rollback")
def rollback(
    name: str = typer.Argument(...),
    alias: str = typer.Option("production", "--alias"),
    reason: str = typer.Option(None, "--reason", help="Why (recorded in the history)."),
) -> None:
    """Move NAME@ALIAS back to the version it pointed to before.

    Running servers pick the change up on POST /admin/adapters/refresh.
    """
    from tunewise.registry.store import Registry  # lazy: keeps --help fast

    reg = Registry()
    res = reg.rollback(name, alias=alias, reason=reason)
    console.print(
        f"{name}@{alias}: {res['from_version']} → [bold]{res['to_version']}[/] (rolled back)"
    )
    _mirror(reg, name, "rolled back")


def _mirror(reg: object, name: str, done: str) -> None:
    """Mirror NAME's versions and aliases to MLflow when tracking is configured.

    The local change is already committed; a failed mirror exits 1 and says so. Running the same
    command again retries it (the mirror is idempotent).
    """
    from tunewise.tracking import mirror_registry  # lazy: keeps --help fast

    try:
        line = mirror_registry(reg, name)  # type: ignore[arg-type]
    except UserError as err:
        console.print(f"[red]{done} locally[/], but the MLflow mirror failed: {err}")
        raise typer.Exit(1) from None
    if line:
        console.print(line)


@registry_app.command("doctor")
def doctor_cmd() -> None:
    """Check the index (registry.sqlite), the records beside the blobs, and every blob's hash."""
    # lazy: keeps --help fast
    from tunewise.registry.records import doctor
    from tunewise.registry.store import Registry

    findings = doctor(Registry())
    for f in findings:
        console.print(("[green]ok[/]       " if f.ok else "[red]problem[/]  ") + f.text)
    problems = [f for f in findings if not f.ok]
    if problems:
        raise UserError(f"the registry has {len(problems)} problem(s); see above")


@registry_app.command("rebuild")
def rebuild_cmd(
    force: bool = typer.Option(
        False, "--force", help="Rebuild even a sound index (from the records)."
    ),
) -> None:
    """Write a new index from the version records and alias events kept beside the blobs.

    The old registry.sqlite (if any) is moved aside as registry.sqlite.broken-<time>, never
    deleted. Stop servers and other registry commands first.
    """
    # lazy: keeps --help fast
    from tunewise.registry.records import rebuild
    from tunewise.registry.store import Registry

    res = rebuild(Registry(), force=force)
    for note in res.skipped:
        console.print(f"[yellow]skipped[/] {escape(note)}")
    for note in res.dangling:
        console.print(f"[yellow]warning[/] {escape(note)}")
    aside = f"; the old index is now {res.moved_aside}" if res.moved_aside else ""
    console.print(
        f"rebuilt the index: {res.versions} version(s), {res.aliases} alias(es), "
        f"{res.events} alias event(s){aside}"
    )


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the top-level app."""
    app.add_typer(registry_app, name="registry")
