"""Settings of the batches app: its keys of ``settings.OPENAI_BATCHES``.

Read like files_app's (``files_app/conf.py``): lazily, on each access, with the
documented defaults below; ``batches/checks.py`` checks them.

    from batches.conf import app_settings
    app_settings.MAX_CONCURRENT_REQUESTS_PER_BATCH
"""

from files_app.conf import KNOWN_KEYS, AppSettings

DEFAULTS = {
    # --- Upstream (any OpenAI-compatible server: vLLM, Ollama, llama.cpp, OpenAI) ---
    # Base URL including /v1, e.g. "http://127.0.0.1:8080/v1". Required to run batches.
    "UPSTREAM_BASE_URL": None,
    # Sent as the bearer token upstream. Never logged, never returned.
    "UPSTREAM_API_KEY": "",
    # Seconds one upstream request may take before it counts as a (retryable) timeout.
    "UPSTREAM_TIMEOUT": 600.0,
    # Dotted path of the class that sends inference calls: plain aiohttp (default), or
    # "batches.upstream.OpenAIClient", the SDK's AsyncOpenAI at four times the CPU per call.
    "UPSTREAM_CLIENT_CLASS": "batches.upstream.AiohttpClient",
    # Embeddings lines sharing model and parameters go upstream together, up to this many
    # inputs per call (batches/bundling.py); 1 sends every line on its own.
    "EMBEDDINGS_BUNDLE_SIZE": 32,
    # Optional allow-list / routing table: {"model-id": {"base_url": ..., "api_key": ...}}
    # or a list of model ids. When None, the upstream's /v1/models decides. An entry's
    # "endpoints": {"/v1/embeddings": {"base_url": ...}} routes one endpoint elsewhere.
    "MODELS": None,
    # --- Concurrency (cluster-wide, enforced through the database; docs/scheduling.md) ---
    # Requests in flight to one upstream (one base URL), whatever the number of batches,
    # workers or hosts: the ceiling of the adaptive (AIMD) limit.
    "UPSTREAM_MAX_IN_FLIGHT": 64,
    # Where the adaptive limit of an upstream seen for the first time starts.
    "UPSTREAM_INITIAL_IN_FLIGHT": 8,
    # Requests in flight for one batch.
    "MAX_CONCURRENT_REQUESTS_PER_BATCH": 64,
    # django-q2 workers that dispatch requests at once, cluster-wide (each keeps calls in
    # flight for every running batch); keep it below the workers of a cluster so that
    # validation, finalization and webhooks always find a free one.
    "DISPATCHERS": 1,
    # Upstream rate limits shared by all workers on all hosts (batches/ratelimit.py):
    # {"model-id": {"rpm": N, "tpm": N}, "*": {...}}. A model's own entry wins; "*"
    # covers every other model, one budget per upstream base URL. Empty: unlimited.
    "RATE_LIMITS": {},
    # --- Retries ---
    # Attempts per request (first try included) for transient upstream failures.
    "MAX_ATTEMPTS": 5,
    "RETRY_BACKOFF_BASE": 1.0,  # seconds, doubled per attempt, with full jitter
    "RETRY_BACKOFF_MAX": 60.0,
    # Consecutive transient failures that pause one upstream (circuit breaker).
    "CIRCUIT_BREAKER_THRESHOLD": 5,
    # --- Leases and task slicing ---
    # A claimed request (or a batch being validated/finalized) belongs to one worker
    # for this long; leases are renewed while the work is alive, so this only bounds
    # how long a killed worker's work waits before another worker takes it over.
    "LEASE_SECONDS": 60.0,
    # A dispatcher hands over to a new dispatch task after this long, keeping every
    # django-q2 task well under Q_CLUSTER["timeout"].
    "RUN_SLICE_SECONDS": 300.0,
    # On SIGTERM (a deploy), in-flight upstream calls get this long to finish before
    # their requests are handed back; keep it under the orchestrator's stop timeout.
    "SHUTDOWN_GRACE_SECONDS": 5.0,
    # A cancelled (or expired) batch sends nothing new at once, but calls already in
    # flight may finish for this long and keep their results, as OpenAI keeps a batch
    # `cancelling` until in-flight requests complete (up to 10 minutes). Calls still
    # unanswered then end as `batch_cancelled` / `batch_expired`. The admin action
    # "Force-finish cancelling batches" ends the wait at once.
    "CANCEL_DRAIN_SECONDS": 600.0,
    # --- Batch limits (OpenAI's) ---
    # completion_window values a batch may ask for (batches/windows.py): OpenAI's only
    # value is "24h"; e.g. ["1h", "24h", "7d"] offers a fast and a background tier.
    "COMPLETION_WINDOWS": ("24h",),
    # None: a batch expires its completion_window after creation. A number of seconds
    # overrides every window (tests use it to exercise expiry).
    "COMPLETION_WINDOW_SECONDS": None,
    "MAX_REQUESTS_PER_BATCH": 50_000,
    "MAX_INPUT_FILE_BYTES": 200 * 1024 * 1024,
    # Inputs (strings or token arrays) across all requests of one /v1/embeddings batch.
    "MAX_EMBEDDING_INPUTS_PER_BATCH": 50_000,
    "MAX_VALIDATION_ERRORS": 100,
    # Batch endpoints beyond the five text ones, passed through to the upstream with only
    # the universal checks: any of "/v1/images/generations", "/v1/images/edits".
    "EXTRA_ENDPOINTS": (),
    # --- Output files ---
    # Output and error files expire this many seconds after the batch finishes unless
    # the batch says output_expires_after (as OpenAI). None keeps them.
    "DEFAULT_OUTPUT_FILE_TTL": 30 * 24 * 3600,
    # --- Metrics (batches/metrics.py) ---
    # Bearer token Prometheus sends to GET /metrics; None: the route answers 404.
    "METRICS_TOKEN": None,
    # --- Quotas per API key (batches/quotas.py) ---
    # Site-wide defaults for the keys whose own quota field is empty; None = unlimited.
    # Keys: MAX_ACTIVE_BATCHES, MAX_BATCH_CREATIONS_PER_HOUR, MAX_ENQUEUED_REQUESTS,
    # MAX_ENQUEUED_PROMPT_TOKENS.
    "DEFAULT_QUOTAS": {},
    # --- Webhooks (batches/webhooks.py) ---
    # Deliver to loopback, private, link-local and other non-public addresses. Off by
    # default so an API user cannot make the workers call internal services (SSRF).
    "WEBHOOKS_ALLOW_PRIVATE": False,
    # Seconds one delivery attempt may take (connect, send, and each read).
    "WEBHOOKS_TIMEOUT": 10.0,
    # Seconds to wait before each retry of a failed delivery; its length is the
    # number of retries. The default spreads 8 retries over about 22 hours. Due
    # retries are picked up by tasks.sweep, so they run up to a minute late.
    "WEBHOOKS_RETRY_SCHEDULE": (5, 30, 120, 600, 3600, 3 * 3600, 6 * 3600, 12 * 3600),
}

app_settings = AppSettings(DEFAULTS)

# Keys that no longer do anything, and what replaced them: accepted, never read
# (``check`` warns, openai_batches.W005).
RETIRED = {
    "MAX_CONCURRENT_BATCHES": "every running batch is served at once now: UPSTREAM_MAX_IN_FLIGHT bounds the requests in flight "
    "per upstream, shared fairly between owners (docs/scheduling.md)",
    "RUN_TASKS_PER_BATCH": "dispatchers serve every batch: DISPATCHERS sets how many workers dispatch, cluster-wide",
}
KNOWN_KEYS.update(dict.fromkeys(RETIRED))
