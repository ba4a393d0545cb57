"""``rollcall``: submit and follow recognition jobs from a terminal or a script.

Connection: ``--url`` / ``--api-key`` flags, else ``ROLLCALL_URL`` / ``ROLLCALL_API_KEY``, else the
config file (``--config``, ``ROLLCALL_CONFIG``, default ``~/.config/rollcall/config.toml``)::

    url = "https://rollcall.example.org"
    api_key = "rk_..."            # or: api_key_file = "/run/secrets/rollcall-key"

Exit codes (stable, for scripts):
  0 success (``watch``: the job Succeeded)   1 unexpected error      2 usage error
  3 missing/unknown API key (401)           4 not found (404)        5 conflict (409)
  6 request refused as invalid (400/413/422) 7 API unreachable or failing (5xx)
  8 over a per-school limit (429): retry later
  10 the job Failed                          11 the job was Cancelled (or deleted)
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

DEFAULT_CONFIG = Path("~/.config/rollcall/config.toml")


class Exit(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    UNAUTHORIZED = 3
    NOT_FOUND = 4
    CONFLICT = 5
    INVALID = 6
    UNAVAILABLE = 7
    RATE_LIMITED = 8
    JOB_FAILED = 10
    JOB_CANCELLED = 11


_BY_STATUS = {
    401: Exit.UNAUTHORIZED,
    404: Exit.NOT_FOUND,
    409: Exit.CONFLICT,
    400: Exit.INVALID,
    413: Exit.INVALID,
    422: Exit.INVALID,
    429: Exit.RATE_LIMITED,
}

app = typer.Typer(
    name="rollcall",
    help="Submit and follow rollcall face-recognition attendance jobs.",
    no_args_is_help=True,
    add_completion=False,
    epilog="Exit codes: 0 ok, 1 unexpected error, 2 usage, 3 bad or missing key, 4 not found, "
    "5 conflict, 6 invalid request, 7 API unavailable, 8 rate limited, 10 job failed, "
    "11 job cancelled.",
)
# soft_wrap: a long line stays one line when stdout is a pipe (rich would wrap at 80 columns)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@dataclass
class Conn:
    url: str
    api_key: str
    timeout: float

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url.rstrip("/"),
            headers={"Authorization": f"Bearer {self.api_key}", "User-Agent": "rollcall-cli"},
            timeout=self.timeout,
        )


def fail(code: Exit, message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(int(code))


def _load_config(path: Path | None) -> dict[str, Any]:
    explicit = path is not None
    path = (path or DEFAULT_CONFIG).expanduser()
    if not path.exists():
        if explicit:
            fail(Exit.USAGE, f"config file {path} does not exist")
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        fail(Exit.USAGE, f"config file {path}: {exc}")


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(envvar="ROLLCALL_URL", help="API base URL.")] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="ROLLCALL_API_KEY", help="School API key.", show_default=False),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(envvar="ROLLCALL_CONFIG", help="TOML config file.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="HTTP timeout in seconds.")] = 30.0,
) -> None:
    """Flags beat environment variables, which beat the config file."""
    if ctx.resilient_parsing:
        return
    cfg = _load_config(config) if (url is None or api_key is None) else {}
    if api_key is None and cfg.get("api_key_file"):
        try:
            api_key = Path(str(cfg["api_key_file"])).expanduser().read_text().strip()
        except OSError as exc:
            fail(Exit.USAGE, f"api_key_file: {exc}")
    ctx.obj = Conn(
        url=url or str(cfg.get("url") or "http://127.0.0.1:8080"),
        api_key=api_key or str(cfg.get("api_key") or ""),
        timeout=timeout,
    )


def _conn(ctx: typer.Context) -> Conn:
    conn = ctx.obj
    assert isinstance(conn, Conn)
    if not conn.api_key:
        fail(Exit.UNAUTHORIZED, "no API key: pass --api-key, set ROLLCALL_API_KEY or a config file")
    return conn


def _call(conn: Conn, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    with conn.client() as http:
        return _checked(_send(conn, http, method, path, **kwargs))


def _send(conn: Conn, http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request; an API that cannot be reached ends the command (exit 7)."""
    try:
        return http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        fail(Exit.UNAVAILABLE, f"cannot reach {conn.url}: {exc}")


