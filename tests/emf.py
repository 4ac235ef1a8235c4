"""Checks a line is a valid CloudWatch Embedded Metric Format document.

A JSON Schema of the specification's ``_aws`` envelope
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html)
plus the two rules a schema cannot state: every dimension and every metric named in the directive is a
member of the root object (dimensions strings, metrics numbers).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

CLOUDWATCH_UNITS = [
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
    "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
    "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
    "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
]

# The "_aws" envelope of the EMF specification.
EMF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"type": "integer", "minimum": 0},
                "CloudWatchMetrics": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["Namespace", "Dimensions", "Metrics"],
                        "properties": {
                            "Namespace": {"type": "string", "minLength": 1, "maxLength": 1024},
                            "Dimensions": {
                                "type": "array",
                                "items": {
                                    "type": "array",
                                    "items": {"type": "string", "minLength": 1, "maxLength": 250},
                                    "maxItems": 30,
                                },
                            },
                            "Metrics": {
                                "type": "array",
                                "maxItems": 100,
                                "items": {
                                    "type": "object",
                                    "required": ["Name"],
                                    "properties": {
                                        "Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                                        "Unit": {"enum": CLOUDWATCH_UNITS},
                                        "StorageResolution": {"enum": [1, 60]},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def validate_emf(document: dict[str, Any]) -> None:
    jsonschema.validate(document, EMF_SCHEMA)
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for name in dimension_set:
                assert isinstance(document.get(name), str), f"dimension {name} is not a string member"
                assert document[name], f"dimension {name} is empty (CloudWatch refuses it)"
        for metric in directive["Metrics"]:
            value = document.get(metric["Name"])
            values = value if isinstance(value, list) else [value]
            assert values, f"metric {metric['Name']} is not a root member"
            assert all(isinstance(v, int | float) for v in values), f"metric {metric['Name']} is not a number"


def emf_lines(stdout: str) -> list[dict[str, Any]]:
    """The EMF documents among the lines of ``stdout`` (other output is left out)."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{") and '"_aws"' in line]


def metric_values(documents: list[dict[str, Any]], name: str, **dimensions: str) -> list[float]:
    """Every value of metric ``name`` in documents whose dimension set is exactly ``dimensions``."""
    found = []
    for document in documents:
        for directive in document["_aws"]["CloudWatchMetrics"]:
            if [set(names) for names in directive["Dimensions"]] != [set(dimensions)]:
                continue
            if any(document.get(key) != value for key, value in dimensions.items()):
                continue
            if any(metric["Name"] == name for metric in directive["Metrics"]):
                found.append(document[name])
    return found
