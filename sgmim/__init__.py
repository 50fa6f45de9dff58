"""SG-MIM: structured-knowledge guided masked image modeling (Son et al., AAAI 2025).

The ML library of the service: model, masking, data, training engine and metrics.
It imports nothing from `service` or `worker`.
"""

__version__ = "0.1.0"
