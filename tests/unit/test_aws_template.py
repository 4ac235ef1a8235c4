"""deploy/aws/template.yaml grants only what each process uses, and wires what the code expects.

cfn-lint and `sam validate` (in .ci/run) check the template against CloudFormation's schemas; these tests
check it against tokenpool: the IAM actions each role holds are exactly the calls its process makes, every
TOKENPOOL_* variable is a setting, the commands and probes exist, each program gets a schedule and its
alarms, and the dashboard reads only metrics that some runtime emits.
"""

from __future__ import annotations

import json
import re
import uuid
from functools import cache
from typing import Any

import pytest

from tests.cloudformation import expanded_resources, resources_of_type, sub_text, template
from tokenpool.aws.emf_reporter import SERVICE_FIGURES, WORKER_FIGURES, quantile_name
from tokenpool.entrypoints.cli import app as cli_app
from tokenpool.observability import metrics as metrics_module
from tokenpool.pool.model import PairStatus
from tokenpool.refill.model import Outcome, RefillPlan, RefillResult
from tokenpool.refill.reporting import emf_documents
from tokenpool.settings import Settings

PROGRAMS = ["default", "gold-card", "silver_2"]

# Role -> the exact IAM actions it holds, and why each is there:
#   the Lambda: ENIs in the VPC (what AWSLambdaVPCAccessExecutionRole grants, less log group creation), its
#   log streams, the database URL secret (read at a cold start), kms:Decrypt of the vault's wrapped keys
#   (vault/aws_kms.py unwrap; a refill never generates a key), sns:Publish of health alerts;
#   ECS' execution roles: pull the image, write the log streams, read the secret ECS injects;
#   the API: kms:Decrypt; the worker: kms:Decrypt and sns:Publish; db upgrade: kms:GenerateDataKey (the
#   vault's first keys, `keys rotate`) and kms:Decrypt; the scheduler: invoke the function.
EXPECTED_ACTIONS = {
    "RefillFunctionRole": {
        "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
        "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
        "logs:CreateLogStream", "logs:PutLogEvents", "secretsmanager:GetSecretValue", "kms:Decrypt", "sns:Publish",
    },
    "RefillSchedulerRole": {"lambda:InvokeFunction"},
    "TaskExecutionRole": {
        "ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer",
        "ecr:BatchGetImage", "logs:CreateLogStream", "logs:PutLogEvents", "secretsmanager:GetSecretValue",
    },
    "ApiTaskRole": {"kms:Decrypt"},
    "WorkerTaskRole": {"kms:Decrypt", "sns:Publish"},
    "MigrateExecutionRole": {
        "ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer",
        "ecr:BatchGetImage", "logs:CreateLogStream", "logs:PutLogEvents", "secretsmanager:GetSecretValue",
    },
    "MigrateTaskRole": {"kms:Decrypt", "kms:GenerateDataKey"},
}

# Actions that may name "*": the ENI calls (Lambda's own advice) and the ECR token (it has no resource);
# the image layers may come from any repository the account reads.
UNSCOPED = {"ec2:", "ecr:"}
SCOPED_RESOURCE = {
    "secretsmanager:GetSecretValue": [{"Ref": "DatabaseUrlSecretArn"}, {"Ref": "DatabaseAdminUrlSecretArn"}],
    "kms:Decrypt": [{"Ref": "VaultKmsKeyArn"}],
    "kms:GenerateDataKey": [{"Ref": "VaultKmsKeyArn"}],
    "sns:Publish": [{"Ref": "AlertsTopic"}],
}


@cache
def resources() -> dict[str, dict[str, Any]]:
    return expanded_resources({"Programs": PROGRAMS})


def properties(name: str) -> dict[str, Any]:
    props: dict[str, Any] = resources()[name]["Properties"]
    return props


