"""The report's sections, one module each: ``zoo`` (the zoo and where its cost sits), ``factorization``, and one
per experiment of :mod:`analysis.experiments`, each a builder ``(mode, seed, results_root) -> Section``.
"""
