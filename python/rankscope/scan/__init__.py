"""The model-zoo scanner (work in progress): sources → layer policy → batched spectra → report.

Imported only by ``rankscope.scan(...)`` and the CLI; the array API never imports it.
"""