def statements(role: str) -> list[dict[str, Any]]:
    return [statement for policy in properties(role).get("Policies", [])
            for statement in policy["PolicyDocument"]["Statement"]]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def containers() -> dict[str, dict[str, Any]]:
    return {container["Name"]: container
            for definition in resources_of_type(resources(), "AWS::ECS::TaskDefinition").values()
            for container in definition["Properties"]["ContainerDefinitions"]}


# --- IAM -----------------------------------------------------------------------------------------------

def test_every_role_is_listed_with_its_expected_actions():
    assert set(resources_of_type(resources(), "AWS::IAM::Role")) == set(EXPECTED_ACTIONS)


@pytest.mark.parametrize("role", sorted(EXPECTED_ACTIONS))
def test_each_role_holds_exactly_the_actions_its_process_uses(role):
    actions = [action for statement in statements(role) for action in _as_list(statement["Action"])]
    assert len(actions) == len(set(actions)), f"{role}: an action granted twice"
    assert set(actions) == EXPECTED_ACTIONS[role]
    assert not properties(role).get("ManagedPolicyArns"), f"{role}: a managed policy grants more than listed"
    for statement in statements(role):
        assert statement["Effect"] == "Allow"
        assert "*" not in json.dumps(statement["Action"]), f"{role}: a wildcard action"


@pytest.mark.parametrize("role", sorted(EXPECTED_ACTIONS))
def test_secrets_keys_and_topics_are_granted_on_the_one_resource_each(role):
    for statement in statements(role):
        for action in _as_list(statement["Action"]):
            targets = _as_list(statement["Resource"])
            if action in SCOPED_RESOURCE:
                assert len(targets) == 1, (role, action, targets)
                assert targets[0] in SCOPED_RESOURCE[action], (role, action, targets)
            elif not any(action.startswith(prefix) for prefix in UNSCOPED):
                assert "*" not in targets, f"{role}: {action} on every resource"


def test_the_api_never_reads_the_owner_url_and_only_db_upgrade_generates_keys():
    for role in ("TaskExecutionRole", "RefillFunctionRole", "ApiTaskRole", "WorkerTaskRole"):
        assert "DatabaseAdminUrlSecretArn" not in json.dumps(statements(role)), role
    generating = {role for role in EXPECTED_ACTIONS if "kms:GenerateDataKey" in json.dumps(statements(role))}
    assert generating == {"MigrateTaskRole"}


def test_services_assume_their_roles_only_for_this_account():
    for role, principal in (("RefillSchedulerRole", "scheduler.amazonaws.com"),
                            ("TaskExecutionRole", "ecs-tasks.amazonaws.com"),
                            ("ApiTaskRole", "ecs-tasks.amazonaws.com"), ("WorkerTaskRole", "ecs-tasks.amazonaws.com")):
        (trust,) = properties(role)["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": principal}
        assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


# --- The Lambda and its schedules ----------------------------------------------------------------------

def test_the_template_is_sam_with_language_extensions_first():
    assert template()["Transform"] == ["AWS::LanguageExtensions", "AWS::Serverless-2016-10-31"]


def test_the_refill_function_runs_the_handler_from_the_packaged_zip():
    function = properties("RefillFunction")
    assert resources()["RefillFunction"]["Type"] == "AWS::Serverless::Function"
    assert function["Handler"] == "tokenpool.entrypoints.lambda_refill.handler"
    assert function["Runtime"] == "python3.12"
    assert function["CodeUri"] == "../../build/lambda.zip"  # relative to deploy/aws/
    assert function["Role"] == {"Fn::GetAtt": ["RefillFunctionRole", "Arn"]}
    assert function["VpcConfig"] == {"SubnetIds": {"Ref": "SubnetIds"},
                                     "SecurityGroupIds": {"Ref": "AppSecurityGroupIds"}}
    environment = function["Environment"]["Variables"]
    # The URL is read from the secret at a cold start: never in the function's configuration.
    assert environment["TOKENPOOL_DATABASE_URL_SECRET_ARN"] == {"Ref": "DatabaseUrlSecretArn"}
    assert "TOKENPOOL_DATABASE_URL" not in environment
    assert "resolve:secretsmanager" not in json.dumps(template())
    assert environment["TOKENPOOL_VAULT_KEY_PROVIDER"] == "aws-kms"
    assert environment["TOKENPOOL_VAULT_KMS_KEY_ID"] == {"Ref": "VaultKmsKeyArn"}
    assert environment["TOKENPOOL_ALERT_SNS_TOPIC_ARN"] == {"Ref": "AlertsTopic"}


