"""boto3 clients for the ECS target whose failures read as TargetErrors a user can act on.

Why a proxy around each client: AWS's AccessDenied messages usually name the missing IAM action
("... is not authorized to perform: ecs:RunTask ..."), but not always (EC2's UnauthorizedOperation may
only carry an encoded message, S3 may say just "Access Denied"). The proxy knows which service the failed
call went to, so the error can still name the action to grant.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from control_plane.targets.base import TargetError

_DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedAccess",
                 "AuthorizationError", "NotAuthorized"}
_ACTION_IN_MESSAGE = re.compile(r"not authorized to perform:? ([a-z0-9-]+:[A-Za-z0-9*]+)")
# Operations whose IAM action is named differently (the rest map one to one).
_ACTION_ALIASES = {"ListObjectsV2": "ListBucket", "HeadObject": "GetObject"}


def missing_action(text: str) -> str | None:
    """The IAM action an AWS authorization message names, if it names one."""
    found = _ACTION_IN_MESSAGE.search(text)
    return found.group(1) if found else None


def _is_denied(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "")
    return code in _DENIED_CODES or missing_action(message) is not None


def access_denied(error: ClientError, service: str) -> TargetError | None:
    """A TargetError naming the IAM action to grant, or None when the error is not a permission problem."""
    if not _is_denied(error):
        return None
    message = error.response.get("Error", {}).get("Message", "")
    operation = error.operation_name
    action = missing_action(message) or f"{service}:{_ACTION_ALIASES.get(operation, operation)}"
    return TargetError(f"missing AWS permission {action} (denied on {operation}): grant {action} to the "
                       f"identity that runs the control plane, then retry. AWS said: {message}")


class GuardedClient:
    """A boto3 client whose AccessDenied-type errors become TargetErrors naming the missing action.

    Other ClientErrors pass through unchanged: callers handle the expected ones (a stack that does not
    exist yet), and `aws_errors` turns the rest into TargetErrors at the target's public boundary.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._service = client.meta.service_model.signing_name

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return self._guard(attribute)

    def _guard(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except ClientError as error:
                denied = access_denied(error, self._service)
                if denied is not None:
                    raise denied from error
                raise
        return call


def make_client(service: str, region: str | None, endpoint_url: str | None,
                session: boto3.Session | None = None) -> GuardedClient:
    """A guarded client; `endpoint_url` points every service at one AWS-compatible endpoint (moto)."""
    session = session or boto3.Session(region_name=region)
    config = Config(retries={"mode": "adaptive", "max_attempts": 8})
    return GuardedClient(session.client(service, region_name=region, endpoint_url=endpoint_url, config=config))


@contextmanager
def aws_errors(doing: str) -> Iterator[None]:
    """Turn what boto3 raises while `doing` something into a TargetError that says how to fix it."""
    try:
        yield
    except NoCredentialsError as error:
        raise TargetError(f"no AWS credentials while {doing}: configure them (aws configure, AWS_PROFILE "
                          "or an instance role) and retry") from error
    except NoRegionError as error:
        raise TargetError(f"no AWS region while {doing}: set DeploymentSpec.region, EcsConfig.region or "
                          "AWS_DEFAULT_REGION") from error
    except ClientError as error:
        details = error.response.get("Error", {})
        raise TargetError(f"AWS rejected {error.operation_name} while {doing}: "
                          f"{details.get('Code')}: {details.get('Message')}") from error
    except BotoCoreError as error:
        raise TargetError(f"AWS call failed while {doing}: {error}; check network access to AWS "
                          "and retry") from error
