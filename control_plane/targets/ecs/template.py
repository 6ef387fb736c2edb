"""Loads the ECS fleet's CloudFormation template and turns it into the body CloudFormation receives.

Why not send the YAML as written: `TemplateBody` is capped at 51,200 bytes and the commented YAML is
close to that, while the same template as compact JSON is far below it. Converting needs a YAML loader
that understands CloudFormation's short-form tags (`!Ref`, `!Sub`, `!GetAtt`, ...), which PyYAML's safe
loader rejects; this module maps them to their long form (`{"Ref": ...}`, `{"Fn::Sub": ...}`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fleet.resources import project_path

TEMPLATE_BODY_LIMIT = 51_200  # bytes CloudFormation accepts in TemplateBody
DEFAULT_TEMPLATE = project_path("ecs/templates/adfilter-fleet.yaml")  # checkout or wheel (fleet/resources.py)


class _CfnLoader(yaml.SafeLoader):
    """A safe loader that also reads CloudFormation's short-form intrinsic function tags."""


def _long_form(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _long_form)


def load_template(path: Path = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """The template as plain data, intrinsic functions in long form."""
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # a SafeLoader subclass: no arbitrary objects


def template_body(path: Path = DEFAULT_TEMPLATE) -> str:
    """Compact JSON for `TemplateBody`; raises ValueError if even that exceeds CloudFormation's limit."""
    body = json.dumps(load_template(path), separators=(",", ":"))
    size = len(body.encode())
    if size > TEMPLATE_BODY_LIMIT:
        raise ValueError(f"{path} is {size} bytes as compact JSON, over CloudFormation's "
                         f"{TEMPLATE_BODY_LIMIT}-byte TemplateBody limit: split it into nested stacks")
    return body
