## After fio: stop the trainer and the tracer, so that the statistics the
## harness reads next are final (ring_consumed included). STOP is
## kml-stop-process.sh for kmlctl (SIGTERM makes it flush its curve, model
## and trace), kml-stop-ktrainer.sh for the kernel trainer, or nothing.
## Rendered by kmlbench.cell.model.kml_stop_script.
@include kml-lib.sh
@STOP_TRAINER@
@STOP_TRACER@
exit 0
