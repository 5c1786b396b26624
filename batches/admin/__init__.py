"""The operator console (found by admin autodiscovery): watch batches, find out why
lines failed, and act. Everything a worker wrote is read-only here; the actions
(``actions.py``) go through ``batches.operations``, so through the same lifecycle
code as the API, and need the ``change`` permission: view-only staff can look but
not act.

* ``batches``: ``BatchAdmin``; ``actions``: its actions; ``requests``: ``BatchRequestAdmin``;
* ``upstreams``: ``UpstreamStateAdmin``, the scheduler's limit, in-flight count and latency per upstream;
* ``webhooks``: endpoints and the delivery log; ``display``: shared HTML helpers;
* ``operations``: usage per owner (CSV export) and the dashboard;
* ``files``: files_app's file page with the batches that use each file.
"""

from . import batches, files, operations, requests, upstreams, webhooks  # noqa: F401  (each registers its models)
