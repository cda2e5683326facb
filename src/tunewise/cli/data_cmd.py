"""``tunewise data check|split|convert|seals``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunewise.errors import UserError
from tunewise.progress import make_console
from tunewise.runtime import models

data_app = typer.Typer(help="Check, split and convert chat JSONL data.", no_args_is_help=True)
console = make_console()
status_console = Console(stderr=True)
MAX_ERRORS_SHOWN = 50
_TOOLS = typer.Option(
    None,
    "--tools",
    help="JSON file of tool schemas (a list, or {'tools': [...]}) for lines without their own "
    "'tools': what the project's task.tools names",
)
_PER_INTENT = typer.Option(
    None, "--per-intent", help="snips: keep N queries of each intent (a seeded sample)"
)
_SEED = typer.Option(None, "--seed", help="snips: seed of the --per-intent sample (default 0)")
_TOOLS_OUT = typer.Option(
    None,
    "--tools-out",
    help="snips: write the tools to this JSON file once, not on every line (then set "
    "task.tools to it)",
)


def _lines_preview(lines: list[int], k: int = 8) -> str:
    shown = ", ".join(map(str, lines[:k]))
    return shown + (f" (+{len(lines) - k} more)" if len(lines) > k else "")


def _render_check(report) -> None:  # report: CheckReport
    s = report.stats
    head = f"[bold]{escape(report.path)}[/]: {report.examples} valid example(s), "
    head += f"[red]{len(report.errors)} error(s)[/], [yellow]{len(report.warnings)} warning(s)[/]"
    console.print(head)
    # Errors as plain `file:line: field: message` lines: editors and terminals make them clickable,
    # and a table would wrap them.
    for p in report.errors[:MAX_ERRORS_SHOWN]:
        console.print(str(p), soft_wrap=True, markup=False, highlight=False, style="red")
    if len(report.errors) > MAX_ERRORS_SHOWN:
        console.print(f"... and {len(report.errors) - MAX_ERRORS_SHOWN} more errors (see --json)")

    table = Table(title="summary", show_header=False)
    table.add_row("examples", str(s.get("examples", 0)))
    table.add_row("multi-turn", str(s.get("multi_turn", 0)))
    table.add_row("with system prompt", str(s.get("with_system_prompt", 0)))
    fmt = report.format
    calls = s.get("tools")
    if calls is not None:  # a function-call file: what its lines answer, not a text format
        known = f"{calls['functions']} functions" if calls["functions"] else "none given"
        table.add_row(
            "output format",
            f"tools: {known}, {calls['calling']} lines call, {calls['text']} lines answer in text",
        )
    if fmt is not None:
        table.add_row("output format", f"{fmt.kind}: {escape(fmt.pattern)}")
        if fmt.regex:
            table.add_row("output regex", escape(fmt.regex))
        if fmt.kind != "text":
            table.add_row("format coverage", f"{fmt.coverage:.1%}")
    tok = s.get("tokens")
    if tok:
        table.add_row(
            "tokens",
            f"min {tok['min']}  mean {tok['mean']}  p50 {tok['p50']}  p95 {tok['p95']}  max "
            f"{tok['max']}  "
            f"(model {tok.get('model') or '-'})",
        )
        table.add_row(f"over max_len {tok['max_len']}", str(tok["over_max_len"]))
    console.print(table)

    for fld, counts in (s.get("labels") or {}).items():
        total = sum(counts.values()) or 1
        lt = Table(title=f"{fld}: {len(counts)} values", min_width=40)
        lt.add_column("value")
        lt.add_column("count", justify="right")
        lt.add_column("share", justify="right")
        items = list(counts.items())
        for v, c in items[:15]:
            lt.add_row(escape(v), str(c), f"{c / total:.1%}")
        if len(items) > 15:
            rest = items[15:]
            lt.add_row(
                f"... {len(rest)} more (smallest: {escape(rest[-1][0])})",
                str(sum(c for _, c in rest)),
                "",
            )
        console.print(lt)

    if report.warnings:
        wt = Table(title="warnings")
        wt.add_column("kind", style="yellow")
        wt.add_column("message")
        wt.add_column("lines")
        for w in report.warnings:
            wt.add_row(w.kind, escape(w.message), _lines_preview(w.lines))
        console.print(wt)
    if report.errors:
        console.print("[red]errors found[/]: fix them, then run `tunewise data check` again")
    elif not report.warnings:
        console.print("[green]clean[/]")


@data_app.command("check")
def check_cmd(
    file: Path = typer.Argument(..., help="chat JSONL file"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    strict: bool = typer.Option(False, "--strict", help="exit 1 when there are warnings"),
    model: str = typer.Option(
        None, "--model", help="model whose tokenizer measures lengths (default: the embedded model)"
    ),
    max_len: int = typer.Option(
        512, "--max-len", help="token budget per example; longer ones are listed"
    ),
    pattern: str = typer.Option(
        None, "--pattern", help="output regex with named groups (default: inferred)"
    ),
    tools: Path = _TOOLS,
) -> None:
    """Validate a chat JSONL file: every error with file:line, then warnings and statistics.

    Function-call lines are checked against their own 'tools', else those of --tools FILE.
    Exit code 0 when clean, 2 on errors, 1 on warnings with --strict.
    """
    from tunewise.data.checks import check_file, read_tools  # lazy: numpy; keeps --help fast

    project_tools = read_tools(tools) if tools is not None else None
    models.ensure_converted(model)  # before the spinner: one progress display at a time
    with status_console.status("checking ...") as st:
        report = check_file(
            file,
            model=model,
            max_len=max_len,
            output_pattern=pattern,
            progress=lambda m: st.update(f"checking: {m} ..."),
            tools=project_tools,
        )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        _render_check(report)
    code = report.exit_code(strict)
    if code:
        raise typer.Exit(code)


@data_app.command("split")
def split_cmd(
    file: Path = typer.Argument(..., help="chat JSONL file"),
    out: Path = typer.Option(
        None,
        "--out",
        help="output folder, replaced whole (default: FILE's folder / <stem>-splits)",
    ),
    val: float = typer.Option(None, "--val", help="fraction for validation (default 0.1)"),
    test: float = typer.Option(
        None, "--test", help="fraction for the sealed test split (default 0.1)"
    ),
    val_file: Path = typer.Option(
        None, "--val-file", help="your own validation file, used as given (not carved from FILE)"
    ),
    test_file: Path = typer.Option(
        None, "--test-file", help="your own test file, used as given and sealed"
    ),
    seed: int = typer.Option(0, "--seed", help="random seed (same seed, same files)"),
    project: str = typer.Option(None, "--project", help="project name recorded with the seal"),
    pattern: str = typer.Option(
        None, "--pattern", help="output regex with named groups (default: inferred)"
    ),
) -> None:
    """Split into train/val/test (stratified, near-duplicates together) and seal the test file.

    With --val-file/--test-file your own files are used as given: they are checked, compared with
    FILE for exact and near-duplicate leakage and unseen labels (warnings with counts), and the
    test file is sealed; a split without its own file is carved from FILE.
    """
    from tunewise.data.split import split_file  # lazy: numpy; keeps --help fast

    for flag, frac, given in (("--val", val, val_file), ("--test", test, test_file)):
        if frac is not None and given is not None:
            raise UserError(f"{flag} and {flag}-file: give a fraction or a file, not both")
    fractions = {"val": 0.1 if val is None else val, "test": 0.1 if test is None else test}
    out_dir = out or file.parent / f"{file.stem}-splits"
    with status_console.status("splitting ..."):
        if val_file is None and test_file is None:
            manifest = split_file(
                file, out_dir, **fractions, seed=seed, project=project, output_pattern=pattern
            )
        else:
            from tunewise.data.own_splits import split_with_files  # lazy: numpy; keeps --help fast

            manifest = split_with_files(
                file,
                out_dir,
                val_file=val_file,
                test_file=test_file,
                **fractions,
                seed=seed,
                project=project,
                output_pattern=pattern,
            )
    _render_split(manifest, out_dir)


def _render_split(manifest: dict, out_dir: Path) -> None:
    table = Table(title=f"splits in {escape(str(out_dir))}")
    for col in ("split", "examples", "sha256", "from"):
        table.add_column(col)
    given = manifest.get("given", [])
    for name, info in manifest["splits"].items():
        origin = "your file" if name in given else "FILE" if name == "train" else "carved"
        table.add_row(name, str(info["examples"]), info["sha256"][:12], origin)
    console.print(table)
    if manifest["stratified"]:
        strat = "stratified by " + ", ".join(manifest["format"]["label_fields"])
    else:
        strat = "not stratified (" + ("files given" if given else "no labels") + ")"
    clusters = manifest["near_duplicate_clusters"]
    kept = f"; {clusters} near-duplicate cluster(s) kept whole" if clusters is not None else ""
    console.print(strat + kept)
    for w in manifest.get("warnings", []):
        console.print(f"[yellow]{w['kind']}[/]: {escape(w['message'])}", soft_wrap=True)
    for name, found in manifest.get("checks", {}).items():
        if found:
            kinds = ", ".join(sorted({w["kind"] for w in found}))
            console.print(
                f"[yellow]{name} file[/]: {len(found)} warning(s) ({kinds}); "
                f"run `tunewise data check {escape(manifest['sources'][name]['path'])}`",
                soft_wrap=True,
            )
    if manifest["sealed_test"]:
        console.print(
            "[bold]test.jsonl is sealed[/]: evaluating on it needs --final, "
            "and every final use is recorded"
        )


@data_app.command("convert")
def convert_cmd(
    src: Path = typer.Argument(..., help="source file (snips: the folder of SNIPS files)"),
    out: Path = typer.Argument(..., help="chat JSONL to write"),
    source: str = typer.Option(..., "--from", help="csv | json-pairs | alpaca | sharegpt | snips"),
    system: str = typer.Option(
        None, "--system", help="system prompt to put first in every conversation"
    ),
    text_col: str = typer.Option("text", "--text-col", help="csv: column with the input text"),
    label_col: str = typer.Option("label", "--label-col", help="csv: column with the label"),
    template: str = typer.Option(
        "{text}", "--template", help="user turn; {text}, {label} or any csv column"
    ),
    answer_template: str = typer.Option(
        "{label}", "--answer-template", help="assistant turn, e.g. 'Intent: {label}'"
    ),
    keys: str = typer.Option(
        None, "--keys", help="json-pairs: comma-separated lists to take (e.g. train,val)"
    ),
    labels: str = typer.Option(None, "--labels", help="keep only these comma-separated labels"),
    per_label: int = typer.Option(
        None,
        "--per-label",
        help="keep at most N examples of each label (the first N in file order)",
    ),
    delimiter: str = typer.Option(",", "--delimiter", help="csv delimiter"),
    encoding: str = typer.Option(
        "utf-8", "--encoding", help="encoding of SRC, e.g. cp1252 or latin-1 (default: utf-8)"
    ),
    errors: str = typer.Option(
        "strict",
        "--errors",
        help="undecodable bytes: strict (stop, naming the line), replace (U+FFFD) or ignore; "
        "snips also: cesu8 (recover a CESU-8 emoji) or skip (drop the query)",
    ),
    per_intent: int = _PER_INTENT,
    seed: int = _SEED,
    tools_out: Path = _TOOLS_OUT,
) -> None:
    """Convert CSV, JSON text/label pairs (CLINC150), Alpaca, ShareGPT or SNIPS into chat JSONL.

    --from snips writes function calls: one tool per intent, its slots as optional string
    parameters, one example per query (see docs/data.md, "Function calls").
    """

    def _list(v: str | None) -> list[str] | None:
        return [x.strip() for x in v.split(",") if x.strip()] if v else None

    if source == "snips":
        for flag, value in (("--labels", labels), ("--per-label", per_label), ("--keys", keys)):
            if value is not None:
                raise UserError(f"{flag} does not apply to --from snips (use --per-intent N)")
        _convert_snips(src, out, system, per_intent, seed, tools_out, encoding, errors)
        return
    for flag, value in (("--per-intent", per_intent), ("--seed", seed), ("--tools-out", tools_out)):
        if value is not None:
            raise UserError(f"{flag} only applies to --from snips")
    from tunewise.data.convert import convert  # lazy: keeps --help fast

    result = convert(
        src,
        out,
        source=source,  # type: ignore[arg-type]
        system=system,
        text_col=text_col,
        label_col=label_col,
        template=template,
        answer_template=answer_template,
        keys=_list(keys),
        labels=_list(labels),
        per_label=per_label,
        delimiter=delimiter,
        encoding=encoding,
        errors=errors,
    )
    _render_convert(result, out, per_label, labels)


def _convert_snips(
    src: Path,
    out: Path,
    system: str | None,
    per_intent: int | None,
    seed: int | None,
    tools_out: Path | None,
    encoding: str,
    errors: str,
) -> None:
    from tunewise.data.convert_snips import convert_snips  # lazy: keeps --help fast

    result = convert_snips(
        src,
        out,
        per_intent=per_intent,
        seed=seed or 0,
        tools_out=tools_out,
        system=system,
        encoding=encoding,
        errors=errors,
    )
    _render_snips(result, out)


def _render_convert(result: dict, out: Path, per_label: int | None, labels: str | None) -> None:
    n_labels = f", {len(result['labels'])} label(s)" if result["labels"] else ""
    console.print(
        f"[green]wrote[/] {result['examples']} example(s){n_labels} to {escape(str(out))}"
    )
    if result["labels"] and (per_label is not None or labels):
        _render_label_counts(result["labels"], per_label)
    short = result["short_labels"]
    if short:
        thin = ", ".join(f"{escape(k)} ({v})" for k, v in short.items())
        console.print(
            f"[yellow]{len(short)} label(s) have fewer than {per_label} rows[/]: {thin}",
            soft_wrap=True,
        )


def _render_snips(result: dict, out: Path) -> None:
    where = (
        f"the tools in {escape(result['tools_out'])} (set task.tools to it)"
        if result["tools_out"]
        else "the tools on every line"
    )
    console.print(
        f"[green]wrote[/] {result['examples']} example(s) calling {result['tools']} tool(s) to "
        f"{escape(str(out))}, {where}",
        soft_wrap=True,
    )
    _render_label_counts(result["labels"], None)
    if result["repeated_slots"]:
        console.print(
            f"{result['repeated_slots']} quer(ies) name a slot twice: the first value is kept",
            soft_wrap=True,
        )
    if result["skipped"]:
        console.print(
            f"[yellow]{result['skipped']} quer(ies) left out[/]: undecodable bytes (--errors skip)",
            soft_wrap=True,
        )


def _render_label_counts(counts: dict[str, int], per_label: int | None) -> None:
    """Examples written per label; with --per-label, the ones short of the cap are marked."""
    table = Table(title="examples per label")
    table.add_column("label")
    table.add_column("examples", justify="right")
    for label, n in counts.items():
        short = per_label is not None and n < per_label
        table.add_row(escape(label), f"[yellow]{n} (< {per_label})[/]" if short else str(n))
    console.print(table)


@data_app.command("seals")
def seals_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List sealed test files and how many times each was used for a final evaluation."""
    from tunewise.data.seal import seals  # lazy: keeps --help fast

    rows = seals()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="sealed test splits")
    for col in ("project", "examples", "final uses", "path"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["project"] or "-", str(r["n_examples"]), str(r["final_uses"]), r["path"])
    console.print(table)


