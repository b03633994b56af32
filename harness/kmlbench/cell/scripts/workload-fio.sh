## fio (FIO: its command) between two copies of /proc/stat's cpu line,
## taken in the same shell, so that the window is fio's run and nothing of
## the harness's SSH traffic before or after it; fio's exit status is kept.
## SYNC is "sync; " when the cell is profiled (guest.insn_profile): the
## instruction counter snapshots its counts as the guest enters sync(2),
## just outside the CPU window; empty otherwise.
@SYNC@head -1 /proc/stat > @CPU_SNAPSHOT@.0; @FIO@; rc=$?; head -1 /proc/stat > @CPU_SNAPSHOT@.1; @SYNC@exit $rc
