## The kernel trainer: its limits, then on.
[ -e @KML_PARAMS@/ktrainer ] || die "this kernel has no kernel trainer: it was built without CONFIG_KML_TRAIN or CONFIG_KML_FLOAT (kernel/configs/kml-lean.config)"
setnum @KML_PARAMS@/ktrainer_rate @RATE@
setnum @KML_PARAMS@/ktrainer_cpu_pct @CPU_PCT@
setnum @KML_PARAMS@/ktrainer_publish @PUBLISH_EVERY@
echo 1 > @KML_PARAMS@/ktrainer 2>/dev/null || die "cannot start the kernel trainer"
