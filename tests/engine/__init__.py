"""Tests of maskrcnn.engine (a package, so that test file names may repeat in other test folders)."""
