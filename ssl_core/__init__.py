"""vidssl core: pure PyTorch + PyAV semi-supervised video action recognition."""
