"""Benchmarks of keras-shufflenet beside the Keras MobileNets and the paper.

``python -m benchmarks.run --output=docs/benchmarks.md`` (``make bench``)
runs every section and writes the report; ``python -m benchmarks.zoo`` writes
the model zoo table. These are scripts, not tests: the committed results are
what they printed on the machine the report describes.
"""