def test_each_program_gets_its_own_schedule_naming_it():
    schedules = resources_of_type(resources(), "AWS::Scheduler::Schedule")
    assert len(schedules) == len(PROGRAMS)
    inputs = []
    for schedule in schedules.values():
        target = schedule["Properties"]["Target"]
        assert target["Arn"] == {"Fn::GetAtt": ["RefillFunction", "Arn"]}
        assert target["RoleArn"] == {"Fn::GetAtt": ["RefillSchedulerRole", "Arn"]}
        inputs.append(json.loads(sub_text(target["Input"])))
    assert sorted(item["pool"] for item in inputs) == sorted(PROGRAMS)
    mapping = template()["Mappings"]["RefillSchedule"]
    assert mapping[template()["Parameters"]["RefillPeriodSeconds"]["Default"]]["Expression"] == "rate(1 hour)"
    assert set(mapping) == set(template()["Parameters"]["RefillPeriodSeconds"]["AllowedValues"])


def test_each_program_gets_its_alarms():
    alarm_names = [sub_text(alarm["Properties"]["AlarmName"])
                   for alarm in resources_of_type(resources(), "AWS::CloudWatch::Alarm").values()]
    for program in PROGRAMS:
        for kind in ("pool-available-low", "pool-drained-before-refill", "pool-critical", "refill-failed",
                     "refill-not-run", "refill-stopped"):
            assert f"${{AWS::StackName}}-{program}-{kind}" in alarm_names
    for kind in ("refill-lambda-errors", "api-no-healthy-targets", "api-5xx-rate"):
        assert f"${{AWS::StackName}}-{kind}" in alarm_names


# --- ECS, the load balancer and the network ------------------------------------------------------------

def _command(container: dict[str, Any]) -> list[str]:
    return [*container["EntryPoint"], *container["Command"]]


def cli_commands() -> set[str]:
    import typer.main

    group: Any = typer.main.get_command(cli_app)
    names = set(group.commands)
    names |= {f"{name} {sub}" for name, command in group.commands.items() for sub in getattr(command, "commands", {})}
    return names


