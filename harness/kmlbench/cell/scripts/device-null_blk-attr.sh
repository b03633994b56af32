## One optional null_blk configfs attribute of device-null_blk.sh (mbps,
## memory_backed, a service-time model's svc_* values), set before power-on.
setattr "$nb/@ATTR@" @VALUE@
