## The helpers every KML script (kml-*.sh) starts with.
set -u
die() { echo "kmlbench-kml: $*" >&2; exit 1; }
## A choice parameter may read back as the value or as a list with the
## value in brackets (as queue/scheduler does): accept both.
setchoice() {
    echo "$2" > "$1" 2>/dev/null || die "cannot write $2 to $1"
    got=$(cat "$1") || die "cannot read $1"
    case "$got" in "$2"|*"[$2]"*) ;; *) die "$1: wrote $2, reads back $got";; esac
}
setnum() {
    echo "$2" > "$1" 2>/dev/null || die "cannot write $2 to $1"
    got=$(cat "$1") || die "cannot read $1"
    [ "$got" = "$2" ] || die "$1: wrote $2, reads back $got"
}
## kill -0 succeeds on a zombie; a process that exited is one until PID 1
## reaps it, so look at its state.
alive() {
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
    ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null
}
## stop PIDFILE WHAT: SIGTERM (kmlctl then flushes its files and exits),
## SIGKILL after 15 s.
stop() {
    pid=$(cat "$1" 2>/dev/null) || return 0
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null
    i=0
    while alive "$pid" && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done
    if alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null
        echo "kmlbench-kml: $2 did not stop within 15 s of SIGTERM: killed" >&2
    fi
}
