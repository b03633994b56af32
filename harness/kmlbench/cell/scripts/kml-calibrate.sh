## The calibration phase (model.calibrate_s), before any trainer or tracer
## starts: the model observes the cell's own load (its job, at the
## calibration's runtime) from zeroed statistics, then kmlctl calibrate sets
## decision_permille from its predictions there (docs/kml-iosched.md) and
## prints what it did, each line marked for the harness. A refusal (too few
## of a class, no skill: "calibrated 0") keeps the matrix's threshold and is
## not fatal; the statistics are zeroed again before the cell's own run. No
## sample is made meanwhile: nobody consumes the ring yet, and samples left
## in it would reach the cell's tracer (kmlbench trace) or fill the ring.
setnum @KML_PARAMS@/sample_unclaimed 0
echo reset > @KML_STATS@ 2>/dev/null || die "cannot reset @KML_STATS@"
setchoice "$q/kml_mode" observe
@CALIBRATE_FIO@ > /dev/null || die "the calibration's fio failed"
setchoice "$q/kml_mode" off
## kmlctl's own message, if it fails, goes to stderr before die's
out=$(@KMLCTL@ calibrate) || die "kmlctl calibrate failed"
echo "$out" | sed 's/^/kmlbench-calibrate: /'
setnum @KML_PARAMS@/sample_unclaimed @SAMPLE_UNCLAIMED@
