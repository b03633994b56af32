## fio (FIO: its command) between two copies of /proc/stat's cpu line,
## taken in the same shell, so that the window is fio's run and nothing of
## the harness's SSH traffic before or after it; fio's exit status is kept.
head -1 /proc/stat > @CPU_SNAPSHOT@.0; @FIO@; rc=$?; head -1 /proc/stat > @CPU_SNAPSHOT@.1; exit $rc
