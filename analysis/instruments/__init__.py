"""The instruments: measurements that take any ``nn.Module`` and return tidy DataFrames.

``counting`` (parameters and MACs with fvcore), ``factorization`` (the Inception-v3 factorisation studies),
``activations`` and ``dead_units`` (the per-channel monitor and dead/dormant units), ``landscape`` and
``line_search`` (loss-surface probes), ``covariate_shift`` (Santurkar et al.'s internal covariate shift),
``budgets`` (parameter and MAC limits), ``zoo`` (the registry against its references), and ``state``, the one
guard under which every instrument leaves a model as it found it.
"""
