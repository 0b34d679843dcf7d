"""Workflow files that wrap a training config: the sweep file and the Noisy Student file."""
