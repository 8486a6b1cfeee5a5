"""The results: a markdown table and the JSON beside it, in ``tests/bench/results/``.

``latest-<db>.md`` / ``.json`` per database, replaced by each run; with both databases,
``latest-comparison.md`` puts SQLite next to PostgreSQL (ratios measured in one run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.bench.burst import INFERNET_BURST_JOBS_S
from tests.bench.burst import VARIANTS as BURST_VARIANTS
from tests.bench.load import VARIANTS

#: The targets of issue 5 (PostgreSQL, 2 cores). SQLite reports the same figures.
#: The end-to-end targets are evaluated for each variant (``load.VARIANTS``).
#: The ratio is taken against the service of the reference's speed (``reference``; the
#: issue's reference answers 3,000–4,300 req/s), the absolute rate against the no-work echo.
E2E_TARGETS = {
    "e2e_ratio_32": ("end-to-end ÷ raw, 1 container, 32 clients, service of the reference's speed", ">=", 0.5),
    "e2e_rate_32": ("end-to-end jobs/s, 1 container, 32 clients (when raw ≥ 3,200 req/s)", ">=", 1600),
    "cpu_per_job": ("node CPU ms per one-step job (32 clients)", "<=", 0.5),
}
#: The burst phase's targets (issue 19; PostgreSQL, 2 cores), for each of its variants.
BURST_TARGETS = {
    "burst_rate": ("burst: end-to-end jobs/s, 4,000 jobs from 32 clients", ">=", 2500),
    "burst_infernet": ("burst: × the Infernet node on the same workload", ">=", 7.5),
    "burst_cpu": ("burst: node CPU ms per job, reads included", "<=", 0.4),
}
TARGETS = {
    "batch_ingest": ("batch ingest jobs/s (scheduler running)", ">=", 20_000),
    "idle_p50": ("idle submit → result p50 ms, clients poll every 1 ms", "<=", 10),
    "idle_wait_p50": ("idle submit → result p50 ms, clients wait", "<=", 10),
    "stored_by_id_p99": ("GET /api/jobs?id= p99 ms, N jobs stored", "<=", 10),
    "stored_list_p99": ("GET /api/jobs?limit=1000&after=…: one page of a client with 100,000 jobs, p99 ms", "<=", 10),
    "stored_pending_p99": ("GET /api/jobs?pending=true p99 ms", "<=", 10),
    "stored_info_p99": ("GET /info p99 ms", "<=", 10),
}


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def variant_label(key: str, poll_ms: float) -> str:
    mode, processes = VARIANTS[key]
    clients = f"clients poll every {poll_ms:g} ms" if mode == "poll" else "clients wait (`&wait=`)"
    return f"{clients}, {processes} node process{'es' if processes > 1 else ''}"


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    raw = _get(result, "raw", "32") or {}
    rows = []
    for variant in VARIANTS:
        e2e = _get(result, variant, "1", "32")
        if e2e is None:
            continue
        values = {
            "e2e_ratio_32": _get(result, "reference", variant, "ratio_to_raw"),
            "e2e_rate_32": e2e.get("rate") if (raw.get("rate") or 0) >= 3200 else None,
            "cpu_per_job": e2e.get("node_cpu_ms_per_job"),
        }
        targets = {k: v for k, v in E2E_TARGETS.items() if values[k] is not None or k != "e2e_ratio_32"}
        label = variant_label(variant, result["config"]["poll_ms"])
        rows += _rows(targets, values, f" — {label}")
    for key in BURST_VARIANTS:
        burst = result.get(key)
        if burst:
            values = {
                "burst_rate": burst.get("rate"),
                "burst_infernet": burst.get("ratio_to_infernet"),
                "burst_cpu": burst.get("node_cpu_ms_per_job"),
            }
            rows += _rows(BURST_TARGETS, values, f" — {_burst_label(key)}")
    values = {
        "batch_ingest": _get(result, "submit", "batch", "rate"),
        "idle_p50": _get(result, "idle_time_to_result", "p50_ms"),
        "idle_wait_p50": _get(result, "idle_time_to_result_wait", "p50_ms"),
        "stored_by_id_p99": _get(result, "stored", "reads", "get_by_id", "p99_ms"),
        "stored_list_p99": _get(result, "stored", "reads", "list_page_1000", "p99_ms"),
        "stored_pending_p99": _get(result, "stored", "reads", "pending", "p99_ms"),
        "stored_info_p99": _get(result, "stored", "reads", "info", "p99_ms"),
    }
    return rows + _rows(TARGETS, values)


def _burst_label(key: str) -> str:
    return "clients poll" if BURST_VARIANTS[key] == "poll" else "clients wait (`&wait=`)"


def _rows(targets: dict[str, tuple[str, str, float]], values: dict[str, Any], suffix: str = "") -> list[dict[str, Any]]:
    rows = []
    for key, (label, op, limit) in targets.items():
        value = values[key]
        met = None if value is None else (value >= limit if op == ">=" else value <= limit)
        rows.append({"key": key, "target": label + suffix, "limit": f"{op} {limit:,}", "value": value, "met": met})
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _p(summary: dict[str, Any] | None, key: str) -> str:
    if not summary:
        return "–"
    return f"{_fmt(summary.get(key + '_p50_ms'), 2)} / {_fmt(summary.get(key + '_p99_ms'), 2)}"


def _speed(cost: dict[str, Any] | None) -> str:
    """The machine's own speed (``tests/bench/wakecost.py``), to compare runs across machines."""
    if not cost:
        return ""
    across = (cost.get("ping_pong_across_cpus") or {}).get("waker_cpu_us")
    work = cost["work_cpu_us_after_sleep"]["0us"]
    return f"; a wake-up across CPUs {_fmt(across)} µs of CPU, a piece of Python work {_fmt(work)} µs (`wakecost.py`)"


