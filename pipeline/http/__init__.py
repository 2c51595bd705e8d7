"""The HTTP service (``sonic-pipeline serve``, ``python -m pipeline.http``): upload a job,
follow it, fetch its video, and a small web page for people.

    POST /v1/tasks                 multipart image + audio -> object store -> Kafka; 202
    GET  /v1/tasks                 the tenant's jobs (status, tenant, since; paged)
    GET  /v1/tasks/{id}            a job's latest status
    GET  /v1/tasks/{id}/events     Server-Sent Events until final (Last-Event-ID resumes)
    GET  /v1/tasks/{id}/video      the video (redirect to a presigned URL, or the bytes)
    POST /v1/session               a session cookie for the page (GET requests only)
    GET  /healthz, /metrics        Postgres/Redis/Kafka checks; Prometheus
    GET  /                         the web page (static files, no build step)

An entry point: it may import any layer. Modules: ``app`` (assembly), ``api`` (routes),
``auth`` (tokens and cookies), ``uploads`` (checks and storage of uploads), ``store``
(every read of job state), ``sse`` (the event stream), ``kafka`` (producing and its
health), ``health``, ``metrics``, ``errors``, ``serve`` (uvicorn).
"""
