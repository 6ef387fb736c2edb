"""Evaluates the CloudFormation intrinsic functions a task definition uses, with given parameter values.

Why: the container tests start the ECS task's containers exactly as the template defines them, so they
must read the template's own values (images, commands, environment) rather than a copy of them.
Resources referenced with Ref/GetAtt resolve to readable placeholders ("<Cluster>"), or to `resources`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PSEUDO = {"AWS::Region": "us-east-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws",
          "AWS::StackName": "triton-fleet", "AWS::URLSuffix": "amazonaws.com"}
NO_VALUE = object()


@dataclass
class Context:
    template: dict[str, Any]
    parameters: dict[str, Any]
    resources: dict[str, Any] = field(default_factory=dict)

    def parameter(self, name: str) -> Any:
        if name in self.parameters:
            return self.parameters[name]
        if name in PSEUDO:
            return PSEUDO[name]
        declared = self.template.get("Parameters", {}).get(name)
        if declared is not None:
            if "Default" not in declared:
                raise KeyError(f"parameter {name} has no default: pass a value")
            return declared["Default"]
        if name == "AWS::NoValue":
            return NO_VALUE
        return self.resources.get(name, f"<{name}>")

    def condition(self, name: str) -> bool:
        return bool(resolve(self.template["Conditions"][name], self))


def _sub(text: str, variables: dict[str, Any], ctx: Context) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name in variables:
            return str(resolve(variables[name], ctx))
        if "." in name:
            resource, _, attribute = name.partition(".")
            return str(ctx.resources.get(name, f"<{resource}.{attribute}>"))
        return str(ctx.parameter(name))

    return re.sub(r"\$\{([^}]+)\}", replace, text)


def resolve(value: Any, ctx: Context) -> Any:
    """The value with every intrinsic function evaluated; AWS::NoValue entries dropped."""
    if isinstance(value, list):
        return [v for v in (resolve(item, ctx) for item in value) if v is not NO_VALUE]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (key, arg), = value.items()
        if key == "Ref":
            return ctx.parameter(arg)
        if key == "Fn::Sub":
            text, variables = (arg[0], arg[1]) if isinstance(arg, list) else (arg, {})
            return _sub(text, variables, ctx)
        if key == "Fn::If":
            name, yes, no = arg
            return resolve(yes if ctx.condition(name) else no, ctx)
        if key == "Fn::Equals":
            a, b = (resolve(x, ctx) for x in arg)
            return str(a) == str(b)
        if key == "Fn::Not":
            return not resolve(arg[0], ctx)
        if key == "Fn::And":
            return all(resolve(x, ctx) for x in arg)
        if key == "Fn::Or":
            return any(resolve(x, ctx) for x in arg)
        if key == "Condition":
            return ctx.condition(arg)
        if key == "Fn::FindInMap":
            mapping, top, second = (resolve(x, ctx) for x in arg)
            return ctx.template["Mappings"][mapping][top][second]
        if key == "Fn::GetAtt":
            resource, attribute = arg
            return ctx.resources.get(f"{resource}.{attribute}", f"<{resource}.{attribute}>")
        if key == "Fn::Join":
            separator, items = arg
            return separator.join(str(x) for x in resolve(items, ctx))
        if key == "Fn::Select":
            index, items = arg
            return resolve(items, ctx)[int(resolve(index, ctx))]
        if key == "Fn::Split":
            separator, text = arg
            return str(resolve(text, ctx)).split(separator)
    out = {}
    for key, item in value.items():
        resolved = resolve(item, ctx)
        if resolved is not NO_VALUE:
            out[key] = resolved
    return out
