## The kernel trainer: its limits, then on.
setnum @KML_PARAMS@/ktrainer_rate @RATE@
setnum @KML_PARAMS@/ktrainer_cpu_pct @CPU_PCT@
setnum @KML_PARAMS@/ktrainer_publish @PUBLISH_EVERY@
echo 1 > @KML_PARAMS@/ktrainer 2>/dev/null || die "cannot start the kernel trainer"
