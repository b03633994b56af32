"""The guest's fio stops when a signal interrupts its last reap, in a real guest.

fio 3.33 (Debian 12's, which the guest's static fio is built from) waits
for every request it has in flight before a job ends, with one
``io_getevents()`` asking for all of them. A signal that interrupts the
call after some have come back makes it return fewer, and fio asked again
for the whole number: more than will ever complete, so the job slept in
``read_events`` for good with nothing at the device.
``guest-image/fio-patches/0001`` asks only for the rest. Before it, 1 run
in 25 of ``test_kml_faults.py``'s flipping test hung so: its ``fio_stop``
signals fio's main process, whose handler ends the job's loop, and the
job, whose own SIGTERM can then land in that last reap.

Here the window is made wide and certain: one slot at the device, each
request 50 ms, 16 in flight (mq-deadline holds the rest, so that fio
waits in ``io_getevents()``, not for a tag in ``io_submit()``), on the
virtual clock (one vCPU: the guest's ``sleep`` and the device's timer
count the same instructions, whatever the host's load). A SIGTERM ends
the job's loop; its last reap then waits about 750 ms for 15 requests,
and a second SIGTERM 300 ms later lands after 5 or 6 of them. Debian's
fio, built the same way without our patches, is run too, and must hang
just so: that is what shows the signal landed in the window.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_guest import VIRTUAL, device_guest
from kmlbench.build.fio_build import build_static_fio
from kmlbench.data.fio import parse_fio_output
from kmlbench.guest.qemu import Guest
from test_kml_faults import FIO_PIDS, HANG_REPORT, sh

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
# Debian's fio as it is, beside the image's own /usr/bin/fio (named fio too:
# the scripts find fio's processes by name)
DEBIAN_FIO = "/tmp/debian/fio"
ARGS = (
    "--name=reap --filename=/dev/nullb0 --direct=1 --ioengine=libaio --iodepth=16"
    " --rw=randread --bs=4k --time_based --runtime=60s --output-format=json"
)


@pytest.fixture(scope="module")
def guest(
    guest_kernel: Path, base_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guest]:
    """One slow slot under mq-deadline: requests complete 50 ms apart."""
    work = tmp_path_factory.mktemp("guest-fio")
    debian = build_static_fio(patches=[])
    with device_guest(
        guest_kernel, work, base_image, DEVICE, SCHEDULER, memory_mib=512, **VIRTUAL
    ) as (g, dev):
        assert dev == "/dev/nullb0"
        sh(g, f"mkdir -p {Path(DEBIAN_FIO).parent}")
        g.put(DEBIAN_FIO, debian.path.read_bytes(), mode=0o755)
        yield g


def two_sigterms(guest: Guest, fio: str) -> bool:
    """Run ``fio``, SIGTERM every fio process twice, 300 ms apart, once 16
    requests are in flight; whether it has exited 10 s after the second
    (twenty times what the rest of its last reap takes)."""
    inner = f"{fio} {ARGS} >/tmp/reap.json 2>/tmp/reap.err; echo $? >/tmp/reap.rc"
    sh(
        guest,
        f"rm -f /tmp/reap.*; setsid sh -c {shlex.quote(inner)} </dev/null >/dev/null 2>&1 &"
        # 16 in flight after a second (one each 50 ms)
        f' sleep 1; [ -n "$({FIO_PIDS})" ] || exit 1; '
        f"kill $({FIO_PIDS}); sleep 0.3; kill $({FIO_PIDS}) 2>/dev/null; "
        "i=0; while [ ! -s /tmp/reap.rc ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done",
        timeout=120,
    )
    return guest.run("[ -s /tmp/reap.rc ]", timeout=30).exit_status == 0


def test_debians_fio_hangs_in_its_last_reap(guest: Guest) -> None:
    try:
        assert not two_sigterms(guest, DEBIAN_FIO), "Debian's fio exited: the window was missed"
        # its job waits for events with nothing left at the device
        waits = sh(guest, f"for p in $({FIO_PIDS}); do cat /proc/$p/wchan; echo; done").stdout
        assert "read_events" in waits.split(), waits
        assert sh(guest, "cat /sys/block/nullb0/inflight").stdout.split() == ["0", "0"]
    finally:
        sh(
            guest,
            f"kill -9 $({FIO_PIDS}) 2>/dev/null; i=0;"
            f' while [ -n "$({FIO_PIDS})" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done;'
            f' [ -z "$({FIO_PIDS})" ]',
        )


def test_the_patched_fio_exits(guest: Guest) -> None:
    if not two_sigterms(guest, "fio"):
        report = guest.run(HANG_REPORT, timeout=60)
        pytest.fail(f"fio still running 10 s after its second SIGTERM\n{report.stdout}")
    # fio 3.33 exits 128 after "terminating on signal", and says so on stdout
    out = sh(guest, "cat /tmp/reap.json").stdout
    rc = sh(guest, "cat /tmp/reap.rc").stdout.strip()
    assert rc == "128", sh(guest, "cat /tmp/reap.err").stdout + out
    assert "terminating on signal 15" in out
    job = parse_fio_output(out)["jobs"][0]
    assert job["error"] == 0
    # it stopped on the signal, long before its 60 s, after real I/O
    assert 0 < job["read"]["total_ios"] < 200, job["read"]