def _checked(resp: httpx.Response) -> dict[str, Any]:
    if resp.is_success:
        body: dict[str, Any] = resp.json()
        return body
    try:
        info = resp.json()["error"]
        message = f"{info['message']} ({info['code']})"
        for d in info.get("details") or []:
            message += f"\n  {'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}"
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {resp.status_code}"
    code = _BY_STATUS.get(resp.status_code)
    fail(
        code if code is not None else (Exit.UNAVAILABLE if resp.status_code >= 500 else Exit.ERROR),
        message,
    )


def _roster(roster: str | None, roster_file: Path | None) -> list[str]:
    ids = [s.strip() for s in (roster or "").split(",") if s.strip()]
    if roster_file is not None:
        ids += [
            line.strip()
            for line in roster_file.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    return ids


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _rows_out(title: str | None, header: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; tab-separated lines (header first) for pipes and scripts."""
    if out.is_terminal:
        table = Table(*header, title=title)
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    for row in [header, *rows]:
        print("\t".join(row))


def _print_jobs(jobs: list[dict[str, Any]]) -> None:
    rows = []
    for j in jobs:
        p = j.get("progress") or {}
        rows.append(
            [
                j["id"],
                j["namespace"],
                j["mode"],
                j["classCode"],
                j["phase"],
                f"{p.get('done', 0)}/{p.get('total', 0)}",
                j.get("createdAt") or "",
            ]
        )
    _rows_out(None, ["ID", "NAMESPACE", "MODE", "CLASS", "PHASE", "PROGRESS", "CREATED"], rows)


def _uncertain_row(r: dict[str, Any]) -> list[str]:
    """A student only faces needing review point at: the nearest such face, for a person."""
    faces = [f for f in r.get("faces") or [] if isinstance(f, dict)]
    best = min(faces, key=lambda f: float(f.get("score") or 0.0), default={})
    where = str(best.get("photo", "")) + (f" (+{len(faces) - 1})" if len(faces) > 1 else "")
    return [str(r.get("student")), "uncertain", where, str(best.get("score", ""))]


def _print_attendance(results: dict[str, Any]) -> None:
    att = results.get("attendance")
    if not isinstance(att, dict):
        return
    rows = [
        [str(r.get("student")), "present", str(r.get("photo", "")), str(r.get("score", ""))]
        for r in att.get("present") or []
        if isinstance(r, dict)
    ]
    rows += [_uncertain_row(r) for r in att.get("uncertain") or [] if isinstance(r, dict)]
    rows += [[str(s), "absent", "", ""] for s in att.get("absent") or []]
    rows += [[str(s), "not-enrolled", "", ""] for s in att.get("not_enrolled") or []]
    _rows_out("Attendance", ["STUDENT", "STATUS", "PHOTO", "SCORE"], rows)


OutputJson = Annotated[bool, typer.Option("--json", help="Print the raw JSON response.")]


def _submit(
    ctx: typer.Context,
    path: str,
    body: dict[str, Any],
    idempotency_key: str | None,
    as_json: bool,
    watch_after: bool,
) -> None:
    conn = _conn(ctx)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    job = _call(conn, "POST", path, json=body, headers=headers)
    if as_json:
        _print_json(job)
    else:
        out.print(f"{job['id']}\t{job['namespace']}\t{job['phase']}", highlight=False)
    if watch_after:
        _watch(conn, job["id"], quiet=as_json)


def _spec_body(
    file: Path | None,
    class_code: str | None,
    claim: str | None,
    sub_path: str,
    namespace: str | None,
    gallery: str | None,
    gpus: int | None,
    model: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if file is not None:
        loaded = yaml.safe_load(file.read_text())
        if not isinstance(loaded, dict):
            fail(Exit.USAGE, f"{file} must hold a mapping (a RecognitionJob spec)")
        # A whole RecognitionJob manifest works too: its spec is the body.
        body = dict(loaded["spec"]) if isinstance(loaded.get("spec"), dict) else dict(loaded)
    if class_code:
        body["classCode"] = class_code
    if claim:
        body["images"] = {"claimName": claim, "subPath": sub_path}
    if namespace:
        body["namespace"] = namespace
    if gallery:
        body["gallery"] = gallery
    if gpus is not None:
        body.setdefault("resources", {})["gpus"] = gpus
    if model:
        body["model"] = model
    if "classCode" not in body or "images" not in body:
        fail(Exit.USAGE, "give --class and --claim (or a --file with classCode and images)")
    return body


ClassOpt = Annotated[str | None, typer.Option("--class", help="Class code.")]
ClaimOpt = Annotated[str | None, typer.Option(help="PersistentVolumeClaim with the photos.")]
SubPathOpt = Annotated[str, typer.Option(help="Folder inside the claim.")]
NamespaceOpt = Annotated[str | None, typer.Option(help="Namespace (keys with several).")]
GalleryOpt = Annotated[str | None, typer.Option(help="Gallery name (default: the class).")]
GpusOpt = Annotated[int | None, typer.Option(help="GPUs for the job.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Embedder card id (galleries are per model: enrol with the one you identify with)."
    ),
]
FileOpt = Annotated[Path | None, typer.Option(help="YAML/JSON spec; flags override it.")]
IdemOpt = Annotated[
    str | None, typer.Option(help="Idempotency-Key: a retry with it never submits twice.")
]
WatchOpt = Annotated[bool, typer.Option("--watch", help="Follow the job until it ends.")]


@app.command()
def submit(
    ctx: typer.Context,
    class_code: ClassOpt = None,
    claim: ClaimOpt = None,
    sub_path: SubPathOpt = "",
    roster: Annotated[str | None, typer.Option(help="Comma-separated student ids.")] = None,
    roster_file: Annotated[Path | None, typer.Option(help="One student id per line.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Match threshold.")] = None,
    margin: Annotated[float | None, typer.Option(help="Ambiguity margin.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Candidates per face.")] = None,
    namespace: NamespaceOpt = None,
    gallery: GalleryOpt = None,
    gpus: GpusOpt = None,
    model: ModelOpt = None,
    file: FileOpt = None,
    idempotency_key: IdemOpt = None,
    watch: WatchOpt = False,
    as_json: OutputJson = False,
) -> None:
    """Submit a recognition (attendance) job; prints its id."""
    body = _spec_body(file, class_code, claim, sub_path, namespace, gallery, gpus, model)
    ids = _roster(roster, roster_file)
    if ids:
        body["roster"] = ids
    if threshold is not None or margin is not None or top_k is not None:
        matching = body.setdefault("matching", {})
        if threshold is not None:
            matching["threshold"] = threshold
        if margin is not None:
            matching["margin"] = margin
        if top_k is not None:
            matching["topK"] = top_k
    _submit(ctx, "/v1/recognition-jobs", body, idempotency_key, as_json, watch)


@app.command()
def enroll(
    ctx: typer.Context,
    class_code: ClassOpt = None,
    claim: ClaimOpt = None,
    sub_path: SubPathOpt = "",
    namespace: NamespaceOpt = None,
    gallery: GalleryOpt = None,
    gpus: GpusOpt = None,
    model: ModelOpt = None,
    file: FileOpt = None,
    idempotency_key: IdemOpt = None,
    watch: WatchOpt = False,
    as_json: OutputJson = False,
) -> None:
    """Enroll a class (one photo folder per student id) into its gallery; prints the job id."""
    body = _spec_body(file, class_code, claim, sub_path, namespace, gallery, gpus, model)
    body.pop("mode", None)
    _submit(ctx, "/v1/enrollments", body, idempotency_key, as_json, watch)


@app.command()
def get(ctx: typer.Context, job_id: str, as_json: OutputJson = False) -> None:
    """Show one job: phase, progress and summary."""
    job = _call(_conn(ctx), "GET", f"/v1/recognition-jobs/{job_id}")
    if as_json:
        _print_json(job)
        return
    _print_jobs([job])
    if job.get("summary"):
        out.print(" ".join(f"{k}={v}" for k, v in job["summary"].items() if v), highlight=False)
    if job.get("reason") or job.get("message"):
        out.print(f"{job.get('reason') or ''}: {job.get('message') or ''}", highlight=False)


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    class_code: ClassOpt = None,
    phase: Annotated[str | None, typer.Option(help="Pending, Queued, Running, ...")] = None,
    namespace: NamespaceOpt = None,
    limit: Annotated[int, typer.Option(help="Page size.")] = 50,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    as_json: OutputJson = False,
) -> None:
    """List jobs, oldest first (pages from the apiserver; --all follows them)."""
    conn = _conn(ctx)
    params: dict[str, Any] = {"limit": limit}
    for key, value in (("classCode", class_code), ("phase", phase), ("namespace", namespace)):
        if value:
            params[key] = value
    items: list[dict[str, Any]] = []
    while True:
        page = _call(conn, "GET", "/v1/recognition-jobs", params=params)
        items += page["items"]
        if not all_pages or not page.get("continue"):
            break
        params["continue"] = page["continue"]
    if as_json:
        _print_json({"items": items, "continue": None if all_pages else page.get("continue")})
        return
    _print_jobs(items)
    if page.get("continue") and not all_pages:
        err.print("more jobs: use --all", highlight=False)


@app.command()
def results(ctx: typer.Context, job_id: str, as_json: OutputJson = False) -> None:
    """Print a finished job's attendance (and with --json, per-photo detail)."""
    data = _call(_conn(ctx), "GET", f"/v1/recognition-jobs/{job_id}/results")
    _show_results(data, as_json)


def _show_results(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(data)
        return
    _print_attendance(data)
    summary = data.get("summary") or {}
    keys = (
        "images",
        "faces",
        "matched",
        "needs_review",
        "unknown",
        "present",
        "uncertain",
        "absent",
        "enrolled",
        "errors",
    )
    line = " ".join(f"{k}={summary[k]}" for k in keys if k in summary)
    out.print(line, highlight=False, soft_wrap=True)  # one line, for people and for grep


@app.command()
def cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job (its RecognitionJob, Job and pods are deleted)."""
    job = _call(_conn(ctx), "DELETE", f"/v1/recognition-jobs/{job_id}")
    out.print(f"{job['id']}\tcancelled", highlight=False)


erase_app = typer.Typer(
    help="Erase biometric data: a student's templates (and results naming them), or a class "
    "gallery. Irreversible; recorded as a Kubernetes Event and an audit log line.",
    no_args_is_help=True,
)
app.add_typer(erase_app, name="erase")

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Erase without asking for confirmation.")]
Namespace = Annotated[
    str | None, typer.Option(help="School namespace (keys with several); default: the key's first.")
]
Wait = Annotated[
    float,
    typer.Option(
        min=0,
        help="Seconds to keep repeating an erase the primary applied but its replicas did not "
        "confirm yet (503 erase_unconfirmed), that met a failover (503 erase_interrupted) or "
        "that found Redis unreachable (503 unavailable); repeating is safe. 0: do not repeat.",
    ),
]


# Class codes and student ids as the API takes them: no "/", "..", "?" that could move the path.
_IDENT = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


WAIT_LONGEST = 10.0  # seconds: a larger Retry-After is clipped, so the deadline is checked often


# The 503s after which the same DELETE is repeated (it is idempotent): the erase is applied on the
# primary but its replicas did not confirm it in time; the primary that was to confirm it does not
# hold it (a failover during the erase); the API could not reach Redis (an erase's writes are
# never resent inside the API, so right after a failover its first try answers this).
# code -> (the line printed before each repeat, what the exit message says once --wait ran out)
REPEATED = {
    "erase_unconfirmed": (
        "erased on the primary, waiting for replicas to confirm",
        "is erased on the primary but not confirmed by its replicas",
    ),
    "erase_interrupted": (
        "the erase met a Redis failover",
        "may not be erased (a Redis failover during the erase)",
    ),
    "unavailable": (
        "the API could not reach its store",
        "may not be erased (the API could not reach its store)",
    ),
}


@dataclass(frozen=True)
class Repeat:
    """How to repeat an erase: after ``pause`` seconds; ``message`` is the API's, ``code`` its code."""

    pause: float
    message: str
    code: str


def repeat_pause(resp: httpx.Response) -> Repeat | None:
    """For a 503 the CLI repeats (``REPEATED``): the seconds to wait before repeating the DELETE
    (``Retry-After``, 1 to ``WAIT_LONGEST``) and the API's message; for any other answer None,
    so it is handled as before."""
    if resp.status_code != 503:
        return None
    try:
        info = resp.json()["error"]
        code = info["code"]
        if code not in REPEATED:
            return None
        message = f"{info['message']} ({code})"
    except (ValueError, KeyError, TypeError):
        return None
    try:  # delta-seconds; an HTTP-date (the API sends none) counts as 1
        pause = float(int(resp.headers.get("Retry-After", "1")))
    except ValueError:
        pause = 1.0
    return Repeat(min(max(pause, 1.0), WAIT_LONGEST), message, code)


def _erase(
    ctx: typer.Context,
    names: list[str],
    path: str,
    what: str,
    yes: bool,
    namespace: str | None,
    wait: float,
) -> None:
    """Confirm (``--yes``, or an answer on a terminal), then DELETE and print what went.

    A 503 ``erase_unconfirmed`` means the erase is applied on the Redis primary but its replicas
    did not confirm it in time; the same DELETE is idempotent and answers 200 with the first
    attempt's counts once they did, so it is repeated for up to ``wait`` seconds, as are a 503
    ``erase_interrupted`` (a failover during the erase) and ``unavailable`` (Redis unreachable)."""
    for name in names:
        if len(name) > 64 or not _IDENT.fullmatch(name):
            fail(Exit.USAGE, f"{name!r} is not a class code or student id")
    conn = _conn(ctx)
    if not yes:
        if not sys.stdin.isatty():
            fail(Exit.USAGE, f"refusing to erase {what} without --yes")
        if not typer.confirm(f"Erase {what}? This cannot be undone", default=False):
            fail(Exit.USAGE, "not erased")
    params = {"namespace": namespace} if namespace else None
    deadline = time.monotonic() + wait
    with conn.client() as http:
        while True:
            resp = _send(conn, http, "DELETE", path, params=params)
            repeat = repeat_pause(resp)
            if repeat is None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                state = REPEATED[repeat.code][1]
                fail(
                    Exit.UNAVAILABLE,
                    f"{repeat.message}\n  {what} {state} after waiting {wait:g} s: repeat this "
                    "command (--wait for longer)",
                )
            pause = min(repeat.pause, left)
            err.print(f"{REPEATED[repeat.code][0]}; repeating in {pause:g} s", highlight=False)
            time.sleep(pause)
    done = _checked(resp)
    models = ",".join(done.get("models") or []) or "-"
    out.print(
        f"erased {what} in {done['namespace']}: templates={done['templates']} "
        f"models={models} results={done['results']}",
        highlight=False,
    )


@erase_app.command("student")
def erase_student(
    ctx: typer.Context,
    student_id: Annotated[str, typer.Argument(help="The student id, as enrolled.")],
    class_code: Annotated[str, typer.Option("--class", help="The class (gallery) code.")],
    yes: Yes = False,
    namespace: Namespace = None,
    wait: Wait = 30.0,
) -> None:
    """Erase one student's templates in every model's gallery of a class, and results naming them.

    Until the Redis replicas confirm the erase (503 erase_unconfirmed), and after a failover
    (503 erase_interrupted or unavailable), it is repeated, up to --wait.
    """
    path = f"/v1/classes/{class_code}/students/{student_id}"
    what = f"student {student_id} of class {class_code}"
    _erase(ctx, [class_code, student_id], path, what, yes, namespace, wait)


@erase_app.command("class")
def erase_class(
    ctx: typer.Context,
    class_code: Annotated[str, typer.Argument(help="The class (gallery) code.")],
    yes: Yes = False,
    namespace: Namespace = None,
    wait: Wait = 30.0,
) -> None:
    """Erase a whole class gallery (every student, every model).

    Until the Redis replicas confirm the erase (503 erase_unconfirmed), and after a failover
    (503 erase_interrupted or unavailable), it is repeated, up to --wait.
    """
    path, what = f"/v1/classes/{class_code}/gallery", f"the gallery of class {class_code}"
    _erase(ctx, [class_code], path, what, yes, namespace, wait)


RECONNECT_FOR = 60.0  # seconds a broken event stream is retried before giving up (exit 7)


def _events(conn: Conn, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Parse the SSE stream into (event, data) pairs, reconnecting if the stream breaks.

    An API restart (a rolling update) cuts the stream; the next connection starts with a fresh
    ``snapshot``, so nothing is lost. Errors that a retry cannot fix (401, 404) end at once.
    """
    timeout = httpx.Timeout(conn.timeout, read=None)
    give_up_at: float | None = None
    delay = 0.25
    while True:
        problem = "the stream ended early"
        try:
            with (
                conn.client() as http,
                http.stream(
                    "GET", f"/v1/recognition-jobs/{job_id}/events", timeout=timeout
                ) as resp,
            ):
                if resp.status_code in (502, 503, 504):
                    problem = f"HTTP {resp.status_code}"
                else:
                    if not resp.is_success:
                        resp.read()
                        _checked(resp)
                    give_up_at, delay = None, 0.25
                    event, data = "", ""
                    for line in resp.iter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: "):
                            data += line[6:]
                        elif line == "" and event:
                            yield event, json.loads(data or "{}")
                            event, data = "", ""
        except httpx.TransportError as exc:
            problem = str(exc) or type(exc).__name__
        now = time.monotonic()
        give_up_at = give_up_at or now + RECONNECT_FOR
        if now >= give_up_at:
            fail(Exit.UNAVAILABLE, f"event stream from {conn.url} broke: {problem}")
        err.print(f"event stream interrupted ({problem}); reconnecting", highlight=False)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def _watch(conn: Conn, job_id: str, quiet: bool = False) -> None:
    final: dict[str, Any] = {}
    deleted = False
    with Progress(
        TextColumn("[bold]{task.fields[job]}[/bold] {task.fields[phase]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
        transient=False,
    ) as bar:
        task = bar.add_task("job", total=None, job=job_id, phase="…")
        for event, data in _events(conn, job_id):
            if event in ("snapshot", "end"):
                final = data
                p = data.get("progress") or {}
                bar.update(
                    task,
                    phase=data.get("phase", ""),
                    completed=p.get("done", 0),
                    total=p.get("total") or None,
                )
            elif event == "phase":
                bar.update(task, phase=data.get("phase", ""))
                if not err.is_terminal and not quiet:
                    err.print(f"{job_id} {data.get('phase')}", highlight=False)
            elif event == "progress":
                bar.update(task, completed=data.get("done", 0), total=data.get("total") or None)
            elif event == "deleted":
                deleted = True
            if event in ("end", "deleted"):
                break
    if deleted:
        fail(Exit.JOB_CANCELLED, f"job {job_id} was cancelled")
    phase = final.get("phase")
    if phase == "Succeeded":
        if final.get("mode") == "enroll":
            out.print(f"{job_id} Succeeded", highlight=False)
        else:
            _show_results(_call(conn, "GET", f"/v1/recognition-jobs/{job_id}/results"), quiet)
        return
    reason = f"{final.get('reason') or ''} {final.get('message') or ''}".strip()
    if phase == "Cancelled":
        fail(Exit.JOB_CANCELLED, f"job {job_id} was cancelled {reason}".strip())
    fail(Exit.JOB_FAILED, f"job {job_id} {phase}: {reason}".strip())


@app.command()
def watch(ctx: typer.Context, job_id: str, as_json: OutputJson = False) -> None:
    """Follow a job (live progress bar) until it ends, then print its attendance.

    Exit code 0 if it Succeeded, 10 if it Failed, 11 if it was cancelled.
    """
    _watch(_conn(ctx), job_id, quiet=as_json)


@app.command()
def keygen(
    school: Annotated[str, typer.Option(help="School name.")],
    namespace: Annotated[list[str], typer.Option(help="Namespace(s); the first is the default.")],
) -> None:
    """Issue an API key: prints the key once (give it to the school) and its key-file entry."""
    from rollcall_api.auth import hash_key, new_key

    key = new_key()
    err.print("API key (shown once):", highlight=False)
    print(key)
    err.print("key-file entry:", highlight=False)
    sys.stderr.write(
        yaml.safe_dump({hash_key(key): {"school": school, "namespaces": list(namespace)}})
    )


if __name__ == "__main__":  # pragma: no cover
    app(prog_name=os.path.basename(sys.argv[0]))
