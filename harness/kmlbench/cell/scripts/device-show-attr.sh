## A queue attribute device-setup.sh set, as the kernel reads it back.
echo "kmlbench-device: @ATTR@=$(cat "/sys/block/$dev/queue/@ATTR@")"
