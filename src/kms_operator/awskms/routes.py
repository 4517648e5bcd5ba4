"""``POST /`` with ``X-Amz-Target: TrentService.<Operation>``: the AWS operations by name.

An operation this KMS does not serve answers ``UnsupportedOperationException`` naming it; its
audit line and metrics count it as ``aws:Unsupported`` (the name is the caller's text, so it
never becomes a metric label). The lifecycle operations are served only by a front end given
the custom resources to write (:class:`.resources.Resources`); without them they are
unsupported too.
"""

from __future__ import annotations

from aiohttp import web

from kms_operator.serving import calls
from kms_operator.serving.app import FrontEnd
from kms_operator.serving.audit import bounded
from kms_operator.serving.calls import Call

from . import (
    alias_operations,
    crypto_operations,
    import_operations,
    key_operations,
    lifecycle_operations,
)
from .calls import AwsCall, Members, Operation
from .identifiers import Arns
from .resources import KeyObjects, LifecycleOperation, Patience, Resources
from .wire import AWS, TARGET_HEADER, TARGET_PREFIX, Fields, UnsupportedOperation

OPERATIONS: dict[str, Operation] = {
    **crypto_operations.OPERATIONS,
    **key_operations.OPERATIONS,
}
LIFECYCLE_OPERATIONS: dict[str, LifecycleOperation] = {
    **lifecycle_operations.OPERATIONS,
    **alias_operations.OPERATIONS,
    **import_operations.OPERATIONS,
}

PATIENCE = Patience()

ARNS = web.AppKey("kms_aws_arns", Arns)
#: The operations this front end serves, by name.
SERVED = web.AppKey("kms_aws_operations", dict[str, Operation])


def audit_name(operation: str) -> str:
    return f"aws:{operation}"


async def serve(request: web.Request) -> web.Response:
    target = request.headers.get(TARGET_HEADER, "")
    name = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else None
    operation = request.app[SERVED].get(name) if name is not None else None
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


def _bound(operation: LifecycleOperation, objects: KeyObjects) -> Operation:
    async def bound(aws: AwsCall) -> Members:
        return await operation(aws, objects)

    return bound


def served(resources: Resources | None, patience: Patience) -> dict[str, Operation]:
    """Every operation, the lifecycle ones only with ``resources`` to write through."""
    if resources is None:
        return dict(OPERATIONS)
    objects = KeyObjects(resources, patience)
    lifecycle = {name: _bound(op, objects) for name, op in LIFECYCLE_OPERATIONS.items()}
    return {**OPERATIONS, **lifecycle}


def front_end(
    arns: Arns, resources: Resources | None = None, *, patience: Patience = PATIENCE
) -> FrontEnd:
    """The AWS protocol as a front end of the listener, naming its keys in ``arns``' account;
    with ``resources``, the lifecycle operations too."""
    operations = served(resources, patience)

    def add_routes(app: web.Application) -> None:
        app[ARNS] = arns
        app[SERVED] = operations
        app.router.add_post("/", serve)

    return add_routes
