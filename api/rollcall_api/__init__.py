"""rollcall_api: the web tier. It authenticates a school, validates a request, records a
RecognitionJob in the apiserver and returns; it never runs recognition, never creates Jobs or Pods,
and never imports onnxruntime, numpy, OpenCV or kopf.

Endpoints (OpenAPI at ``/openapi.json``, docs at ``/docs`` and ``/redoc`` when ``DOCS_ENABLED``;
all ``/v1`` routes need ``Authorization: Bearer <school key>``):

- ``POST /v1/recognition-jobs`` -> 202, the job view, ``Location``. The body is the RecognitionJob
  spec (camelCase, the CRD's own model) plus an optional ``namespace`` (keys with several).
  ``mode: enroll`` makes an enroll-mode job. ``Idempotency-Key`` (1-255 visible ASCII): a retry
  returns the first job (``Idempotent-Replayed: true``); the same key with another body is 409.
- ``POST /v1/enrollments`` -> 202: the same, always ``mode: enroll``.
- ``GET /v1/recognition-jobs`` ``?classCode= &mode= &phase= &namespace= &limit= &continue=``:
  pages from the apiserver, oldest first; ``phase`` filters each page, so a page may be short.
- ``GET /v1/recognition-jobs/{id}``: phase, progress (the job's live Redis counter while it
  runs), summary. Another school's job is 404, exactly like a missing one.
- ``DELETE /v1/recognition-jobs/{id}`` -> 202: cancels (deletes the RJ; its Job and pods follow).
- ``GET /v1/recognition-jobs/{id}/results``: summary, attendance and per-photo detail from
  Redis; 409 ``not_finished`` until the job has ended.
- ``GET /v1/recognition-jobs/{id}/events``: server-sent events ``snapshot``, ``phase``,
  ``progress``, then ``end`` (or ``deleted``); the stream closes when the job ends. All streams of
  a namespace share one apiserver watch (:mod:`rollcall_api.watches`).
- ``DELETE /v1/classes/{class}/students/{id}``, ``DELETE /v1/classes/{class}/gallery``: erase
  templates (and results naming the student) in the caller's school; an Event and an audit line
  record each (:mod:`rollcall_api.erasure`, :mod:`rollcall_api.routes.classes`).
- ``/healthz`` (touches nothing shared), ``/readyz`` (apiserver, Redis, keys loaded); Prometheus
  ``/metrics`` only on ``METRICS_PORT``.

Per-school limits (:mod:`rollcall_api.limits`, per replica): submissions per minute per school
(429 + ``Retry-After``), open event streams per key (429). A key file that fails to load refuses
every key (503) until a valid one is read.

Errors: always ``{"error": {"code", "message", "requestId", "details"}}`` with 400 (bad JSON,
bad header), 401, 404, 409, 413 (body over ``max_body_bytes``, refused before parsing), 422
(validation, by us or the apiserver), 429 (a per-school limit, with Retry-After), 503 (apiserver,
Redis or the key file unavailable, with Retry-After).

Settings (``ROLLCALL_API_*``): ``KEYS_FILE`` (default /etc/rollcall/api-keys/keys.yaml),
``KEYS_RELOAD_SECONDS`` (10), ``KUBECONFIG`` (empty: in-cluster ServiceAccount), ``KUBE_CONTEXT``,
``REDIS_URL``, ``MAX_BODY_BYTES`` (262144), ``IDEMPOTENCY_TTL_SECONDS`` (86400), ``PUBLIC_URL``,
``LIST_LIMIT_DEFAULT`` (50), ``EVENTS_POLL_SECONDS`` (1), ``EVENTS_KEEPALIVE_SECONDS`` (15),
``LOOP_LAG_INTERVAL_SECONDS`` (0.1), ``KUBE_TIMEOUT_SECONDS`` (10), ``SUBMISSIONS_PER_MINUTE``
(60), ``SUBMISSIONS_BURST`` (20), ``STREAMS_PER_KEY`` (10), ``WATCH_LINGER_SECONDS`` (5),
``DOCS_ENABLED`` (false), ``METRICS_PORT`` (0: none), ``HOST``, ``PORT`` (8080), ``LOG_LEVEL``,
``LOG_JSON``.

Key file: see :mod:`rollcall_api.auth` (``rollcall keygen`` issues a key and its entry).
Apiserver permissions: create, get, list, watch, delete on ``recognitionjobs.rollcall.io``; create
on ``events`` (erase records).
"""
