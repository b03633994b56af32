## Start COMMAND (kmlctl train or kmlctl trace) detached: its own session,
## its output in LOG, its pid in PIDFILE; and check that it lives.
## Then wait until it holds the ring (kmlctl maps /dev/kml as it starts):
## with sample_unclaimed 0 a sample made before then would not be made.
setsid @COMMAND@ </dev/null >@LOG@ 2>&1 &
echo $! > @PIDFILE@
pid=$(cat @PIDFILE@)
i=0
while alive "$pid" && ! grep -q /dev/kml "/proc/$pid/maps" 2>/dev/null && [ $i -lt 100 ]; do
    sleep 0.1; i=$((i + 1))
done
alive "$pid" || { cat @LOG@ >&2; die "@WHAT@ exited at once"; }
grep -q /dev/kml "/proc/$pid/maps" || die "@WHAT@ did not map /dev/kml within 10 s"
