## null_blk, created through configfs so that every parameter is explicit
## and per cell (the module's own default device is suppressed with
## null_blk.nr_devices=0 on the kernel command line). Order matters: size,
## block size and queues are fixed once power=1.
cfg=/sys/kernel/config/nullb
[ -d "$cfg" ] || die "no $cfg (configfs not mounted or null_blk missing)"
## Newer kernels name the disk after the configfs directory, older ones
## nullb<index>: with nr_devices=0 both give nullb0.
nb="$cfg/nullb0"
mkdir "$nb" || die "cannot create $nb"
setattr "$nb/irqmode" @IRQMODE@
setattr "$nb/completion_nsec" @COMPLETION_NSEC@
setattr "$nb/hw_queue_depth" @HW_QUEUE_DEPTH@
setattr "$nb/submit_queues" @SUBMIT_QUEUES@
## null_blk's configfs size is in MiB
setattr "$nb/size" @SIZE_MIB@
setattr "$nb/blocksize" @BLOCKSIZE@
## optional: bandwidth cap, backing memory, a service-time model's values
@ATTRS@
echo 1 > "$nb/power" || die "null_blk power on failed"
dev=nullb0; [ -e /sys/block/$dev ] || dev="nullb$(cat "$nb/index")"
