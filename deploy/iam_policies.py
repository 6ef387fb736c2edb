"""The shipped IAM policies as each role holds them, and what AWS would require of each S3 request.

Used by the IAM rehearsal (`deploy/policed_s3.py`, `tests/k8s/test_iam_roles.py`, `tests/ecs/test_iam_roles.py`):
the roles' real code paths run against an S3 server (moto) that enforces the *shipped* policies, and every
request they send is also checked here the way AWS evaluates it.

Why both: moto 5.2 authorises S3 by the API operation's name (`s3:HeadObject`, `s3:ListObjectsV2`,
`s3:CopyObject`, `s3:CreateMultipartUpload`, ...), where AWS checks the IAM action (`s3:GetObject`,
`s3:ListBucket`, `s3:PutObject`), and it denies every request a statement with an `s3:prefix` condition
names (it evaluates conditions against an empty request context). So the copy moto enforces
(`moto_policy`) lists moto's names beside AWS's and has no conditions; what that copy cannot show is
checked on the request log instead (`requirements` + `allowed`): listed prefixes against the
`s3:prefix` condition, a copy's source against `s3:GetObject`, and AWS's rule that a missing key reads as
404 only for a caller that may list it (otherwise 403). The shipped files are never changed for moto.
"""
from __future__ import annotations

import copy
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

ROOT = Path(__file__).resolve().parents[1]
K8S_IAM = ROOT / "k8s" / "iam"
Policy = dict[str, Any]

# AWS action -> the operation names moto 5.2 authorises the same requests by (NOTES: "S3-compatible
# servers that run here"). Only the test harness's copy of a policy carries these.
MOTO_ALIASES: dict[str, tuple[str, ...]] = {
    "s3:GetObject": ("s3:HeadObject",),
    "s3:PutObject": ("s3:CopyObject", "s3:CreateMultipartUpload", "s3:UploadPart", "s3:UploadPartCopy",
                     "s3:CompleteMultipartUpload"),
    "s3:ListBucket": ("s3:ListObjectsV2", "s3:ListObjects", "s3:HeadBucket"),
    "s3:AbortMultipartUpload": (),
    "s3:DeleteObject": (),
}


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


# ---- the policies as shipped --------------------------------------------------------------------
def k8s_policy(name: str, bucket: str, prefix: str) -> Policy:
    """k8s/iam/<name> with its placeholders replaced, as docs/eks.md step 5 renders it with sed."""
    text = (K8S_IAM / name).read_text()
    return json.loads(text.replace("REPOSITORY_BUCKET", bucket).replace("REPOSITORY_PREFIX", prefix))


def ecs_role_policy(role: str, parameters: dict[str, Any]) -> Policy:
    """Every statement the ECS template grants role `role` (its inline policies and the AWS::IAM::Policy
    resources attached to it whose condition holds), evaluated with the stack's parameters."""
    from control_plane.targets.ecs.template import load_template
    from deploy.cfn import Context, resolve

    template = load_template()
    resources = template["Resources"]
    # Log groups' ARNs as CloudFormation would return them (the metrics sidecar's grant names one).
    arns = {f"{name}.Arn": f"arn:aws:logs:us-east-1:123456789012:log-group:{name}:*"
            for name, resource in resources.items() if resource["Type"] == "AWS::Logs::LogGroup"}
    ctx = Context(template, parameters, resources=arns)
    statements: list[dict] = []
    for inline in resolve(resources[role]["Properties"].get("Policies", []), ctx):
        statements += _as_list(inline["PolicyDocument"]["Statement"])
    for resource in resources.values():
        if resource["Type"] != "AWS::IAM::Policy" or {"Ref": role} not in resource["Properties"]["Roles"]:
            continue
        if "Condition" in resource and not ctx.condition(resource["Condition"]):
            continue
        statements += _as_list(resolve(resource["Properties"]["PolicyDocument"], ctx)["Statement"])
    return {"Version": "2012-10-17", "Statement": statements}


