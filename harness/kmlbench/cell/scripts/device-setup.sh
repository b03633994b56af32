## Set up the block device under test and its I/O scheduler, and check
## through sysfs that every value took effect. Prints informational
## "kmlbench-device:" lines, then the block device's path on its last line;
## exits non-zero with a message on stderr when something did not take.
## Rendered by kmlbench.cell.device.setup_script; @DEVICE@ is
## device-null_blk.sh or device-virtio.sh, which leave its name in $dev.
set -u
die() { echo "kmlbench-device: $*" >&2; exit 1; }
setattr() {
    echo "$2" > "$1" 2>/dev/null || die "cannot write $2 to $1"
    got=$(cat "$1") || die "cannot read $1"
    [ "$got" = "$2" ] || die "$1: wrote $2, reads back $got"
}
## mq-deadline keeps *_expire in jiffies: 250 ms reads back as 252 at
## HZ=250. Accept up to 10 ms (one jiffy at HZ>=100); the effective value
## is what the summary lines below report.
setattr_ms() {
    echo "$2" > "$1" 2>/dev/null || die "cannot write $2 to $1"
    got=$(cat "$1") || die "cannot read $1"
    d=$((got - $2)); [ $d -lt 0 ] && d=$((-d))
    [ $d -le 10 ] || die "$1: wrote $2, reads back $got"
}
@DEVICE@
i=0
while [ ! -b "/dev/$dev" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -b "/dev/$dev" ] || die "/dev/$dev is not a block device"
echo @SCHEDULER_ARG@ > "/sys/block/$dev/queue/scheduler" 2>/dev/null || die "scheduler @SCHEDULER@ not available: $(cat "/sys/block/$dev/queue/scheduler")"
grep -q '\[@SCHEDULER@\]' "/sys/block/$dev/queue/scheduler" || die "scheduler is $(cat "/sys/block/$dev/queue/scheduler") not @SCHEDULER@"
## One device-set.sh per tunable (queue/iosched/<name>) and queue attribute
## (queue/<name>), after the scheduler: switching scheduler resets them.
@SET@
echo "kmlbench-device: $dev scheduler=$(cat "/sys/block/$dev/queue/scheduler") size_bytes=$(($(cat /sys/block/$dev/size) * 512))"
@SHOW_QUEUE_ATTRS@
@SHOW_TUNABLES@
echo "/dev/$dev"
