## The model the cell uploaded, into the kernel (MODEL_FILE: its matrix path).
@KMLCTL@ load @GUEST_MODEL@ || die "kmlctl load @MODEL_FILE@ failed"
