"""Training: a run's settings (``config``), the Inception loss (``loss``), the papers' optimisers and schedules
(``optim``), the seeded data order (``sampling``), what a run writes and reads back (``checkpoint``), the
``trainer`` itself, which takes a built model, and resumable sweeps of runs (``sweep``).
"""
