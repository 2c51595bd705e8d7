"""The CLI's verbs behind ``sonic-pipeline``: their queries and their rendering.

One module per concern, each used only by the entry modules (:mod:`pipeline.cli`,
:mod:`pipeline.commands`):

    output    rich consoles (colours only on a terminal), tables, JSON, durations
    services  a service that cannot be reached -> one line naming it and the fix (exit 4)
    kafka     producers and consumers with the settings' security, lag of a group
    jobs      read-side queries on tasks / task_events (status, list, events)
    status    ``status ID``: what a job is doing, or waiting for, and its timings
    submit    ``submit``: upload local inputs, produce the job message
    follow    ``submit --wait``: a live progress bar until a final state
    retry     ``retry ID``: a finished job again, as a new task linked to the old one
    dlq       ``dlq list`` / ``dlq replay``
    topics    ``topics create``
    fleet     ``top``: backlog, in flight per pool, gpu busy, lag, oldest job
    clickbase the click classes: one-line errors, exit codes, ``usage:``
    verbs     the job verbs' click commands; verbs_fleet: ``dlq`` and ``top``
"""
