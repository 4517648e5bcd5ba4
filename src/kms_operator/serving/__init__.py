"""What every front end shares: the TLS identity it serves with and the audit trail it writes.

The data-plane API and the operator's webhook serve one identity (:mod:`.tls`: loaded once,
or one CA generated once); the API's calls and the operator's DataKey operations write one
audit trail (:mod:`.audit`). Below the front ends (:mod:`kms_operator.api`,
:mod:`kms_operator.operator`, and those to come), which do not import each other.
"""
