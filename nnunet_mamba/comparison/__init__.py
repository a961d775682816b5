"""``nnunet-mamba compare``: trainers side by side on one dataset's cross-validation, as nnU-Net Revisited did.

Sits above ``benchmarks`` (it measures trainers with the same counters) and below ``commands``.
"""
