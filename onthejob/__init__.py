"""onthejob: agents that learn on the job."""

__version__ = "0.1.0"
