"""Video data: manifests, decoding, augmentation."""
