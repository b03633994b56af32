## The kernel trainer off, and its counters where a user trainer's summary goes
## (none on a kernel without one: its cell failed at set-up, saying why).
if [ -e @KML_PARAMS@/ktrainer ]; then
    echo 0 > @KML_PARAMS@/ktrainer 2>/dev/null || die "cannot stop ktrainer"
    for f in @KML_PARAMS@/ktrainer*; do echo "${f##*/} $(cat "$f")"; done > @GUEST_TRAINER_LOG@
fi
