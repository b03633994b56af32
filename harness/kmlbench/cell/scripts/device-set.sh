## One scheduler tunable (ATTR iosched/<name>) or queue attribute (ATTR
## <name>) of device-setup.sh; SETTER is setattr, or setattr_ms for the
## millisecond tunables the kernel keeps in jiffies.
@SETTER@ "/sys/block/$dev/queue/@ATTR@" @VALUE@