_FT_OUT = typer.Option(..., "--out", help="JSONL of drafts to label (or, with --teacher, labels)")
_FT_PROJECT = typer.Option(
    None,
    "--project",
    "-p",
    help="project.yaml: its train/val/test splits (duplicates dropped), format and labels",
)
_FT_LIMIT = typer.Option(None, "--limit", help="keep the N requests most worth a label")
_FT_TEACHER = typer.Option(
    None, "--teacher", help="OpenAI-compatible base URL (…/v1) of a model that labels the drafts"
)
_FT_TEACHER_MODEL = typer.Option(None, "--teacher-model", help="the teacher's model name")
_FT_SAMPLES = typer.Option(
    1, "--teacher-samples", help="2: keep an answer only when a second, sampled one agrees"
)
_FT_TEMPERATURE = typer.Option(
    0.7, "--teacher-temperature", help="temperature of the second sample"
)
_FT_KEY_ENV = typer.Option(
    None, "--teacher-key-env", help="environment variable holding the teacher's API key"
)
_FT_MAX_TOKENS = typer.Option(512, "--teacher-max-tokens", help="the teacher's answer budget")
_FT_ADAPTER = typer.Option(
    None,
    "--margin-adapter",
    help="labels tasks: the production adapter's training run folder, to score label margins "
    "with (default: the base model)",
    file_okay=False,
)
_FT_BUDGET = typer.Option(
    None,
    "--margin-budget",
    help="labels tasks: score margins only up to this many scored answers (default 20000; "
    "0: never)",
)


