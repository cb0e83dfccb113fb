"""Monitoring as an operator deploys it: alert rules, the Grafana dashboard, and a real Prometheus.

- ``promtool check rules`` and ``promtool test rules`` on ``config/prometheus/`` (the unit tests
  show every alert firing and not firing).
- Every metric name in the rules and the dashboard is one boxd exports (read from
  :class:`boxd.metrics.Metrics` itself, so a renamed metric breaks this test, not a dashboard).
- A real ``prometheus`` scrapes a running daemon every second while it uploads through the
  emulator, loads the rules, and answers through its HTTP API: ``boxd_uploaded_bytes_total``
  rises from 0 to the bytes uploaded, and every dashboard query is valid PromQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from boxd.accounting import Stats
from boxd.metrics import Metrics
from tests.conftest import REPO, require
from tests.e2e.daemonproc import Daemon, free_port, running_daemon
from tests.simproc import running_sim

RULES = REPO / "config" / "prometheus" / "boxd.rules.yml"
RULE_TESTS = REPO / "config" / "prometheus" / "boxd.rules.test.yml"
DASHBOARD = REPO / "config" / "grafana" / "boxd.json"

KIB = 1024

# PromQL words that are not metric names.
_PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_PROMQL_WORDS |= {"offset", "inf", "nan"}


def exported_metric_names() -> set[str]:
    """Every sample name boxd can export: from the ``# TYPE`` lines of a render of empty stats
    (families without samples yet, like the request histogram, still declare their type)."""
    text = Metrics(Stats()).render({}).decode()
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, ranges, grouping clauses,
    strings, functions and Grafana variables removed first)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings, e.g. label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables such as $__rate_interval
    text = re.sub(r"\b[a-zA-Z_]\w*\s*\(", "(", text)  # function calls
    words = set(re.findall(r"\b[a-zA-Z_:][\w:]*\b", text))
    return {w for w in words if w.lower() not in _PROMQL_WORDS and not re.fullmatch(r"\d.*|e\d+", w)}


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and templating queries."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append(re.sub(r"^label_values\((\w+),\s*\w+\)$", r"\1", query))
    return exprs


def rule_exprs() -> dict[str, str]:
    """alert name → expr, read from the rules file without a YAML library (its layout is fixed:
    ``- alert: NAME`` then ``expr:`` either inline or as a folded block)."""
    out: dict[str, str] = {}
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*- alert: (\w+)$", line)
        if not m:
            continue
        expr_line = lines[i + 1].strip()
        assert expr_line.startswith("expr:"), f"{m.group(1)}: expr must follow the alert name"
        value = expr_line.removeprefix("expr:").strip()
        if value in (">-", ">", "|", "|-"):
            block = []
            for follow in lines[i + 2 :]:
                if re.match(r"\s*(for|labels|annotations):", follow):
                    break
                block.append(follow.strip())
            value = " ".join(block)
        out[m.group(1)] = value
    return out


# --- static checks ----------------------------------------------------------------------------


def test_exported_names_include_the_design_metrics() -> None:
    names = exported_metric_names()
    for name in ("boxd_jobs_total", "boxd_jobs", "boxd_uploaded_bytes_total", "boxd_box_request_seconds_bucket"):
        assert name in names
    assert metric_names_in('sum by (le) (rate(x_bucket{op="a"}[5m])) * 60 and on (job) up') == {"x_bucket", "up"}


def test_rules_and_dashboard_use_only_metrics_boxd_exports() -> None:
    names = exported_metric_names()
    rules = rule_exprs()
    assert set(rules) == {
        "BoxdDown",
        "BoxdMetricsAbsent",
        "BoxdAuthLost",
        "BoxdTokenRefreshFailing",
        "BoxdJobsFailing",
        "BoxdQueueNotDraining",
        "BoxdRateLimited",
    }
    for alert, expr in rules.items():
        used = metric_names_in(expr)
        assert used, alert
        assert used <= names | {"up"}, f"{alert} uses unknown metrics {used - names}"
    for expr in dashboard_queries():
        used = metric_names_in(expr)
        assert used, expr
        assert used <= names, f"dashboard query uses unknown metrics {used - names}: {expr}"


def test_dashboard_is_importable_and_covers_the_operator_questions() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    data_panels = [p for p in dash["panels"] if p["type"] != "row"]
    for panel in data_panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"]), panel["title"]
        assert panel["targets"], panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
    everything = " ".join(dashboard_queries())
    for needed in (
        "rate(boxd_uploaded_bytes_total",
        "boxd_jobs{",
        "boxd_jobs_total{",
        'outcome="failed"',
        "boxd_rate_limited_total",
        "boxd_retries_total",
        "boxd_token_expiry_timestamp_seconds",
        "boxd_auth_ok",
        'histogram_quantile(0.9, sum by (le) (rate(boxd_box_request_seconds_bucket{instance=~"$instance", '
        'op="upload_part"}',
        "boxd_parts_in_flight",
        "boxd_buffered_bytes",
    ):
        assert needed in everything, needed
    # No datasource is pinned to one Grafana's uid: all go through the variable.
    assert {json.dumps(d, sort_keys=True) for d in _datasources(dash)} == {
        '{"type": "prometheus", "uid": "${DS_PROMETHEUS}"}',
        '{"type": "grafana", "uid": "-- Grafana --"}',
    }


def _datasources(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            else:
                yield from _datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasources(item)


def _promtool() -> str:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (Debian package prometheus)")
    assert promtool is not None
    return promtool


def test_promtool_accepts_the_rules() -> None:
    proc = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout + proc.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    proc = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_rule_unit_tests_show_every_alert_firing_and_quiet() -> None:
    text = RULE_TESTS.read_text()
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in re.split(r"\n\s*- eval_time:", text)[1:]:
        alert = re.search(r"alertname: (\w+)", case)
        assert alert is not None, case
        if re.search(r"exp_alerts: \[\]", case):
            quiet.add(alert.group(1))
        else:
            assert "exp_annotations:" in case, f"{alert.group(1)}: check the rendered annotations too"
            firing.add(alert.group(1))
    assert firing == quiet == set(rule_exprs())


# --- a real Prometheus ------------------------------------------------------------------------


@contextlib.contextmanager
def running_prometheus(root: Path, target: str) -> Iterator[str]:
    """``prometheus`` scraping ``target`` every second under job="boxd", with boxd's rules;
    yields its base URL and stops it afterwards."""
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus is not installed (Debian package prometheus)")
    assert binary is not None
    root.mkdir(parents=True, exist_ok=True)
    config = root / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [{"job_name": "boxd", "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    listen = f"127.0.0.1:{free_port()}"
    log = open(root / "prometheus.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address={listen}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://{listen}"
    try:
        poll(lambda: _ready(base, proc, root), "prometheus ready", timeout=60)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _ready(base: str, proc: subprocess.Popen[bytes], root: Path) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{(root / 'prometheus.log').read_text()}")
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False


def poll(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    assert body["status"] == "success", f"{path} {params}: {body}"
    return body["data"]


def instant(base: str, query: str) -> list[float]:
    data = api(base, "query", query=query)
    return [float(r["value"][1]) for r in data["result"]]


def test_prometheus_scrapes_the_daemon_while_it_uploads(tmp_path: Path) -> None:
    promtool = _promtool()
    require(shutil.which("prometheus") is not None, "prometheus is not installed (Debian package prometheus)")
    files, size = 8, 512 * KIB
    # 512 KiB/s per connection and one file at a time: the upload takes several seconds, so
    # Prometheus (scraping every second) sees the counter on its way up.
    with (
        running_sim(tmp_path / "sim", "--bandwidth", str(512 * KIB)) as sim,
        running_daemon(sim, tmp_path / "d", transfers=1) as daemon,
        running_prometheus(tmp_path / "prom", daemon.listen) as prom,
    ):
        scrape = _check_scrape(daemon, promtool)
        assert "boxd_uploaded_bytes_total 0.0" in scrape

        poll(lambda: instant(prom, 'up{job="boxd"}') == [1.0], "the first scrape of boxd")
        assert instant(prom, "boxd_uploaded_bytes_total") == [0.0]
        assert instant(prom, "boxd_auth_ok") == [1.0]

        backup = daemon.source / "host1"
        backup.mkdir()
        for n in range(files):
            (backup / f"pack{n}").write_bytes(os.urandom(size))
        started = time.time()
        enq = daemon.boxd("enqueue", str(backup), "--to", "Backups/host1", "--json")
        assert enq.returncode == 0, enq.stderr
        job_id = json.loads(enq.stdout)["id"]

        first = poll(lambda: [v for v in instant(prom, "boxd_uploaded_bytes_total") if v > 0], "bytes > 0")
        assert 0 < first[0] <= files * size
        job = poll(lambda: _finished(daemon, job_id), "the job to end", timeout=120)
        assert job["state"] == "succeeded", job
        poll(lambda: instant(prom, "boxd_uploaded_bytes_total") == [float(files * size)], "all bytes counted")
        assert instant(prom, 'boxd_jobs_total{outcome="succeeded"}') == [1.0]
        assert instant(prom, 'boxd_files_total{outcome="uploaded"}') == [float(files)]

        # The counter went up in steps that Prometheus recorded, not in one jump after the fact.
        window = {"start": f"{started - 2:.3f}", "end": f"{time.time():.3f}", "step": "0.5"}
        seen = api(prom, "query_range", query="boxd_uploaded_bytes_total", **window)
        values = {float(v) for _, v in seen["result"][0]["values"]}
        assert len({v for v in values if 0 < v < files * size}) >= 3, sorted(values)

        # Every dashboard query is valid PromQL against the real series.
        for expr in dashboard_queries():
            query = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
            api(prom, "query", query=query)
        assert instant(prom, 'sum(boxd_jobs{instance=~".*", state="queued"})') == [0.0]

        # The rules load and evaluate cleanly; with a healthy daemon none of them fires.
        groups = poll(lambda: _evaluated_rules(prom), "every rule evaluated")
        for rule in groups:
            assert rule["health"] == "ok", rule
        firing = [a for a in api(prom, "alerts")["alerts"] if a["state"] == "firing"]
        assert firing == []


def _check_scrape(daemon: Daemon, promtool: str) -> str:
    status, text = daemon.http("/metrics")
    assert status == 200
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    return text


def _finished(daemon: Daemon, job_id: str) -> dict[str, Any] | None:
    proc = daemon.boxd("show", job_id, "--json")
    assert proc.returncode == 0, proc.stderr
    job = dict(json.loads(proc.stdout))
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


def _evaluated_rules(base: str) -> list[dict[str, Any]] | None:
    rules = [r for g in api(base, "rules")["groups"] for r in g["rules"]]
    if len(rules) != 7 or any(r["lastEvaluation"].startswith("0001-") for r in rules):
        return None
    return rules
