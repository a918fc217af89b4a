"""Launching runs: one attempt as a process (process), many on local GPUs (local), a Slurm job
array (slurm), and whether the owner of a run is still alive (liveness)."""