@data_app.command("from-traffic")
def from_traffic_cmd(
    folder: Path = typer.Argument(..., help="the traffic log folder (serve --log-traffic DIR)"),
    out: Path = _FT_OUT,
    project: Path = _FT_PROJECT,
    limit: int = _FT_LIMIT,
    teacher: str = _FT_TEACHER,
    teacher_model: str = _FT_TEACHER_MODEL,
    teacher_samples: int = _FT_SAMPLES,
    teacher_temperature: float = _FT_TEMPERATURE,
    teacher_key_env: str = _FT_KEY_ENV,
    teacher_max_tokens: int = _FT_MAX_TOKENS,
    margin_adapter: Path = _FT_ADAPTER,
    margin_budget: int = _FT_BUDGET,
) -> None:
    """Served requests to examples: drop those like train/val/test (never leak the sealed test
    set into training) and repeats, rank what is worth a label first (low label margin, shadow
    disagreement, failed format), write drafts for `tunewise rate --label`, or labels from a
    --teacher model (kept only when they pass the format and, with --teacher-samples 2, agree).
    """
    # lazy: numpy, the graders and the traffic reader; keep --help fast
    from tunewise.config import load_project
    from tunewise.data.from_traffic import draft_row, write_rows
    from tunewise.eval.traffic_signals import select_requests
    from tunewise.serve.traffic import SHADOW, iter_traffic, traffic_files

    if teacher is not None and not teacher_model:
        raise UserError("--teacher needs --teacher-model (the model name the endpoint serves)")
    if not traffic_files(folder):
        raise UserError(f"{folder}: no traffic-*.jsonl files (serve --log-traffic {folder})")
    cfg = load_project(project) if project is not None else None
    with status_console.status("reading traffic ..."):
        # the requests, then the shadow challenger's answers, linked to them by shadow_of
        records = [*iter_traffic(folder), *iter_traffic(folder, SHADOW)]
        selection, format_ok = select_requests(
            records, cfg, limit=limit, adapter=margin_adapter, budget=margin_budget
        )
    rows = [draft_row(item) for item in selection.items]
    _render_selection(selection)
    if teacher is None:
        write_rows(out, rows)
        console.print(
            f"[green]wrote[/] {len(rows)} draft(s) to {escape(str(out))}; label them with "
            f"`tunewise rate --label {escape(str(out))} --out LABELLED`",
            soft_wrap=True,
        )
        return
    kept, rest, report = _teach(
        rows,
        cfg,
        format_ok,
        base_url=teacher,
        model=teacher_model,
        samples=teacher_samples,
        temperature=teacher_temperature,
        key_env=teacher_key_env,
        max_tokens=teacher_max_tokens,
    )
    _render_teacher(report, kept, rest, out)


