## The scheduler tunables device-setup.sh set, as the kernel reads them back.
for t in @TUNABLES@; do echo "kmlbench-device: iosched/$t=$(cat "/sys/block/$dev/queue/iosched/$t")"; done