def actions_of(policy: Policy) -> list[tuple[int, str]]:
    """(statement index, action) for every S3 action an Allow statement grants: what a one-word edit removes."""
    return [(k, action) for k, statement in enumerate(policy["Statement"]) if statement["Effect"] == "Allow"
            for action in _as_list(statement["Action"]) if action.startswith("s3:")]


def without(policy: Policy, statement: int, action: str) -> Policy:
    """The policy with one action removed from one statement (the statement goes when it is left empty)."""
    changed = copy.deepcopy(policy)
    kept = [a for a in _as_list(changed["Statement"][statement]["Action"]) if a != action]
    if kept:
        changed["Statement"][statement]["Action"] = kept
    else:
        del changed["Statement"][statement]
    return changed


def moto_policy(policy: Policy) -> Policy:
    """The copy moto enforces: moto's operation names beside each AWS action, no conditions."""
    enforced = copy.deepcopy(policy)
    for statement in enforced["Statement"]:
        actions = _as_list(statement["Action"])
        statement["Action"] = sorted({*actions, *(alias for a in actions for alias in MOTO_ALIASES.get(a, ()))})
        statement.pop("Condition", None)
    return enforced


# ---- AWS's evaluation ---------------------------------------------------------------------------
def allowed(policy: Policy, action: str, resource: str, keys: dict[str, str]) -> bool:
    """IAM's answer for one identity policy: an explicit Deny wins, else any matching Allow. Conditions:
    StringLike / StringEquals; a condition on a key the request lacks does not match (no ...IfExists)."""
    allow = False
    for statement in policy["Statement"]:
        if "NotAction" in statement or "NotResource" in statement:
            raise ValueError("NotAction / NotResource are not modelled here")
        if not any(fnmatch.fnmatchcase(action, a) for a in _as_list(statement["Action"])):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in _as_list(statement["Resource"])):
            continue
        if not _conditions_hold(statement.get("Condition", {}), keys):
            continue
        if statement["Effect"] == "Deny":
            return False
        allow = True
    return allow


def _conditions_hold(conditions: dict[str, dict], keys: dict[str, str]) -> bool:
    for operator, tests in conditions.items():
        for key, values in tests.items():
            if key not in keys:
                return False
            if operator == "StringLike":
                ok = any(fnmatch.fnmatchcase(keys[key], v) for v in _as_list(values))
            elif operator == "StringEquals":
                ok = keys[key] in _as_list(values)
            else:
                raise ValueError(f"condition operator {operator} is not modelled here")
            if not ok:
                return False
    return True


# ---- what each request needs --------------------------------------------------------------------
@dataclass(frozen=True)
class S3Call:
    """One request as the server saw it (from its request log)."""

    method: str
    path: str  # /bucket/key, percent-encoded as sent
    query: str
    status: int
    access_key: str | None = None
    copy_source: str | None = None

    @property
    def bucket(self) -> str:
        return unquote(self.path.lstrip("/").split("/", 1)[0])

    @property
    def key(self) -> str | None:
        parts = self.path.lstrip("/").split("/", 1)
        return unquote(parts[1]) if len(parts) > 1 and parts[1] else None

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    @property
    def operation(self) -> str:
        """The S3 API operation of this request (the subset this project's code sends; else 'Unmodelled')."""
        q, key = self.params, self.key
        if key is None:
            if self.method == "HEAD":
                return "HeadBucket"
            if self.method == "GET" and q.get("list-type") == ["2"]:
                return "ListObjectsV2"
            if self.method == "GET" and not set(q) - {"prefix", "delimiter", "marker", "max-keys", "encoding-type"}:
                return "ListObjects"
            if self.method == "PUT" and not q:
                return "CreateBucket"
            if self.method == "POST" and "delete" in q:
                return "DeleteObjects"
            return f"Unmodelled({self.method} bucket ?{'&'.join(sorted(q))})"
        if self.method in ("GET", "HEAD") and not set(q) - {"partNumber", "response-content-type"}:
            return "GetObject" if self.method == "GET" else "HeadObject"
        if self.method == "PUT" and "partNumber" in q and "uploadId" in q:
            return "UploadPartCopy" if self.copy_source else "UploadPart"
        if self.method == "PUT" and not q:
            return "CopyObject" if self.copy_source else "PutObject"
        if self.method == "POST" and "uploads" in q:
            return "CreateMultipartUpload"
        if self.method == "POST" and "uploadId" in q:
            return "CompleteMultipartUpload"
        if self.method == "DELETE" and "uploadId" in q:
            return "AbortMultipartUpload"
        if self.method == "DELETE" and not q:
            return "DeleteObject"
        return f"Unmodelled({self.method} object ?{'&'.join(sorted(q))})"

    def __str__(self) -> str:
        where = f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"
        extra = f"?{self.query}" if self.query and self.key is None else ""
        return f"{self.operation} {where}{extra} (HTTP {self.status})"


