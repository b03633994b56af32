"""One QEMU guest: its command line, SSH access and console classification."""