def test_the_tasks_run_the_api_the_worker_and_db_upgrade():
    found = containers()
    assert _command(found["api"]) == ["tokenpool", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert _command(found["worker"]) == ["tokenpool", "worker"]
    assert _command(found["migrate"]) == ["tokenpool", "db", "upgrade"]
    for container in found.values():
        assert " ".join(container["Command"][:2]) in cli_commands() or container["Command"][0] in cli_commands()
        assert container["Image"] == {"Ref": "ContainerImage"}
        assert container["LinuxParameters"]["InitProcessEnabled"] is True  # SIGTERM reaches Python
        assert container["LogConfiguration"]["LogDriver"] == "awslogs"
        assert container["ReadonlyRootFilesystem"] is True


def test_the_tasks_get_the_database_url_from_secrets_manager_only():
    found = containers()
    for name in ("api", "worker"):
        assert found[name]["Secrets"] == [
            {"Name": "TOKENPOOL_DATABASE_URL", "ValueFrom": {"Ref": "DatabaseUrlSecretArn"}}]
    assert found["migrate"]["Secrets"] == [
        {"Name": "TOKENPOOL_DATABASE_ADMIN_URL", "ValueFrom": {"Ref": "DatabaseAdminUrlSecretArn"}}]
    for container in found.values():
        assert not {item["Name"] for item in container["Environment"]} & {"TOKENPOOL_DATABASE_URL",
                                                                           "TOKENPOOL_DATABASE_ADMIN_URL"}


def test_every_tokenpool_variable_in_the_template_is_a_setting():
    fields = {f"TOKENPOOL_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"TOKENPOOL_[A-Z0-9_]+", json.dumps(resources())))
    assert named, "no TOKENPOOL_ variable found"
    assert named <= fields, f"not settings: {sorted(named - fields)}"


def test_the_api_and_worker_report_emf_every_interval():
    for name in ("api", "worker"):
        environment = {item["Name"]: item["Value"] for item in containers()[name]["Environment"]}
        assert environment["TOKENPOOL_EMF_INTERVAL_S"] == {"Ref": "EmfIntervalSeconds"}
        assert environment["TOKENPOOL_EMF_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    worker = {item["Name"]: item["Value"] for item in containers()["worker"]["Environment"]}
    joined = worker["TOKENPOOL_WORKER_POOLS"]["Fn::Sub"]
    # '["a","b"]' once CloudFormation joins the programs: the JSON list TOKENPOOL_WORKER_POOLS expects.
    assert joined[0] == '["${Joined}"]'
    assert joined[1]["Joined"] == {"Fn::Join": ['","', {"Ref": "Programs"}]}
    assert Settings(worker_pools=json.loads('["default","gold-card"]')).worker_pools == ["default", "gold-card"]


def test_the_load_balancer_speaks_https_only_and_checks_readiness():
    listeners = resources_of_type(resources(), "AWS::ElasticLoadBalancingV2::Listener")
    assert [listener["Properties"]["Protocol"] for listener in listeners.values()] == ["HTTPS"]
    listener = next(iter(listeners.values()))["Properties"]
    assert listener["Port"] == 443
    assert listener["SslPolicy"].startswith("ELBSecurityPolicy-TLS13-1-2")
    group = properties("ApiTargetGroup")
    assert (group["HealthCheckPath"], group["Port"], group["TargetType"]) == ("/readyz", 8000, "ip")
    attributes = {item["Key"]: item["Value"] for item in properties("LoadBalancer")["LoadBalancerAttributes"]}
    # The balancer closes idle connections before the service does (service_keep_alive_s).
    assert int(attributes["idle_timeout.timeout_seconds"]) < Settings().service_keep_alive_s


def test_only_the_load_balancer_reaches_the_api_tasks():
    (ingress,) = resources_of_type(resources(), "AWS::EC2::SecurityGroupIngress").values()
    assert ingress["Properties"]["GroupId"] == {"Ref": "ApiTaskSecurityGroup"}
    assert ingress["Properties"]["SourceSecurityGroupId"] == {"Ref": "LoadBalancerSecurityGroup"}
    assert (ingress["Properties"]["FromPort"], ingress["Properties"]["ToPort"]) == (8000, 8000)
    assert "SecurityGroupIngress" not in properties("ApiTaskSecurityGroup")
    (client_rule,) = properties("LoadBalancerSecurityGroup")["SecurityGroupIngress"]
    assert (client_rule["FromPort"], client_rule["CidrIp"]) == (443, {"Ref": "ClientCidr"})
    (egress,) = properties("LoadBalancerSecurityGroup")["SecurityGroupEgress"]
    assert egress["DestinationSecurityGroupId"] == {"Ref": "ApiTaskSecurityGroup"}
    for service in ("ApiService", "WorkerService"):
        network = properties(service)["NetworkConfiguration"]["AwsvpcConfiguration"]
        assert network["AssignPublicIp"] == "DISABLED"
    assert properties("WorkerService")["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"] == {
        "Ref": "AppSecurityGroupIds"}
    assert "LoadBalancers" not in properties("WorkerService")


# --- The dashboard -------------------------------------------------------------------------------------

def _labelnames() -> dict[str, frozenset[str]]:
    from prometheus_client.metrics import MetricWrapperBase

    return {metric._name: frozenset(metric._labelnames) for metric in vars(metrics_module).values()
            if isinstance(metric, MetricWrapperBase)}


def _types() -> dict[str, str]:
    from prometheus_client.metrics import MetricWrapperBase

    return {metric._name: metric._type for metric in vars(metrics_module).values()
            if isinstance(metric, MetricWrapperBase)}


@cache
def emitted_metrics() -> dict[str, set[frozenset[str]]]:
    """Every EMF metric name some runtime publishes -> its dimension sets: the Lambda's documents, and the
    API's and the worker's figures (histograms as _count, _sum and their percentiles)."""
    plan = RefillPlan(available=1, configured_target=2, forecast=0, consumption_per_hour=None, count=1, target=2)
    result = RefillResult(run_id=uuid.uuid4(), pool="p", outcome=Outcome.SUCCEEDED, plan=plan)
    emitted: dict[str, set[frozenset[str]]] = {}
    for document in emf_documents(result, {status.value.lower(): 1 for status in PairStatus}):
        for metric in document.metrics:
            emitted.setdefault(metric.name, set()).add(frozenset(document.dimensions))
    for figure in (*SERVICE_FIGURES, *WORKER_FIGURES):
        labels = _labelnames()[figure.family]
        names = [figure.family]
        if _types()[figure.family] == "histogram":
            names = [f"{figure.family}_count", f"{figure.family}_sum",
                     *(quantile_name(figure.family, q) for q in figure.quantiles)]
        for name in names:
            emitted.setdefault(name, set()).add(labels)
    return emitted


def dashboard_rows() -> list[list[Any]]:
    body = properties("Dashboard")["DashboardBody"]["Fn::ToJsonString"]
    return [row for widget in body["widgets"] for row in widget.get("properties", {}).get("metrics", [])]


def dashboard_metrics() -> list[tuple[str, frozenset[str]]]:
    """(metric name, dimension names) of every metric the dashboard reads from the tokenpool namespace."""
    found = []
    for row in dashboard_rows():
        first = row[0]
        if isinstance(first, dict) and "expression" in first:
            text = sub_text(first["expression"])
            for keys, name in re.findall(r"\{\$\{MetricsNamespace\},([^}]*)\} MetricName=\"(\w+)", text):
                found.append((name, frozenset(keys.split(","))))
        elif first == {"Ref": "MetricsNamespace"}:
            labels = [item for item in row[2:] if isinstance(item, str)]
            found.append((row[1], frozenset(labels[0::2])))
    return found


def test_every_dashboard_metric_is_emitted_with_exactly_its_dimensions():
    used = dashboard_metrics()
    assert len(used) >= 10
    for name, dimensions in used:
        assert name in emitted_metrics(), f"no runtime emits {name}"
        assert dimensions in emitted_metrics()[name], f"{name} is emitted with {emitted_metrics()[name]}"


def test_the_dashboard_shows_card_rate_source_latency_pool_level_and_tome_calls_avoided():
    used = {name for name, _ in dashboard_metrics()}
    assert {"tokenpool_cards_created", "tokenpool_pool_pairs", "tokenpool_tome_calls_avoided",
            "tokenpool_tome_requests", "tokenpool_refill_runs", "tokenpool_refill_pairs_added",
            "tokenpool_pool_health", "tokenpool_http_request_duration_seconds_p99",
            "tokenpool_http_request_duration_seconds_p50", "tokenpool_http_request_duration_seconds_count",
            "tokenpool_http_request_duration_seconds_sum"} <= used
    expressions = " ".join(sub_text(row[0]["expression"]) for row in dashboard_rows() if "expression" in row[0])
    assert 'token_source="pool"' in expressions
    assert 'token_source="tome"' in expressions