def _teach(rows: list, cfg, format_ok, **opts) -> tuple:  # -> (kept, rest, TeacherReport)
    # lazy: httpx and the generation cache; only --teacher needs them
    from tunewise.data.teacher import TeacherClient, label_with_teacher
    from tunewise.runtime.cache import GenCache

    tools = cfg.task.tools if cfg is not None and isinstance(cfg.task.tools, list) else None
    with (
        GenCache() as cache,
        TeacherClient(
            opts["base_url"],
            opts["model"],
            api_key_env=opts["key_env"],
            name=f"teacher:{opts['model']}",
            cache=cache,
        ) as client,
    ):
        return label_with_teacher(
            rows,
            client,
            samples=opts["samples"],
            temperature=opts["temperature"],
            max_tokens=opts["max_tokens"],
            format_ok=format_ok,
            system_prompt=cfg.task.system_prompt if cfg is not None else "",
            tools=tools,
            progress=True,
        )


def _count_label(name: str) -> tuple[int, str]:
    """(section, words) of a selection count: read, dropped, selected."""
    kind, _, rest = name.partition(" ")
    if kind == "exact":
        return 1, f"dropped: same input as a {rest} line"
    if kind == "near":
        return 1, f"dropped: near-duplicate of a {rest} line"
    if kind == "why":
        return 2, f"selected: {rest}"
    if name in ("requests", "shadow records"):
        return 0, name
    return 1, f"dropped: {name}"


