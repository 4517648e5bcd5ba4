"""The key lifecycle: framework-free domain logic over the store and the crypto primitives.

:class:`~kms_operator.keys.service.KeyService` has one method per verb of DESIGN.md section 2.
Kopf handlers, the HTTP API and the CLI translate to and from it; none of them decides.
"""
