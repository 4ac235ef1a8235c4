"""The operator kit names only what the code really emits and really offers.

deploy/prometheus/alerts.yml and deploy/grafana/tokenpool-dashboard.json against the Prometheus registry
(metric names, label names, label values), the CloudWatch alarms of deploy/aws/template.yaml against the
EMF documents of the Lambda and the worker, and docs/runbook.md against the alerts that link to it, the
CLI it tells operators to run and the tables its SQL reads. A renamed metric, label, route, command or
table fails here, not during an incident.
"""

from __future__ import annotations

import inspect
import json
import re
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest
import typer.main
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import tokenpool.monitoring.alerts as alerts_module
import tokenpool.observability.metrics as metrics_module
import tokenpool.tome.client as tome_client_module
from tests.cloudformation import TEMPLATE, expanded_resources, resources_of_type, template
from tokenpool.aws.emf_reporter import WORKER_FIGURES
from tokenpool.cards.model import TokenSource
from tokenpool.entrypoints.cli import app as cli_app
from tokenpool.monitoring.alerts import LOG, SNS, WEBHOOK, Alert, Delivery
from tokenpool.monitoring.health import HealthStatus, PoolHealth
from tokenpool.pool.model import PairStatus
from tokenpool.refill.model import Outcome, RefillPlan, RefillResult
from tokenpool.refill.reporting import alert_documents, emf_documents
from tokenpool.service.app import create_app
from tokenpool.service.middleware import UNMATCHED_ROUTE
from tokenpool.settings import Settings
from tokenpool.tome.contract import Operation
from tokenpool.tome.resilience import BreakerState

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/tokenpool-dashboard.json"
RUNBOOK = ROOT / "docs/runbook.md"
MIGRATIONS = ROOT / "src/tokenpool/db/migrations"

METRIC_NAME = re.compile(r"\btokenpool_[a-z_]+\b")
STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"')
SELECTOR = re.compile(r"\b(tokenpool_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
SAMPLE_SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum")


# --- What the code emits ---------------------------------------------------------------------------

def _sample_names(family_name: str, family_type: str) -> set[str]:
    """Names a family shows in the exposition format, whether or not a labelled child exists yet."""
    by_type = {
        "counter": {"_total", "_created"},
        "gauge": {""},
        "histogram": {"_bucket", "_count", "_sum", "_created"},
        "summary": {"", "_count", "_sum", "_created"},
    }
    return {family_name + suffix for suffix in by_type.get(family_type, {""})}


@cache
def exposed_sample_names() -> dict[str, str]:
    """Every tokenpool sample name the registry can expose -> its family name.

    A labelled family has no samples until a child is created (``.labels(...)``), which depends on what
    other tests ran first; so the names come from each family's type as well as from its current samples.
    """
    names: dict[str, str] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("tokenpool_"):
            continue
        for name in _sample_names(family.name, family.type) | {sample.name for sample in family.samples}:
            names[name] = family.name
    return names


@cache
def family_label_names() -> dict[str, frozenset[str]]:
    return {
        metric._name: frozenset(metric._labelnames)
        for metric in vars(metrics_module).values()
        if isinstance(metric, MetricWrapperBase)
    }


def _literals(module: ModuleType, pattern: str) -> set[str]:
    return set(re.findall(pattern, inspect.getsource(module)))


def _no_tome() -> NoReturn:
    raise AssertionError("the app must not open a TOME client here")


@cache
def known_label_values() -> dict[tuple[str, str], frozenset[str]]:
    """Label values the code sets, for the labels whose values the kit filters on."""
    tome_outcomes = _literals(tome_client_module, r'outcome_label = (?:Outcome\.\w+, )?"(\w+)"') | _literals(
        tome_client_module, r'TOME_REQUESTS\.labels\([^)]*, "(\w+)"\)'
    )
    assert {"ok", "server_error", "breaker_open"} <= tome_outcomes, (
        "could not read the TOME outcome labels from tokenpool.tome.client; adjust this test's patterns"
    )
    alert_outcomes = _literals(alerts_module, r'POOL_ALERTS\.labels\([^)]*, "(\w+)"\)')
    assert alert_outcomes, "could not read the alert outcome labels from tokenpool.monitoring.alerts"
    # Building the app opens nothing (the lifespan does, and it does not run here).
    app = create_app(Settings(), database_url="postgresql://unused", tome_factory=_no_tome)
    routes = set(app.openapi()["paths"]) | {UNMATCHED_ROUTE}
    values = {
        ("tokenpool_pool_pairs", "status"): {status.value.lower() for status in PairStatus},
        ("tokenpool_refill_runs", "outcome"): {outcome.value for outcome in Outcome},
        ("tokenpool_cards_created", "token_source"): {source.value for source in TokenSource},
        ("tokenpool_cards_created", "routed_to"): {source.value for source in TokenSource},
        ("tokenpool_tome_requests", "operation"): {operation.value for operation in Operation},
        ("tokenpool_tome_requests", "outcome"): tome_outcomes,
        ("tokenpool_tome_breaker_transitions", "to_state"): {state.value for state in BreakerState},
        ("tokenpool_pool_alerts", "outcome"): alert_outcomes,
        ("tokenpool_pool_alerts", "channel"): {LOG, SNS, WEBHOOK},
        ("tokenpool_http_requests", "route"): routes,
        ("tokenpool_http_request_duration_seconds", "route"): routes,
    }
    return {key: frozenset(found) for key, found in values.items()}


# --- What the kit uses -------------------------------------------------------------------------------

@cache
def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


@cache
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside it


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel.get("targets", [])]


