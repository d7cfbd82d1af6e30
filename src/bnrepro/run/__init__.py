"""A run's life on disk: its lock (runlock.py), files (store.py),
checkpoints (checkpoint.py), loggers (loggers.py), the machine that trained it (machine.py),
and reading finished runs back (runs.py)."""
