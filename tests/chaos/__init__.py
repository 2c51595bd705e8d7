"""Fault scenarios on a private stack (issue 10): the harness, the audit, the runner
(``python -m tests.chaos``) and the short CI versions of each scenario."""
