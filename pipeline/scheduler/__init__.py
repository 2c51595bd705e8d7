"""The scheduler: what runs next, decided in PostgreSQL, one statement per decision.

The bridge admits jobs as ``received`` (runnable) or ``waiting`` (:mod:`.settle`: held for
an earlier job of the same ordering key or for ``depends_on``); database triggers
(migration 0003) keep per-tenant counts and release or fail waiting jobs when what they
wait for ends. The dispatcher (:mod:`.dispatcher`, one active per topic) picks runnable
jobs (:mod:`.pick`: the tenant with the least work in flight per weight, then inside it
priority with aging) while the window ahead of the gpu has room, and publishes their
chains; :mod:`.upkeep` expires jobs past their deadline, sends the callbacks of jobs the
scheduler itself finished, and re-checks waiting jobs; :mod:`.cancel` cancels.
"""
