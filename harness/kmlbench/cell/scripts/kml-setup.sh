## Put KML in the state a model cell asks for, before fio, in the order that
## leaves no sample behind: load the model (kml-load.sh, when one was
## uploaded), set the global ring and filter parameters, start the trainer
## (kml-ktrainer.sh, or kmlctl train through kml-background.sh) or the
## tracer, zero the statistics, and last switch the queue's kml_mode on;
## a model calibrated on the cell's load (kml-calibrate.sh) is calibrated
## before any consumer takes the ring.
## Exits non-zero with a "kmlbench-kml:" message when the kernel lacks KML.
## Rendered by kmlbench.cell.model.kml_setup_script.
@include kml-lib.sh
[ -d @KML_PARAMS@ ] || die "no @KML_PARAMS@: this kernel has no KML (CONFIG_KML)"
[ -r @KML_STATS@ ] || die "no @KML_STATS@: this kernel has no KML in mq-deadline (CONFIG_KML_IOSCHED) or debugfs is not mounted"
q="@IOSCHED@"
[ -e "$q/kml_mode" ] || die "no $q/kml_mode: mq-deadline without the KML hooks (or not the scheduler)"
[ -x @KMLCTL@ ] || die "no @KMLCTL@ in the guest image"
@LOAD@
setchoice @KML_PARAMS@/ring_mode @RING_MODE@
setchoice @KML_PARAMS@/sample_filter @SAMPLE_FILTER@
setnum @KML_PARAMS@/decision_permille @DECISION_PERMILLE@
## a kernel without policy cost (kernel/configs/kml-lean.config) has no
## cost_* parameters, and its policy is always expire
if [ -e @KML_PARAMS@/cost_age_shift ]; then
    setchoice @KML_PARAMS@/policy @POLICY@
    setnum @KML_PARAMS@/cost_age_shift @COST_AGE_SHIFT@
    setnum @KML_PARAMS@/cost_rev_ns @COST_REV_NS@
    setnum @KML_PARAMS@/cost_track_sectors @COST_TRACK_SECTORS@
    setnum @KML_PARAMS@/cost_cyl_sectors @COST_CYL_SECTORS@
    setnum @KML_PARAMS@/cost_seek_a_ns @COST_SEEK_A_NS@
    setnum @KML_PARAMS@/cost_seek_b_ns @COST_SEEK_B_NS@
    setnum @KML_PARAMS@/cost_seek_boundary @COST_SEEK_BOUNDARY@
    setnum @KML_PARAMS@/cost_seek_c_ns @COST_SEEK_C_NS@
    setnum @KML_PARAMS@/cost_seek_e_ns @COST_SEEK_E_NS@
    setnum @KML_PARAMS@/cost_channels @COST_CHANNELS@
    setnum @KML_PARAMS@/cost_stripe_sectors @COST_STRIPE_SECTORS@
    setnum @KML_PARAMS@/cost_credit_permille @COST_CREDIT_PERMILLE@
    setnum @KML_PARAMS@/cost_late_permille @COST_LATE_PERMILLE@
    setnum @KML_PARAMS@/cost_horizon_ms @COST_HORIZON_MS@
    setnum @KML_PARAMS@/cost_svc_permille @COST_SVC_PERMILLE@
    setnum @KML_PARAMS@/cost_miss_budget_permille @COST_MISS_BUDGET_PERMILLE@
    setnum @KML_PARAMS@/cost_window_permille @COST_WINDOW_PERMILLE@
    setnum @KML_PARAMS@/cost_wait_cap_permille @COST_WAIT_CAP_PERMILLE@
    setnum @KML_PARAMS@/cost_wait_ramp_permille @COST_WAIT_RAMP_PERMILLE@
    setnum @KML_PARAMS@/cost_wait_bound_permille @COST_WAIT_BOUND_PERMILLE@
elif [ @POLICY@ = expire ]; then
    setchoice @KML_PARAMS@/policy expire
else
    die "this kernel has no policy cost: it was built without CONFIG_KML_IOSCHED_COST (kernel/configs/kml-lean.config)"
fi
setnum @KML_PARAMS@/observe_every @OBSERVE_EVERY@
setnum @KML_PARAMS@/lazy @LAZY@
setnum @KML_PARAMS@/sample_unclaimed @SAMPLE_UNCLAIMED@
setnum @KML_PARAMS@/skill_min_permille @SKILL_MIN_PERMILLE@
@CALIBRATE@
@TRAINER@
@TRACER@
echo reset > @KML_STATS@ 2>/dev/null || die "cannot reset @KML_STATS@"
setchoice "$q/kml_mode" @MODE@
echo "kmlbench-kml: kml_mode=$(cat "$q/kml_mode") trainer=@TRAINER_NAME@"
for f in @KML_PARAMS@/*; do echo "kmlbench-kml: ${f##*/}=$(cat "$f" 2>/dev/null)"; done
