"""The paper-style report: its document types (``document``), the one table writer (``tables``), the figures
(``figures``, drawn in the report's style), one module per section (``sections``) and the build (``build``).
"""