def kit_expressions() -> list[tuple[str, str]]:
    return [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()] + [
        ("dashboard", expr) for expr in dashboard_expressions()
    ]


def metric_names_in(expr: str) -> set[str]:
    # Label values ("tokenpool-worker", a route) are not metric names.
    return set(METRIC_NAME.findall(STRING_LITERAL.sub('""', expr)))


def family_of(sample_name: str) -> str:
    return exposed_sample_names().get(sample_name, sample_name)


PROGRAMS = ["default", "gold-card"]


def alarms() -> dict[str, dict[str, Any]]:
    resources = expanded_resources({"Programs": PROGRAMS})
    found = resources_of_type(resources, "AWS::CloudWatch::Alarm")
    return {name: resource["Properties"] for name, resource in found.items()}


def github_anchor(heading: str) -> str:
    """GitHub's heading slug: lower case, punctuation dropped (word characters, hyphens, spaces kept),
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def markdown_outside_code(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def runbook_anchors() -> set[str]:
    anchors: set[str] = set()
    for line in markdown_outside_code(RUNBOOK.read_text()):
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            anchor = base = github_anchor(match.group(1))
            suffix = 0
            while anchor in anchors:  # GitHub numbers repeated headings: x, x-1, x-2
                suffix += 1
                anchor = f"{base}-{suffix}"
            anchors.add(anchor)
    return anchors


# --- Prometheus: alerts and dashboard -----------------------------------------------------------------

def test_every_alert_has_a_severity_a_runbook_link_and_a_summary():
    rules = alert_rules()
    assert len(rules) >= 10
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        assert annotations["runbook_url"].startswith("docs/runbook.md#"), rule["alert"]


def test_the_alerts_cover_pool_refill_tome_and_api_failures():
    used = set().union(*(metric_names_in(rule["expr"]) for rule in alert_rules()))
    for needed in ("tokenpool_pool_health", "tokenpool_pool_pairs", "tokenpool_cards_created_total",
                   "tokenpool_refill_runs_total", "tokenpool_refill_last_success_timestamp_seconds",
                   "tokenpool_pool_alerts_total", "tokenpool_tome_breaker_state", "tokenpool_tome_requests_total",
                   "tokenpool_http_requests_total", "tokenpool_http_request_duration_seconds_bucket"):
        assert needed in used, f"no alert reads {needed}"


def test_the_fallback_alert_counts_only_cards_the_canary_sent_to_the_pool():
    # Cards the canary routes to TOME on purpose (a share below 100 %, a step, `config unset`) are not a
    # fallback: the alert reads routed_to="pool" in both its numerator and its denominator.
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "TokenpoolCardsFallingBackToTome"]
    selectors = [body for metric, body in SELECTOR.findall(rule["expr"]) if metric == "tokenpool_cards_created_total"]
    assert len(selectors) == 2
    assert all('routed_to="pool"' in body for body in selectors), selectors
    assert "tokenpool_pool_traffic_percent" not in rule["expr"]


@pytest.mark.parametrize(("where", "expr"), kit_expressions())
def test_every_metric_the_kit_reads_is_exposed_under_that_name(where, expr):
    names = metric_names_in(expr)
    scrape_health = re.search(r'\bup\{job="tokenpool-(api|worker)"\}', expr)  # Prometheus' own `up`
    assert names or scrape_health, f"{where}: no tokenpool metric in {expr!r}"
    unknown = names - set(exposed_sample_names())
    assert not unknown, f"{where}: {sorted(unknown)} not exposed (counters end in _total, histograms in _bucket...)"


def test_a_counter_without_its_total_suffix_is_not_taken_for_an_exposed_name():
    # The guard above must see the prometheus_client convention, or it checks nothing.
    exposed = exposed_sample_names()
    assert "tokenpool_refill_runs_total" in exposed
    assert "tokenpool_refill_runs" not in exposed
    assert "tokenpool_http_request_duration_seconds_bucket" in exposed
    assert "tokenpool_http_request_duration_seconds" not in exposed


@pytest.mark.parametrize(("where", "expr"), kit_expressions())
def test_every_label_the_kit_filters_on_exists_with_the_values_the_code_sets(where, expr):
    for metric, body in SELECTOR.findall(expr):
        family = family_of(metric)
        allowed = family_label_names()[family] | ({"le"} if metric.endswith("_bucket") else set())
        for label, operator, value in MATCHER.findall(body):
            assert label in allowed, f"{where}: {metric} has no label {label!r} (labels: {sorted(allowed)})"
            known = known_label_values().get((family, label))
            if known is None or "$" in value:  # no fixed set of values, or a Grafana variable
                continue
            if operator in ("=", "!="):
                assert value in known, f"{where}: {metric} {label}{operator}{value!r} never set; known {sorted(known)}"
            else:
                for alternative in value.split("|"):
                    assert any(re.fullmatch(alternative, candidate) for candidate in known), (
                        f"{where}: {label}{operator}{alternative!r} matches no value the code sets: {sorted(known)}"
                    )


def test_the_dashboard_uses_the_prometheus_input_and_a_pool_variable():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert [item["name"] for item in board["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert "label_values(tokenpool_pool_pairs, pool)" in json.dumps(variables["pool"]["query"])
    panels = [panel for panel in dashboard_panels() if panel["type"] != "row"]
    assert len({panel["id"] for panel in dashboard_panels()}) == len(list(dashboard_panels()))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_every_dashboard_query_of_a_pool_metric_follows_the_pool_variable():
    for expr in dashboard_expressions():
        for metric, body in SELECTOR.findall(expr):
            if "pool" in family_label_names()[family_of(metric)]:
                assert re.search(r'\bpool=~"\$pool"', body), f"{metric} ignores $pool in {expr!r}"
        for metric in metric_names_in(expr) - {name for name, _ in SELECTOR.findall(expr)}:
            assert "pool" not in family_label_names()[family_of(metric)], f"{metric} ignores $pool in {expr!r}"


def test_the_dashboard_shows_what_operators_asked_for():
    used = set().union(*(metric_names_in(expr) for expr in dashboard_expressions()))
    for needed in ("tokenpool_pool_pairs", "tokenpool_pool_hours_left", "tokenpool_cards_created_total",
                   "tokenpool_tome_requests_total", "tokenpool_tome_breaker_state", "tokenpool_refill_runs_total",
                   "tokenpool_refill_pairs_added_total", "tokenpool_http_requests_total",
                   "tokenpool_http_request_duration_seconds_bucket"):
        assert needed in used, f"no panel reads {needed}"
    api_quantile = re.compile(r"histogram_quantile\((0\.\d+),.*?tokenpool_http_request_duration_seconds_bucket")
    quantiles = {match.group(1) for expr in dashboard_expressions() for match in api_quantile.finditer(expr)}
    assert {"0.5", "0.95", "0.99"} <= quantiles


# --- CloudWatch: the EMF metrics of the Lambda and the worker ------------------------------------------

@cache
def emitted_dimension_sets() -> dict[str, set[frozenset[str]]]:
    """Metric name -> the dimension sets it is published with (EMF: one set per document): the Lambda's
    documents, and the worker's figures (a family's label names are its dimensions)."""
    plan = RefillPlan(available=40, configured_target=100, forecast=0, consumption_per_hour=None, count=60,
                      target=100)
    result = RefillResult(run_id=uuid.uuid4(), pool="p", outcome=Outcome.SUCCEEDED, plan=plan)
    counts = {status.value.lower(): 1 for status in PairStatus}  # as lambda_refill._counts builds them
    health = PoolHealth(pool="p", status=HealthStatus.LOW, target=100, counts={"available": 10},
                        consumption_per_hour=None, hours_left=None)
    delivery = Delivery(Alert("p", HealthStatus.LOW, None, health), (LOG, SNS), (WEBHOOK,))
    emitted: dict[str, set[frozenset[str]]] = {}
    for document in [*emf_documents(result, counts), *alert_documents([delivery])]:
        for metric in document.metrics:
            emitted.setdefault(metric.name, set()).add(frozenset(document.dimensions))
    for figure in WORKER_FIGURES:
        emitted.setdefault(figure.family, set()).add(family_label_names()[figure.family])
    return emitted


def test_the_alarms_go_to_the_alerts_topic_and_read_the_emf_namespace():
    assert template()["Parameters"]["MetricsNamespace"]["Default"] == Settings.model_fields["emf_namespace"].default
    assert template()["Resources"]["AlertsTopic"]["Type"] == "AWS::SNS::Topic"
    for name, alarm in alarms().items():
        assert {"Ref": "AlertsTopic"} in alarm["AlarmActions"], name
        assert alarm["TreatMissingData"] in {"breaching", "notBreaching"}, name


def test_every_tokenpool_alarm_reads_a_metric_emitted_with_exactly_its_dimensions():
    ours = {name: alarm for name, alarm in alarms().items() if alarm.get("Namespace") == {"Ref": "MetricsNamespace"}}
    assert len(ours) >= 8 * len(PROGRAMS)
    values = {"status": {status.value.lower() for status in PairStatus},
              "outcome": {o.value for o in Outcome} | {"sent", "failed"}, "channel": {LOG, SNS, WEBHOOK}}
    for name, alarm in ours.items():
        metric = alarm["MetricName"]
        assert metric in emitted_dimension_sets(), f"{name}: neither the Lambda nor the worker emits {metric}"
        dimensions = {dimension["Name"]: dimension["Value"] for dimension in alarm["Dimensions"]}
        # CloudWatch matches the exact dimension set: one dimension more or less finds no datapoint.
        assert frozenset(dimensions) in emitted_dimension_sets()[metric], (
            f"{name}: {metric} is published with {emitted_dimension_sets()[metric]}, not {set(dimensions)}"
        )
        assert dimensions["pool"] in PROGRAMS, f"{name}: watches {dimensions['pool']!r}, not its program"
        for dimension, value in dimensions.items():
            if isinstance(value, str) and dimension in values:
                assert value in values[dimension], f"{name}: {dimension}={value!r} is never emitted"


def test_the_alarms_watch_a_low_pool_a_failed_refill_a_missing_refill_and_lambda_errors():
    watched = {
        (alarm.get("MetricName"), value, alarm["TreatMissingData"])
        for alarm in alarms().values()
        for value in [d["Value"] for d in alarm.get("Dimensions", []) if isinstance(d["Value"], str)] or [None]
    }
    assert ("tokenpool_pool_pairs", "available", "breaching") in watched
    assert ("tokenpool_refill_runs", "failed", "notBreaching") in watched
    assert ("tokenpool_refill_runs", "succeeded", "breaching") in watched
    assert any(metric == "Errors" for metric, _, _ in watched)


# --- The runbook -----------------------------------------------------------------------------------

def test_every_runbook_link_in_the_kit_and_the_runbook_points_at_a_heading():
    anchors = runbook_anchors()
    links = {url.split("#", 1)[1] for url in (rule["annotations"]["runbook_url"] for rule in alert_rules())}
    for source in (TEMPLATE, DASHBOARD):
        links |= set(re.findall(r"docs/runbook\.md#([\w-]+)", source.read_text()))
    links |= set(re.findall(r"\]\(#([\w-]+)\)", RUNBOOK.read_text()))
    assert len(links) >= 10
    missing = links - anchors
    assert not missing, f"no heading for {sorted(missing)}; headings: {sorted(anchors)}"


def test_the_heading_slug_follows_github():
    assert github_anchor("API 503: database unavailable or busy") == "api-503-database-unavailable-or-busy"
    assert github_anchor("Expired (quarantined) pairs") == "expired-quarantined-pairs"
    assert github_anchor("Pool low, critical or empty") == "pool-low-critical-or-empty"


def runbook_commands() -> list[str]:
    text = RUNBOOK.read_text()
    spans = [" ".join(span.split()) for span in re.findall(r"`(tokenpool [^`]+)`", text)]
    fenced_bash = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S))
    spans += [line.split("#", 1)[0].strip() for line in fenced_bash.splitlines() if line.startswith("tokenpool ")]
    return sorted(set(spans))


@pytest.mark.parametrize("command", runbook_commands())
def test_every_command_in_the_runbook_exists_with_its_options(command):
    node: Any = typer.main.get_command(cli_app)  # Typer ships its own click: test groups by their commands
    words = command.split()[1:]
    path = ["tokenpool"]
    while hasattr(node, "commands") and words and words[0] in node.commands:
        node = node.commands[words[0]]
        path.append(words.pop(0))
    assert not hasattr(node, "commands"), f"{command!r}: {' '.join(path)} has no subcommand {words[:1]}"
    options = {opt for param in node.params for opt in (*param.opts, *param.secondary_opts)}
    for option in re.findall(r"--[a-z][a-z0-9-]*", " ".join(words)):
        assert option in options, f"{command!r}: {' '.join(path)} has no option {option} ({sorted(options)})"


def test_the_runbook_covers_the_operations_asked_for():
    assert len(runbook_commands()) >= 15
    text = RUNBOOK.read_text()
    for needed in ("tokenpool run", "tokenpool db stop", "tokenpool serve", "tokenpool worker", "tokenpool refill",
                   "tokenpool health", "tokenpool config set pool-traffic-percent 0", "tokenpool apikey revoke",
                   "TOKENPOOL_REFILL_TARGET", "TOKENPOOL_REFILL_FORECAST_MAX_FACTOR", "TOKENPOOL_DB_POOL_MAX_SIZE",
                   "SERVICE_BUSY", "DATABASE_UNAVAILABLE", "/_admin/issued", "lambda_refill.handler"):
        assert needed in text, needed


def test_every_setting_the_runbook_names_exists():
    fields = {f"TOKENPOOL_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"TOKENPOOL_[A-Z0-9_]+", RUNBOOK.read_text()))
    # `TOKENPOOL_REFILL_*` names a family of settings: some must start with it.
    unknown = {name for name in named if name not in fields and not any(f.startswith(name) for f in fields)}
    assert not unknown, f"not settings: {sorted(unknown)}"


def test_the_runbook_sql_reads_only_tables_the_migrations_create():
    sql = "\n".join(re.findall(r"```sql\n(.*?)```", RUNBOOK.read_text(), re.S))
    assert sql, "the runbook has no SQL block"
    tables = set(re.findall(r"CREATE TABLE (\w+)", "\n".join(p.read_text() for p in MIGRATIONS.glob("*.sql"))))
    read = set(re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+)", sql))
    assert read - tables - {"pg_stat_activity", "pg_stat_user_tables"} == set()
    assert {"token_pool", "refill_runs", "refill_leases", "refill_batches"} <= read
