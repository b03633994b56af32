## A shared boot, between two cells: KML back to how it booted. The last
## cell's kml-stop.sh has stopped its trainer and tracer; this switches the
## queue (IOSCHED) off, stops the kernel trainer, unloads any model, drains
## the samples no one consumed from the ring, restores every parameter
## kml-snapshot.sh saved (read-only ones must still read the same), zeroes
## the statistics and removes the last cell's files, so that a cell sees
## what a fresh boot would show it. Exits non-zero, naming what it could
## not undo, when that is not so. Rendered by kmlbench.cell.kml_reset.kml_reset_script.
@include kml-lib.sh
## no kml_mode is fine only on a kernel without KML in mq-deadline
if [ -e @IOSCHED@/kml_mode ]; then setchoice @IOSCHED@/kml_mode off;
elif [ -e @KML_STATS@ ]; then die "no @IOSCHED@/kml_mode"; fi
for p in @GUEST_TRAINER_PID@ @GUEST_TRACER_PID@; do
    pid=$(cat "$p" 2>/dev/null) || continue
    if alive "$pid"; then die "a kmlctl from the previous cell still runs (pid $pid)"; fi
done
rm -f @CELL_FILES@
[ -d @KML_PARAMS@ ] || exit 0
[ -r @GUEST_KML_DEFAULTS@ ] || die "no @GUEST_KML_DEFAULTS@: not snapshotted"
## a kernel that only predicts (kernel/configs/kml-lean.config) has no trainer
[ ! -e @KML_PARAMS@/ktrainer ] || echo 0 > @KML_PARAMS@/ktrainer 2>/dev/null || die "cannot stop ktrainer"
@KMLCTL@ unload > /dev/null 2>&1 || true  # no model loaded is fine
## Samples nobody consumed stay in the ring; a fresh boot's is empty. A
## trace stops at its deadline even with records left: drain until one
## pops nothing (the queue is off, nothing new arrives).
i=0
while :; do
    @KMLCTL@ trace - --seconds 0.2 > /dev/null 2>@KML_DRAIN_LOG@ || die "cannot drain the sample ring: $(cat @KML_DRAIN_LOG@)"
    grep -q '^records 0$' @KML_DRAIN_LOG@ && break
    i=$((i + 1))
    [ $i -lt 20 ] || die "the sample ring does not drain"
done
while IFS='=' read -r name v; do
    f=@KML_PARAMS@/$name
    echo "$v" > "$f" 2>/dev/null && continue
    got=$(cat "$f" 2>/dev/null)
    case "$got" in "$v"|*"[$v]"*) ;; *) die "cannot restore $name=$v (reads $got)";; esac
done < @GUEST_KML_DEFAULTS@
echo reset > @KML_STATS@ 2>/dev/null || die "cannot reset @KML_STATS@"
grep -q "^model_loaded 0$" @KML_STATS@ || die "a model is still loaded"
echo "kmlbench-kml: reset: kml_mode $(cat @IOSCHED@/kml_mode)"
exit 0
