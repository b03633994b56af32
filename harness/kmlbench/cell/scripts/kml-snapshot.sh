## A shared boot, right after the first cell set up the device: save KML's
## parameters as booted, for kml-reset.sh. A choice parameter that reads
## back as a list ("[block] drop") is saved as its choice. Nothing to do on
## a kernel without KML.
@include kml-lib.sh
[ -d @KML_PARAMS@ ] || exit 0
: > @GUEST_KML_DEFAULTS@ || die 'cannot write @GUEST_KML_DEFAULTS@'
for f in @KML_PARAMS@/*; do
    v=$(cat "$f") || die "cannot read $f"
    case "$v" in *"["*) v=${v#*[}; v=${v%%]*};; esac
    echo "${f##*/}=$v" >> @GUEST_KML_DEFAULTS@
done
exit 0