def markdown(result: dict[str, Any]) -> str:
    db = result["db"]
    lines = [f"# jobnode benchmark — {db} — {result['date']}", ""]
    machine = result.get("machine", {})
    lines += [
        f"Mode: **{result['mode']}**. Code: `{_fmt(_get(result, 'code', 'commit'))}`"
        f"{' (app/ has uncommitted changes)' if _get(result, 'code', 'app_dirty') else ''}. "
        f"Machine: {machine.get('cpus')} CPUs, load average at start {machine.get('loadavg')}, "
        f"Python {machine.get('python')}, {machine.get('database_version')}"
        f"{'; autovacuum ' + machine['autovacuum'] if machine.get('autovacuum') else ''}"
        f"{_speed(machine.get('wakecost'))}. "
        f"Run took {_fmt(result.get('elapsed_s'))} s.",
        "",
        "Load generator: closed-loop clients on one keep-alive connection each (tests/bench/http.py), "
        f"polling `GET /api/jobs?id=` every {result['config']['poll_ms']} ms for the result, or waiting for it "
        "with `GET /api/jobs?id=…&wait=30`; the node runs as one process or as two (`server.workers`). The service is "
        "tests/bench/echo.py (asyncio); raw = the same clients calling its `POST /service_output` directly. "
        "CPU from /proc (utime+stime); `db` = the PostgreSQL backends of the node's database (on SQLite the "
        "database runs inside the node process); `other` = everything else on the machine in the window "
        "(other sessions' work shows up there).",
        "",
        "## Targets",
        "",
        "| target | limit | measured | met |",
        "|---|---|---|---|",
    ]
    for row in result.get("targets", []):
        lines.append(f"| {row['target']} | {row['limit']} | {_fmt(row['value'], 2)} | {_fmt(row['met'])} |")

    for variant in VARIANTS:
        if result.get(variant):
            lines += _end_to_end_table(result, variant)
    lines += [
        "",
        "Raw service alone: "
        + ", ".join(
            f"{c} clients {_fmt(s.get('rate'))} req/s (p50 {_fmt(s.get('latency_p50_ms'), 3)} ms)"
            for c, s in (result.get("raw") or {}).items()
        ),
        "",
    ]
    lines += _burst_section(result)
    lines += _reference_section(result)
    lines += _latency_table(result)
    lines += _stored_section(result)
    lines += _profile_section(result)
    return "\n".join(lines) + "\n"


