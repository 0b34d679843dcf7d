"""What a person sees while a workflow runs: progress bar, event lines, a sweep's status line."""
