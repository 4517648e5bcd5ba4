"""``POST /`` with ``X-Amz-Target: TrentService.<Operation>``: the AWS operations by name.

An operation this KMS does not serve answers ``UnsupportedOperationException`` naming it; its
audit line and metrics count it as ``aws:Unsupported`` (the name is the caller's text, so it
never becomes a metric label).
"""

from __future__ import annotations

from aiohttp import web

from kms_operator.serving import calls
from kms_operator.serving.app import FrontEnd
from kms_operator.serving.audit import bounded
from kms_operator.serving.calls import Call

from . import crypto_operations, key_operations
from .calls import AwsCall, Members, Operation
from .identifiers import Arns
from .wire import AWS, TARGET_HEADER, TARGET_PREFIX, Fields, UnsupportedOperation

OPERATIONS: dict[str, Operation] = {
    **crypto_operations.OPERATIONS,
    **key_operations.OPERATIONS,
}

ARNS = web.AppKey("kms_aws_arns", Arns)


def audit_name(operation: str) -> str:
    return f"aws:{operation}"


async def serve(request: web.Request) -> web.Response:
    target = request.headers.get(TARGET_HEADER, "")
    name = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else None
    operation = OPERATIONS.get(name) if name is not None else None
    arns = request.app[ARNS]

    async def work(call: Call) -> Members:
        if operation is None:
            if name is None:
                raise UnsupportedOperation(
                    f"{TARGET_HEADER} {bounded(target)!r} is not a TrentService operation"
                )
            raise UnsupportedOperation(f"operation {bounded(name)!r} is not supported here")
        await call.authenticate()
        return await operation(AwsCall(call, Fields.parse(await call.body()), arns))

    operation_name = audit_name(name if operation is not None and name else "Unsupported")
    return await calls.run(request, operation_name, work, AWS)


def front_end(arns: Arns) -> FrontEnd:
    """The AWS protocol as a front end of the listener, naming its keys in ``arns``' account."""

    def add_routes(app: web.Application) -> None:
        app[ARNS] = arns
        app.router.add_post("/", serve)

    return add_routes