def _end_to_end_table(result: dict[str, Any], variant: str) -> list[str]:
    lines = [
        "",
        f"## End to end next to the raw service — {variant_label(variant, result['config']['poll_ms'])}",
        "",
        "| containers | clients | raw req/s | e2e jobs/s | ratio | submit→result p50 / p99 ms "
        "| POST p50 / p99 ms | GETs/job | node CPU ms/job | db CPU ms/job | cores node / db / svc / loadgen / other "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for chain, by_clients in result[variant].items():
        for clients, s in by_clients.items():
            raw = _get(result, "raw", clients) or {}
            cores = s.get("cpu_cores", {})
            core_text = " / ".join(_fmt(cores.get(k), 2) for k in ("node", "db", "service", "loadgen", "other"))
            lines.append(
                f"| {chain} | {clients} | {_fmt(raw.get('rate'))} | {_fmt(s.get('rate'))} | "
                f"{_fmt(s.get('ratio_to_raw'), 3)} | {_p(s, 'latency')} | {_p(s, 'submit')} | "
                f"{_fmt(s.get('polls_per_job'))} | {_fmt(s.get('node_cpu_ms_per_job'), 3)} | "
                f"{_fmt(s.get('db_cpu_ms_per_job'), 3)} | {core_text} | {s.get('errors')} |"
            )
    return lines


def _burst_section(result: dict[str, Any]) -> list[str]:
    if not any(result.get(key) for key in BURST_VARIANTS):
        return []
    low, high = INFERNET_BURST_JOBS_S
    lines = [
        "## Burst (issue 19)",
        "",
        "Clients submit all the jobs at once, one `POST /api/jobs` each, then read their own back "
        "(`GET /api/jobs?id=…`, 100 ids a request) until every one has ended; node `max_concurrent_jobs` "
        f"64, 1 container. Jobs/s from the first submit to the last result; × Infernet: ÷ {high} "
        f"(the Infernet node did {low}–{high} jobs/s on this workload, issue 19).",
        "",
        "| clients read by | jobs | clients | e2e jobs/s | × raw | × Infernet | POST p50 / p99 ms | GETs "
        "| node CPU ms/job | db CPU ms/job | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in BURST_VARIANTS:
        s = result.get(key)
        if s:
            lines.append(
                f"| {_burst_label(key)} | {_fmt(s.get('checked'))} | {s.get('clients')} | {_fmt(s.get('rate'))} | "
                f"{_fmt(s.get('ratio_to_raw'), 3)} | {_fmt(s.get('ratio_to_infernet'), 2)} | {_p(s, 'submit')} | "
                f"{_fmt(s.get('gets'))} | {_fmt(s.get('node_cpu_ms_per_job'), 3)} | "
                f"{_fmt(s.get('db_cpu_ms_per_job'), 3)} | {s.get('errors')} |"
            )
    return [*lines, ""]


def _reference_section(result: dict[str, Any]) -> list[str]:
    reference = result.get("reference") or {}
    raw = reference.get("raw") or {}
    if not raw:
        return []
    lines = [
        f"## End to end against a service of the reference's speed ({reference.get('work_us'):g} µs of CPU per call)",
        "",
        f"`tests/bench/echo.py --work-us {reference.get('work_us'):g}`, alone: {_fmt(raw.get('rate'))} req/s "
        f"with {reference.get('clients')} clients (the Infernet node's echo service: 3,000–4,300). Node on a "
        "fresh database, 1 container.",
        "",
        f"| {reference.get('clients')} clients | e2e jobs/s | ratio to raw | submit→result p50 / p99 ms "
        "| node CPU ms/job | db CPU ms/job "
        "| cores node / db / svc / loadgen / other | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        s = reference.get(variant)
        if not s:
            continue
        cores = s.get("cpu_cores", {})
        core_text = " / ".join(_fmt(cores.get(k), 2) for k in ("node", "db", "service", "loadgen", "other"))
        lines.append(
            f"| {variant_label(variant, result['config']['poll_ms'])} | {_fmt(s.get('rate'))} | "
            f"{_fmt(s.get('ratio_to_raw'), 3)} | {_p(s, 'latency')} | "
            f"{_fmt(s.get('node_cpu_ms_per_job'), 3)} | {_fmt(s.get('db_cpu_ms_per_job'), 3)} | "
            f"{core_text} | {s.get('errors')} |"
        )
    return [*lines, ""]


def _latency_table(result: dict[str, Any]) -> list[str]:
    submit = result.get("submit") or {}
    lines = ["## Latency and ingest", "", "| measure | figure |", "|---|---|"]
    for key, how in (
        ("idle_time_to_result", f"poll {result['config']['poll_ms']:g} ms"),
        ("idle_time_to_result_wait", "wait"),
    ):
        idle = result.get(key) or {}
        lines.append(
            f"| idle node, submit → result (1 container, {how}), {idle.get('count')} jobs "
            f"{_fmt(idle.get('pause_ms'), 0)} ms apart | "
            f"p50 {_fmt(idle.get('p50_ms'), 2)} ms, p99 {_fmt(idle.get('p99_ms'), 2)} ms |"
        )
    for key, label in (
        ("single_sequential", "single POST, one client at a time (scheduler running)"),
        ("api_only_single_sequential", "single POST, one client at a time (API-only node)"),
    ):
        s = submit.get(key) or {}
        lines.append(
            f"| {label}, {s.get('count')} POSTs | p50 {_fmt(s.get('p50_ms'), 2)} ms, "
            f"p99 {_fmt(s.get('p99_ms'), 2)} ms |"
        )
    for key, label in (
        ("single_concurrent", "single POSTs, {c} clients (scheduler running)"),
        ("batch", "POST /api/jobs/batch of {b}, {c} clients (scheduler running)"),
        ("api_only_batch", "POST /api/jobs/batch of {b}, {c} clients (API-only node)"),
    ):
        s = submit.get(key) or {}
        label = label.format(c=s.get("clients"), b=result["config"].get("batch_size"))
        lines.append(
            f"| {label} | {_fmt(s.get('rate'))} jobs/s; request p50 {_fmt(s.get('latency_p50_ms'), 2)}"
            f" ms, p99 {_fmt(s.get('latency_p99_ms'), 2)} ms; node CPU "
            f"{_fmt(s.get('node_cpu_ms_per_job'), 3)} ms/job; errors {s.get('errors')} |"
        )
    memory = result.get("memory") or {}
    lines.append(
        "| node peak RSS (VmHWM) | "
        + ", ".join(f"{k.replace('_', ' ')} {_fmt(v)} MiB" for k, v in memory.items())
        + " |"
    )
    checks = result.get("checks") or {}
    lines.append(
        f"| errors reaching clients (all phases) | {checks.get('client_errors')}; "
        f'"database is locked" to a client: {checks.get("database_locked_to_clients")}; '
        f'503 to a client: {checks.get("database_unavailable_to_clients")}; "database is locked" '
        f"in the node logs: {checks.get('database_locked_in_logs')}; tracebacks in the node logs: "
        f"{checks.get('tracebacks_in_logs')}; jobs abandoned: {checks.get('jobs_abandoned_in_logs')} |"
    )
    for text, count in (checks.get("error_samples") or {}).items():
        lines.append(f"| error seen ×{count} | `{text[:150]}` |")
    return lines


def _stored_section(result: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    stored = result.get("stored") or {}
    if stored:
        build = stored.get("build", {})
        lines += [
            "",
            f"## {stored.get('jobs', 0):,} jobs stored",
            "",
            f"Generated in {_fmt(stored.get('build_s'))} s ("
            + ", ".join(
                f"{k.removesuffix('_s').replace('_', ' ')} {_fmt(v)}" for k, v in build.items() if k.endswith("_s")
            )
            + " s); database "
            f"{_fmt(build.get('database_mb'))} MiB. The client reading owns {stored.get('client_jobs', 0):,} jobs "
            f"({stored.get('client_pending')} pending); {stored.get('pending', 0):,} jobs pending in all. "
            "Node started on it with the scheduler off. Sequential requests after 3 warm-up requests.",
            "",
            "| request | n | p50 ms | p99 ms | max ms | body bytes | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in (stored.get("reads") or {}).values():
            lines.append(
                f"| {r['request']} | {r['count']} | {_fmt(r['p50_ms'], 2)} | {_fmt(r['p99_ms'], 2)} | "
                f"{_fmt(r['max_ms'], 2)} | {_fmt(r.get('body_bytes'))} | {r['errors']} |"
            )
        plan = stored.get("claim_plan") or {}
        if plan:
            execution = plan.get("execution_ms")
            lines += [
                "",
                f"Claim query (`JobStore.claim`, LIMIT 256) on the stored database — uses "
                f"`{plan.get('index')}`: **{_fmt(plan.get('uses_index'))}**; as an ordered index scan that "
                f"stops at the LIMIT (no sort of every pending row): **{_fmt(plan.get('ordered_index_scan'))}**"
                f" (indexes in the plan: {', '.join(plan.get('indexes_used') or []) or 'none'}"
                + (f"; execution {execution} ms" if execution is not None else "")
                + ").",
                "",
                "```sql",
                plan.get("sql", ""),
                "```",
                "",
                "```",
                *plan.get("plan", []),
                "```",
            ]
    return lines


def _profile_section(result: dict[str, Any]) -> list[str]:
    profile = result.get("profile") or {}
    lines = ["", "## Profile of the node (1 container, 32 waiting clients, 1 node process)", ""]
    if profile.get("top_own"):
        lines += [
            f"{profile.get('tool')}, {profile.get('samples')} samples over {profile.get('duration_s')} s "
            f"({profile.get('rate')} jobs/s while profiled); files: {', '.join(profile.get('files', []))}.",
            "",
            "Top frames by own time:",
            "",
            "| # | frame | samples | % |",
            "|---|---|---|---|",
        ]
        for i, row in enumerate(profile["top_own"], 1):
            lines.append(f"| {i} | `{row['frame']}` | {row['samples']} | {row['percent']} |")
        lines += ["", "Own time by package:", "", "| package | % |", "|---|---|"]
        for row in profile.get("own_by_package", []):
            lines.append(f"| {row['frame']} | {row['percent']} |")
        lines += [
            "",
            "The node's own functions (app/) by total time (own + what they call):",
            "",
            "| function | % |",
            "|---|---|",
        ]
        for row in profile.get("top_total_app", []):
            lines.append(f"| `{row['frame']}` | {row['percent']} |")
    else:
        lines.append(f"Not profiled: {profile.get('error', 'run with --profile')}.")
    return lines


def comparison(results: dict[str, dict[str, Any]]) -> str:
    """SQLite next to PostgreSQL, figure by figure (ratios of one run)."""
    pg, lite = results["postgresql"], results["sqlite"]
    rows: list[tuple[str, Any, Any]] = []
    for variant in VARIANTS:
        label = variant_label(variant, pg["config"]["poll_ms"])
        for chain, by_clients in (pg.get(variant) or {}).items():
            for clients in by_clients:
                for figure, key in (("e2e jobs/s", "rate"), ("node CPU ms/job", "node_cpu_ms_per_job")):
                    rows.append(
                        (
                            f"{figure}, {chain} container(s), {clients} clients, {label}",
                            _get(pg, variant, chain, clients, key),
                            _get(lite, variant, chain, clients, key),
                        )
                    )
    for variant in VARIANTS:
        if _get(pg, "reference", variant) is not None:
            label = variant_label(variant, pg["config"]["poll_ms"])
            rows.append(
                (
                    f"e2e ÷ raw against the reference-speed service, {label}",
                    _get(pg, "reference", variant, "ratio_to_raw"),
                    _get(lite, "reference", variant, "ratio_to_raw"),
                )
            )
    for key in BURST_VARIANTS:
        for figure, field in (("jobs/s", "rate"), ("node CPU ms/job", "node_cpu_ms_per_job")):
            rows.append((f"burst, {_burst_label(key)}: {figure}", _get(pg, key, field), _get(lite, key, field)))
    rows += [
        (
            "batch ingest jobs/s (scheduler running)",
            _get(pg, "submit", "batch", "rate"),
            _get(lite, "submit", "batch", "rate"),
        ),
        (
            "batch ingest jobs/s (API-only node)",
            _get(pg, "submit", "api_only_batch", "rate"),
            _get(lite, "submit", "api_only_batch", "rate"),
        ),
        (
            "single POST p50 ms",
            _get(pg, "submit", "single_sequential", "p50_ms"),
            _get(lite, "submit", "single_sequential", "p50_ms"),
        ),
        (
            "idle submit → result p50 ms (poll)",
            _get(pg, "idle_time_to_result", "p50_ms"),
            _get(lite, "idle_time_to_result", "p50_ms"),
        ),
        (
            "idle submit → result p50 ms (wait)",
            _get(pg, "idle_time_to_result_wait", "p50_ms"),
            _get(lite, "idle_time_to_result_wait", "p50_ms"),
        ),
    ]
    for key in ("get_by_id", "list_one_page", "list_page_1000", "pending", "info"):
        rows.append(
            (
                f"stored: {key} p99 ms",
                _get(pg, "stored", "reads", key, "p99_ms"),
                _get(lite, "stored", "reads", key, "p99_ms"),
            )
        )
    lines = [
        f"# jobnode benchmark — SQLite against PostgreSQL — {pg['date']}",
        "",
        "| figure | PostgreSQL | SQLite | SQLite ÷ PostgreSQL |",
        "|---|---|---|---|",
    ]
    for label, a, b in rows:
        ratio = (b / a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else None
        lines.append(f"| {label} | {_fmt(a, 2)} | {_fmt(b, 2)} | {_fmt(ratio, 2)} |")
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], directory: Path, stem: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    md = directory / f"{stem}.md"
    js = directory / f"{stem}.json"
    md.write_text(markdown(result))
    js.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    return md, js
