## The virtio-blk disk QEMU attached (kmlbench.cell.device.qemu_disk_args).
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/vda ] || die "no /dev/vda (virtio-blk disk missing)"
dev=vda
