## Stop one kmlctl (PIDFILE, named WHAT in messages): stop() of kml-lib.sh.
stop @PIDFILE@ "@WHAT@"
