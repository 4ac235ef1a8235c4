"""Reads deploy/aws/template.yaml as CloudFormation would see it, for the tests that check it.

``CloudFormationLoader`` reads the short-form intrinsics (``!Ref X``, ``!Sub "..."``) as their long form;
``expanded_resources`` expands ``Fn::ForEach`` (AWS::LanguageExtensions) over given parameter values the
way CloudFormation does: ``&{X}`` in a logical id becomes the value with every non-alphanumeric character
dropped, ``${X}`` in a ``Fn::Sub`` string and ``{"Ref": "X"}`` become the value.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy/aws/template.yaml"
FOR_EACH = "Fn::ForEach::"


class CloudFormationLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form intrinsics (``!Ref X``, ``!Sub "..."``) as their long form."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    key = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":  # !GetAtt A.B is [A, B] in the long form
            value = value.split(".", 1)
        return {key: value}
    if isinstance(node, yaml.SequenceNode):
        return {key: loader.construct_sequence(node, deep=True)}
    assert isinstance(node, yaml.MappingNode)
    return {key: loader.construct_mapping(node, deep=True)}


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


@cache
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)
    return loaded


def _substitute(value: Any, identifier: str, item: str) -> Any:
    if isinstance(value, dict):
        if value == {"Ref": identifier}:
            return item
        if "Fn::Sub" in value and len(value) == 1:
            sub = value["Fn::Sub"]
            if isinstance(sub, str):
                return {"Fn::Sub": sub.replace(f"${{{identifier}}}", item)}
            text, variables = sub
            return {"Fn::Sub": [text.replace(f"${{{identifier}}}", item), _substitute(variables, identifier, item)]}
        return {key: _substitute(inner, identifier, item) for key, inner in value.items()}
    if isinstance(value, list):
        return [_substitute(inner, identifier, item) for inner in value]
    return value


def expanded_resources(parameters: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """The template's resources with every ``Fn::ForEach`` expanded over ``parameters``' lists."""
    resources: dict[str, dict[str, Any]] = {}
    for key, value in template()["Resources"].items():
        if not key.startswith(FOR_EACH):
            resources[key] = value
            continue
        identifier, collection, body = value
        for item in parameters[collection["Ref"]]:
            for name, resource in body.items():
                logical_id = name.replace(f"&{{{identifier}}}", re.sub(r"[^A-Za-z0-9]", "", item))
                assert logical_id not in resources, f"{logical_id}: two programs collide"
                resources[logical_id] = _substitute(resource, identifier, item)
    return resources


def resources_of_type(resources: dict[str, dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {name: resource for name, resource in resources.items() if resource["Type"] == kind}


def sub_text(value: Any) -> str:
    """The text of a ``Fn::Sub`` (or a plain string), for checks that read it."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub if isinstance(sub, str) else str(sub[0])
    assert isinstance(value, str), value
    return value
