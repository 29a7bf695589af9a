"""Packaging lives in setup.cfg; this file keeps `pip install -e .` working on older pips."""
from setuptools import setup

setup()