@dataclass(frozen=True)
class Need:
    action: str
    resource: str
    keys: dict[str, str] = field(default_factory=dict)
    why: str = ""

    def __str__(self) -> str:
        context = "".join(f" with {k}={v!r}" for k, v in self.keys.items())
        return f"{self.action} on {self.resource}{context}" + (f" ({self.why})" if self.why else "")


def requirements(call: S3Call) -> list[Need]:
    """What AWS checks for this request (AWS's "Actions, resources and condition keys for Amazon S3")."""
    bucket_arn = f"arn:aws:s3:::{call.bucket}"
    object_arn = f"{bucket_arn}/{call.key}"
    operation = call.operation
    if operation in ("GetObject", "HeadObject"):
        needs = [Need("s3:GetObject", object_arn)]
        if call.status == 404:
            needs.append(Need("s3:ListBucket", bucket_arn, {"s3:prefix": call.key or ""},
                              "S3 answers 404 for a missing key only to a caller that may list it, 403 otherwise"))
        return needs
    if operation in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        return [Need("s3:PutObject", object_arn)]
    if operation in ("CopyObject", "UploadPartCopy"):
        source = unquote(call.copy_source or "").lstrip("/").split("?", 1)[0]
        return [Need("s3:PutObject", object_arn), Need("s3:GetObject", f"arn:aws:s3:::{source}", {},
                                                       "a copy reads its source")]
    if operation == "AbortMultipartUpload":
        return [Need("s3:AbortMultipartUpload", object_arn)]
    if operation == "DeleteObject":
        return [Need("s3:DeleteObject", object_arn)]
    if operation in ("ListObjectsV2", "ListObjects"):
        prefix = call.params.get("prefix")
        return [Need("s3:ListBucket", bucket_arn, {"s3:prefix": prefix[0]} if prefix else {})]
    if operation == "HeadBucket":
        return [Need("s3:ListBucket", bucket_arn, {}, "HeadBucket carries no prefix")]
    if operation == "CreateBucket":
        return [Need("s3:CreateBucket", bucket_arn)]
    raise ValueError(f"{call}: this S3 operation is not modelled in deploy/iam_policies.py; add what AWS "
                     "requires for it")


def violations(policy: Policy, calls: list[S3Call]) -> list[str]:
    """Every request of `calls` that AWS would refuse under `policy`, or that the server refused, with why."""
    found = []
    for call in calls:
        if call.status == 403:
            found.append(f"{call}: refused by the S3 server's IAM enforcement")
        try:
            missing = [need for need in requirements(call) if not allowed(policy, need.action, need.resource,
                                                                             need.keys)]
        except ValueError as error:
            found.append(str(error))
            continue
        found += [f"{call}: needs {need}, which the policy does not grant" for need in missing]
    return found
