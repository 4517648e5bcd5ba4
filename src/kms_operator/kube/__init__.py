"""The one package that talks to the Kubernetes API server (besides Kopf's own watches).

Everything else asks it: the API for TokenReview and SubjectAccessReview
(:mod:`.reviews`), the operator for Secrets, ConfigMaps and custom resources
(:mod:`.objects`). Calls are synchronous ``kubernetes`` client calls; async callers run them
with :func:`asyncio.to_thread`.
"""
