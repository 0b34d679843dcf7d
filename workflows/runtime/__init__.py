"""What runs on Ray: the session, the Ray Data streams, the Train worker adapters and the fit of a run."""
