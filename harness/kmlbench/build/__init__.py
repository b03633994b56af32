"""What the guest needs, built from source and cached: kernel, guest image, fio."""
