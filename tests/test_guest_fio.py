"""The guest's fio stops when a signal interrupts its last reap, in a real guest.

fio 3.33 (Debian 12's, which the guest's static fio is built from) waits
for every request it has in flight before a job ends, with one
``io_getevents()`` asking for all of them. A signal that interrupts the
call after some have come back makes it return fewer, and fio asked again
for the whole number: more than will ever complete, so the job slept in
``read_events`` for good with nothing at the device.
``guest-image/fio-patches/0001`` asks only for the rest. Before it, one
run in about 20 of ``test_kml_faults.py``'s flipping test hung so after
its SIGTERM (fio's main process passes a SIGTERM on to its job, so the
job can get two).

Here the window is made wide and certain: one slot at the device, each
request 50 ms, 16 in flight (mq-deadline holds the rest, so that fio
waits in ``io_getevents()``, not for a tag in ``io_submit()``), on the
virtual clock (one vCPU: the guest's ``sleep`` and the device's timer
count the same instructions, whatever the host's load), so the last reap
takes about 750 ms and a second SIGTERM 300 ms into it lands after about
6 of its events. The unpatched fio (Debian's source built the same way,
uploaded by hand) hung here 3 times of 3, its job in ``read_events``
with nothing at the device, as in the flake; the patched one exits.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_guest import VIRTUAL, device_guest
from kmlbench.data.fio import parse_fio_output
from kmlbench.guest.qemu import Guest
from test_kml_faults import HANG_REPORT, sh

pytestmark = pytest.mark.kernel

DEVICE = {
    "type": "null_blk",
    "irqmode": "timer",
    "completion_nsec": 50_000_000,
    "hw_queue_depth": 1,
    "submit_queues": 1,
    "size_mib": 64,
}
# the scheduler holds what the one slot cannot take, so that io_submit()
# never waits for a tag and fio waits in io_getevents()
SCHEDULER = {"name": "mq-deadline", "nr_requests": 64}
FIO = (
    "fio --name=reap --filename=/dev/nullb0 --direct=1 --ioengine=libaio --iodepth=16"
    " --rw=randread --bs=4k --time_based --runtime=60s --output-format=json"
)
# every fio process, the main one and its job's
FIO_PIDS = "for p in /proc/[0-9]*; do grep -qs ' (fio) ' $p/stat && echo ${p#/proc/}; done"


@pytest.fixture(scope="module")
def guest(
    guest_kernel: Path, base_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guest]:
    """One slow slot under mq-deadline: requests complete 50 ms apart."""
    work = tmp_path_factory.mktemp("guest-fio")
    with device_guest(
        guest_kernel, work, base_image, DEVICE, SCHEDULER, memory_mib=512, **VIRTUAL
    ) as (g, dev):
        assert dev == "/dev/nullb0"
        yield g


def test_a_second_sigterm_in_the_last_reap_does_not_hang_fio(guest: Guest) -> None:
    inner = f"{FIO} >/tmp/reap.json 2>/tmp/reap.err; echo $? >/tmp/reap.rc"
    sh(
        guest,
        f"rm -f /tmp/reap.*; setsid sh -c {shlex.quote(inner)} </dev/null >/dev/null 2>&1 &"
        # 16 in flight after a second (one each 50 ms)
        ' sleep 1; [ -n "$(' + FIO_PIDS + ')" ]; '
        # the first ends the job's loop (its main process signals it too),
        # the second comes while it waits for its last 15 requests
        f"kill $({FIO_PIDS}); sleep 0.3; kill $({FIO_PIDS}) 2>/dev/null; "
        # 10 s: ten times what the rest of the reap takes
        "i=0; while [ ! -s /tmp/reap.rc ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done",
        timeout=120,
    )
    done = guest.run("cat /tmp/reap.rc", timeout=30)
    if done.exit_status != 0:
        report = guest.run(HANG_REPORT, timeout=60)
        pytest.fail(f"fio still running 10 s after its second SIGTERM\n{report.stdout}")
    # fio 3.33 exits 128 after "terminating on signal", and says so on stdout
    out = sh(guest, "cat /tmp/reap.json").stdout
    assert done.stdout.strip() == "128", sh(guest, "cat /tmp/reap.err").stdout + out
    assert "terminating on signal 15" in out
    job = parse_fio_output(out)["jobs"][0]
    assert job["error"] == 0
    # it stopped on the signal, long before its 60 s, after real I/O
    assert 0 < job["read"]["total_ios"] < 200, job["read"]
