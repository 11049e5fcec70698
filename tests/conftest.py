"""Suite-wide pytest configuration.

Its presence also makes pytest put ``tests/`` itself on ``sys.path`` (rootdir-relative "prepend"
import mode), so that test files in sub-folders can import the shared helpers that live here, such as
``float32`` (magnitude-scaled float32 tolerances) and ``inference_support``.
"""
