"""What a workflow brings: the workflow, its assets and file inputs, and their placing on a GPU."""
