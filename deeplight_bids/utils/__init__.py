"""The bottom layer: helpers every other module may import, which import nothing of this package.

* :mod:`~deeplight_bids.utils.identity`: SHA-256 of files and of JSON objects, the identity of input files;
* :mod:`~deeplight_bids.utils.tsv`: reading the TSV tables this app writes (``n/a`` is missing).

The layer order of the whole package is in ``docs/development.rst`` (``tests/test_layers.py`` checks it).
"""
