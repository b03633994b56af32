"""A cell's status, named once: what a guest failure raises and a record stores.

A leaf module (it imports nothing of kmlbench) so that ``guest/`` (which
raises a status), ``cell/`` (which decides one) and ``run/`` (which records
and retries by one) can all import it without a cycle.
"""

from __future__ import annotations

OK = "ok"
FAILED = "failed"  # the cell's own work failed: fio, a set-up step, a guest command
TIMEOUT = "timeout"  # a command, or the console, went quiet for too long
PANIC = "panic"  # the kernel under test panicked, oopsed, hit a BUG or a sanitizer
BOOT_FAILURE = "boot-failure"  # the guest never became ready
INFRA_ERROR = "infra-error"  # the harness or host failed, not the kernel

STATUSES = (OK, FAILED, TIMEOUT, PANIC, BOOT_FAILURE, INFRA_ERROR)
