"""The data-plane API (DESIGN.md section 6): HTTP routes, authentication, audit, metrics.

:mod:`.server` starts it inside the loop of ``kms-operator run``; :mod:`.app` builds the aiohttp
application from its parts (one module per route group).
"""
