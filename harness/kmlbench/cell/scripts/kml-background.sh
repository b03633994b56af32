## Start COMMAND (kmlctl train or kmlctl trace) detached: its own session,
## its output in LOG, its pid in PIDFILE; and check that it lives.
setsid @COMMAND@ </dev/null >@LOG@ 2>&1 &
echo $! > @PIDFILE@
sleep 0.3
alive "$(cat @PIDFILE@)" || { cat @LOG@ >&2; die "@WHAT@ exited at once"; }
