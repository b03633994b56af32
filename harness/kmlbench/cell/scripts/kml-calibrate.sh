## The calibration phase (model.calibrate_s), before any trainer or tracer
## starts: the model observes the cell's own load (its job, at the
## calibration's runtime) from zeroed statistics, then "calibrate" sets
## decision_permille from its predictions there (docs/kml-iosched.md). A
## refusal (too few of a class, no skill) keeps the matrix's threshold and
## is reported, not fatal; the statistics are zeroed again before the cell's
## own run.
echo reset > @KML_STATS@ 2>/dev/null || die "cannot reset @KML_STATS@"
setchoice "$q/kml_mode" observe
@CALIBRATE_FIO@ > /dev/null || die "the calibration's fio failed"
setchoice "$q/kml_mode" off
if why=$( { echo calibrate > @KML_STATS@; } 2>&1 ); then
    echo "kmlbench-kml: calibrated decision_permille=$(cat @KML_PARAMS@/decision_permille)"
else
    echo "kmlbench-kml: calibration refused: ${why##*: }"
fi