def _render_selection(selection) -> None:  # selection: data.from_traffic.Selection
    table = Table(title="traffic", show_header=False)
    for label, n in sorted((_count_label(k), n) for k, n in selection.counts.items()):
        table.add_row(escape(label[1]), str(n))
    console.print(table)
    for note in selection.notes:
        console.print(f"[yellow]note[/]: {escape(note)}", soft_wrap=True)


def _render_teacher(report, kept: list, rest: list, out: Path) -> None:
    from tunewise.data.from_traffic import write_rows  # lazy: see from_traffic_cmd

    dropped = ", ".join(f"{n} {escape(why)}" for why, n in report.dropped.most_common())
    console.print(
        f"teacher: kept {report.kept}, dropped {sum(report.dropped.values())}"
        + (f" ({dropped})" if dropped else ""),
        soft_wrap=True,
    )
    write_rows(out, kept)
    console.print(f"[green]wrote[/] {len(kept)} teacher-labelled example(s) to {escape(str(out))}")
    if rest:
        drafts = out.with_name(f"{out.stem}.drafts{out.suffix or '.jsonl'}")
        write_rows(drafts, rest)
        console.print(
            f"wrote the {len(rest)} request(s) the teacher did not label, as drafts, to "
            f"{escape(str(drafts))}: `tunewise rate --label {escape(str(drafts))} --out FILE`",
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
