## The kernel trainer: its limits, then on.
[ -e @KML_PARAMS@/ktrainer ] || die "this kernel has no kernel trainer: it was built without CONFIG_KML_TRAIN or CONFIG_KML_FLOAT (kernel/configs/kml-lean.config)"
setnum @KML_PARAMS@/ktrainer_rate @RATE@
setnum @KML_PARAMS@/ktrainer_cpu_pct @CPU_PCT@
setnum @KML_PARAMS@/ktrainer_publish @PUBLISH_EVERY@
## a bool parameter: written 0 or 1, read back N or Y
echo @PUBLISH_Q16@ > @KML_PARAMS@/ktrainer_publish_q16 2>/dev/null &&
    [ "$(cat @KML_PARAMS@/ktrainer_publish_q16)" = @PUBLISH_Q16_YN@ ] ||
    die "cannot set @KML_PARAMS@/ktrainer_publish_q16 to @PUBLISH_Q16@"
echo 1 > @KML_PARAMS@/ktrainer 2>/dev/null || die "cannot start the kernel trainer"
